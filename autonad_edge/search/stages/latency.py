"""Stage 2: complete the block latency table, fit the estimator's correction from end-to-end
measurements, build the latency-aware prior (+ heatmap)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from autonad_edge.io import json_safe
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
        fingerprint_summary=est.key.summary(),
    )
