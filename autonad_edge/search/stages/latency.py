"""Stage 2: complete the block latency table, fit the estimator's correction from end-to-end
measurements, build the latency-aware prior (+ heatmap)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from autonad_edge.io import json_safe
from autonad_edge.latency.fingerprint import Fingerprint
from autonad_edge.latency.prior import build_prior, plot_prior, save_prior
from autonad_edge.latency.profiler import profile
from autonad_edge.search.stages.context import RunContext
from autonad_edge.search.stages.store import StageResult


@dataclass(frozen=True)
class LatencyResult(StageResult):
    profile: str  # what block timing did (latency.profiler.ProfileReport.summary)
    correction: dict[str, Any]  # the end-to-end correction (latency.estimator)
    prior: str
    heatmap: str
    fingerprint: str
    fingerprint_summary: str
    # The whole fingerprint (`Fingerprint.to_json`), so a resumed run can say what changed;
    # None in runs from before it was kept.
    fingerprint_json: str | None = None


def device_change(result: LatencyResult, ctx: RunContext) -> str | None:
    """Why the target no longer is the device this run's latencies were measured on (None when
    it is): a resumed run would mix two devices' latencies in one search (its cached latencies
    and prior from the first, new candidates' from the second). A reboot that resets a CPU
    governor or a Jetson power mode, another thread count or another agent behind the same
    target name all change the fingerprint."""
    now = ctx.estimator.key.fingerprint
    if now.hash == result.fingerprint:
        return None
    if result.fingerprint_json:
        changed = Fingerprint.from_json(result.fingerprint_json).differences(now)
        what = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items())
    else:
        what = f"{result.fingerprint_summary} -> {ctx.estimator.key.summary()}"
    return (f"target {ctx.cfg.target!r} is not the device this run measured its latencies on ({what}): "
            "restore it, or start the run again in another --out")


def latency_stage(ctx: RunContext) -> LatencyResult:
    cfg, out_dir = ctx.cfg, ctx.out / "latency"
    report = profile(ctx.space, ctx.pool, ctx.table, ctx.image_hw, ctx.data.num_classes,
                     progress=not cfg.quiet, policy=ctx.policy)
    est = ctx.estimator
    rng = random.Random(cfg.seed + 1)
    calib = [ctx.space.sample(rng) for _ in range(cfg.calibration_archs)]
    correction = est.calibrate(calib)
    kwargs = {} if cfg.prior_temperature is None else {"temperature": cfg.prior_temperature}
    prior, meta = build_prior(est, method=cfg.prior_method, target=cfg.target, seed=cfg.seed, **kwargs)
    save_prior(out_dir / "prior.json", prior, meta)
    plot_prior(prior, ctx.space, out_dir / "prior.png", subtitle=f"target {cfg.target}: {est.key.summary()}")
    return LatencyResult(
        profile=report.summary(), correction=json_safe(correction.to_dict()), prior=str(out_dir / "prior.json"),
        heatmap=str(out_dir / "prior.png"), fingerprint=est.key.fingerprint.hash,
        fingerprint_summary=est.key.summary(), fingerprint_json=est.key.fingerprint.to_json(),
    )
