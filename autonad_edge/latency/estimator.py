"""Subnet latency: the sum of its units' measured medians, plus a learned per-target correction.

A plain sum of block latencies misses what happens between blocks: the runtime fuses across
them, every separately measured unit pays the per-inference overhead once (the whole network
pays it once in total), and caches behave differently in a longer graph. The correction is a
small linear model fitted to end-to-end measurements of whole exported subnets on the same
target::

    latency = sum_g w_g * S_g + w_n * n_units + b

where ``S_g`` is the summed table latency of the units of group ``g`` (patch embeddings,
transformer / conv / mlp token mixers, block FFNs, MFAM edges, PPM branches and fuse,
top-down merges, head) and ``n_units`` the
number of units. It is fitted by ridge regression on *relative* error (what we report),
shrunk towards the plain sum (``w_g = 1``, ``w_n = b = 0``), with the ridge strength picked
by leave-one-out cross-validation, so a handful of measurements cannot make it worse than the
plain sum by much.

Corrections are saved as JSON next to the table (``<table>.corrections.json``), keyed by
device fingerprint, backend, precision, input size and number of classes: a correction is
never applied to another device's numbers.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from autonad_edge.errors import AutonadError
from autonad_edge.latency.blocks import Unit, dedup, image_hw, network_signature, units_of
from autonad_edge.latency.profiler import TargetKey, measure_units, target_key

if TYPE_CHECKING:
    from autonad_agent.measure import MeasurementPolicy
    from autonad_edge.latency.pool import ClientPool
    from autonad_edge.latency.protocol import RoundsPolicy
    from autonad_edge.latency.table import LatencyTable
    from autonad_edge.space import Arch, SearchSpace

log = logging.getLogger(__name__)

FEATURE_GROUPS = ("embed", "transformer", "conv", "mlp", "ffn", "edge", "ppm", "merge", "head")
FEATURES = tuple(f"sum_{g}" for g in FEATURE_GROUPS) + ("n_units", "bias")
# 2: blocks timed as mixer + FFN (the ``ffn`` group), the PPM as its parts.
CORRECTION_FORMAT = 2
RIDGE_GRID = tuple(10.0**e for e in range(-6, 3))
# Which statistic of the measurements to add up: the median by default; the minimum is far
# less sensitive to other load on a shared machine (use it there, for units and subnets alike).
STATS = ("median", "min", "mean", "p90")
# A corrected estimate never goes below this share of the plain block sum: the linear fit
# (negative bias, a kind weighted below zero) can extrapolate a small subnet to a negative or
# near-zero latency, which would make the search prefer it for nothing.
MIN_SHARE_OF_SUM = 0.25


def block_sum(features: dict[str, float]) -> float:
    """The plain sum of the units' table latencies (the per-kind ``sum_*`` features)."""
    return sum(v for k, v in features.items() if k.startswith("sum_"))


class EstimateError(AutonadError, LookupError):
    """Units of the architecture are not in the table and there is no pool to measure them."""


def corrections_path(table_path: str | Path) -> Path:
    """Where the corrections for the table at `table_path` live."""
    path = Path(table_path)
    return path.with_name(path.name + ".corrections.json")


def correction_key(key: TargetKey, image_size: int | Sequence[int], num_classes: int, stat: str = "median") -> str:
    h, w = image_hw(image_size)
    base = f"{key.fingerprint.hash}|{key.backend}|{key.precision}|{h}x{w}|classes={num_classes}"
    return base if stat == "median" else f"{base}|{stat}"


@dataclass
class Correction:
    """The fitted linear model; weights by feature name (see module doc)."""

    weights: dict[str, float]
    ridge: float = 0.0
    samples: int = 0
    fit_rmspe: float = float("nan")  # on the fitting set, percent
    loo_rmspe: float = float("nan")  # leave-one-out, percent
    raw_rmspe: float = float("nan")  # of the plain sum on the fitting set, percent
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def identity(cls) -> "Correction":
        return cls({f: (1.0 if f.startswith("sum_") else 0.0) for f in FEATURES})

    def apply(self, features: dict[str, float]) -> float:
        corrected = sum(self.weights.get(name, 0.0) * features.get(name, 0.0) for name in FEATURES)
        return max(corrected, MIN_SHARE_OF_SUM * block_sum(features))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CORRECTION_FORMAT, "weights": self.weights, "ridge": self.ridge, "samples": self.samples,
            "fit_rmspe": self.fit_rmspe, "loo_rmspe": self.loo_rmspe, "raw_rmspe": self.raw_rmspe, "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Correction":
        if data.get("format") != CORRECTION_FORMAT:
            raise ValueError(f"unsupported correction format {data.get('format')!r}")
        return cls(
            weights={str(k): float(v) for k, v in data["weights"].items()}, ridge=float(data.get("ridge", 0.0)),
            samples=int(data.get("samples", 0)), fit_rmspe=float(data.get("fit_rmspe", "nan")),
            loo_rmspe=float(data.get("loo_rmspe", "nan")), raw_rmspe=float(data.get("raw_rmspe", "nan")),
            meta=dict(data.get("meta", {})),
        )


def fit_correction(rows: Sequence[dict[str, float]], measured: Sequence[float],
                   ridges: Sequence[float] = RIDGE_GRID) -> Correction:
    """Ridge fit of `measured` (ms) on feature `rows`, minimising relative error and shrinking
    towards the plain sum; the ridge strength minimises the leave-one-out error."""
    import numpy as np

    if len(rows) != len(measured) or not rows:
        raise ValueError("need one measurement per feature row, at least one")
    y = np.asarray(measured, dtype=np.float64)
    if np.any(y <= 0) or not np.all(np.isfinite(y)):
        raise ValueError("measured latencies must be positive and finite")
    x = np.array([[row.get(f, 0.0) for f in FEATURES] for row in rows], dtype=np.float64)
    w0 = np.array([Correction.identity().weights[f] for f in FEATURES])
    a = x / y[:, None]  # relative residuals: (y - x w) / y = 1 - a w
    r = 1.0 - a @ w0  # what the plain sum leaves
    scale = np.sqrt(np.mean(a**2, axis=0))
    # A feature that is constant over the fit set (e.g. the top-down merges, whose shapes do
    # not depend on the subnet) cannot be told from the bias: keep it at its prior weight.
    spread = np.ptp(x, axis=0)
    constant = (spread <= 1e-9 * np.maximum(np.abs(x).max(axis=0), 1e-12)) & (np.array(FEATURES) != "bias")
    active = (scale > 1e-12) & ~constant
    a_s = a[:, active] / scale[active]
    best: tuple[float, float, np.ndarray] | None = None
    n, k = a_s.shape
    for lam in ridges:
        gram = a_s.T @ a_s + lam * n * np.eye(k)
        inv = np.linalg.inv(gram)
        v = inv @ a_s.T @ r
        resid = r - a_s @ v
        hat = np.einsum("ij,jk,ik->i", a_s, inv, a_s)
        loo = resid / np.clip(1.0 - hat, 1e-9, None)
        loo_rmspe = float(np.sqrt(np.mean(loo**2)) * 100)
        if best is None or loo_rmspe < best[1] - 1e-12:
            best = (lam, loo_rmspe, v)
    assert best is not None
    lam, loo_rmspe, v = best
    w = w0.copy()
    w[active] += v / scale[active]
    fit = 1.0 - a @ w
    return Correction(
        weights={f: float(val) for f, val in zip(FEATURES, w)}, ridge=lam, samples=len(rows),
        fit_rmspe=float(np.sqrt(np.mean(fit**2)) * 100), loo_rmspe=loo_rmspe,
        raw_rmspe=float(np.sqrt(np.mean(r**2)) * 100),
    )


def load_corrections(path: str | Path) -> dict[str, Correction]:
    """The corrections saved at `path`; those of another format (fitted on other features)
    are left out: the estimator refits from the table's end-to-end measurements."""
    p = Path(path)
    if not p.is_file():
        return {}
    data = json.loads(p.read_text(encoding="utf-8"))
    stale = [k for k, v in data.get("corrections", {}).items() if v.get("format") != CORRECTION_FORMAT]
    if stale:
        log.info("%s: %d correction(s) of an older format ignored", p, len(stale))
    return {k: Correction.from_dict(v) for k, v in data.get("corrections", {}).items() if k not in stale}


def save_correction(path: str | Path, key: str, correction: Correction) -> None:
    """Add or replace `key` in the corrections file (atomic write). Runs that share a table
    (two targets calibrating at once) take turns on a lock file beside it, so that neither
    writes back a copy read before the other's correction landed."""
    import fcntl

    from autonad_edge.io import atomic_write_json

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p.with_name(p.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        data = json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}
        corrections = data.get("corrections", {})
        corrections[key] = correction.to_dict()
        atomic_write_json(p, {"format": CORRECTION_FORMAT, "corrections": corrections})


class LatencyEstimator:
    """Latency of subnets of `space` at `image_size` on one target, from the latency table.

    `stat` picks the statistic summed and predicted (``median``, the default, or ``min``,
    ``mean``, ``p90``); end-to-end measurements report the same statistic.

    With a `pool`, the target key (fingerprint, backend, precision) comes from its agents and
    missing units are measured on demand; without one, pass `key` (e.g. from
    `stored_key(table, ...)`) to estimate offline from the table.
    """

    def __init__(
        self,
        table: "LatencyTable",
        space: "SearchSpace",
        image_size: int | Sequence[int],
        num_classes: int,
        *,
        pool: "ClientPool | None" = None,
        key: TargetKey | None = None,
        policy: "MeasurementPolicy | None" = None,
        end_to_end_policy: "MeasurementPolicy | None" = None,
        corrections: str | Path | None = None,
        correct: bool = True,
        stat: str = "median",
    ) -> None:
        if stat not in STATS:
            raise ValueError(f"stat must be one of {', '.join(STATS)}, got {stat!r}")
        if pool is None and key is None:
            raise ValueError("pass a pool (to measure on the target) or a target key (to read the table only)")
        self.table, self.space, self.num_classes, self.pool = table, space, num_classes, pool
        self.image_size = image_hw(image_size)
        self.key = key or target_key(pool)  # type: ignore[arg-type]
        self.policy, self.end_to_end_policy = policy, end_to_end_policy
        self.stat = stat
        self._field = f"{stat}_ms"
        self.corrections_path = Path(corrections) if corrections else corrections_path(table.path)
        self._cache: dict[str, float] = {}
        self.correction: Correction | None = None
        if correct:
            self.correction = load_corrections(self.corrections_path).get(self.correction_key)

    @property
    def correction_key(self) -> str:
        return correction_key(self.key, self.image_size, self.num_classes, self.stat)

    # ---- unit latencies ------------------------------------------------------------------
    def units(self, arch: "Arch") -> list[Unit]:
        return units_of(arch, self.space, self.num_classes, self.image_size)

    def unit_latencies(self, units: Iterable[Unit]) -> dict[str, float]:
        """Median ms per unit signature, measuring missing ones if there is a pool."""
        units = list(units)
        missing = [u for u in dedup(units) if u.signature not in self._cache]
        if missing:
            fp, backend, precision = self.key.fingerprint, self.key.backend, self.key.precision
            still: list[Unit] = []
            for u in missing:
                entry = self.table.get(fp, backend, precision, u.signature)
                if entry is None:
                    still.append(u)
                else:
                    self._cache[u.signature] = getattr(entry, self._field)
            if still:
                if self.pool is None:
                    # Raise the table's own error: it says whether other devices have them.
                    self.table.require(fp, backend, precision, [u.signature for u in still])
                    raise EstimateError(f"{len(still)} units not in the table")  # pragma: no cover
                report = measure_units(self.pool, self.table, still, key=self.key, policy=self.policy)
                if report.failed:
                    unit, why = report.failed[0]
                    raise EstimateError(f"cannot measure {unit.describe()}: {why}")
                for u in still:
                    entry = self.table.get(fp, backend, precision, u.signature)
                    if entry is None:
                        raise EstimateError(f"measured {u.describe()} but the table has no entry for it")
                    self._cache[u.signature] = getattr(entry, self._field)
        return {u.signature: self._cache[u.signature] for u in units}

    def features(self, arch: "Arch") -> dict[str, float]:
        units = self.units(arch)
        lat = self.unit_latencies(units)
        feats = {f: 0.0 for f in FEATURES}
        for u in units:
            feats[f"sum_{u.feature}"] += lat[u.signature]
        feats["n_units"] = float(len(units))
        feats["bias"] = 1.0
        return feats

    def breakdown(self, arch: "Arch") -> list[tuple[Unit, float]]:
        """Each unit of `arch` (in network order) with its table latency."""
        units = self.units(arch)
        lat = self.unit_latencies(units)
        return [(u, lat[u.signature]) for u in units]

    def raw_sum(self, arch: "Arch") -> float:
        return sum(ms for _, ms in self.breakdown(arch))

    def estimate(self, arch: "Arch") -> float:
        """Estimated end-to-end latency (ms): corrected sum if a correction is fitted, else the sum."""
        feats = self.features(arch)
        return block_sum(feats) if self.correction is None else self.correction.apply(feats)

    def estimate_many(self, archs: Iterable["Arch"]) -> list[float]:
        archs = list(archs)
        self.unit_latencies(u for a in archs for u in self.units(a))  # one batch of measurements
        return [self.estimate(a) for a in archs]

    # ---- end to end ----------------------------------------------------------------------
    def network_signature(self, arch: "Arch") -> str:
        return network_signature(arch, self.space, self.num_classes, self.image_size)

    def measure_end_to_end(self, arch: "Arch", *, reuse: bool = True) -> float:
        """Median ms of the whole exported subnet measured on the target (recorded in the
        table under its network signature; `reuse` returns an earlier such measurement)."""
        return self.measure_end_to_end_many([arch], reuse=reuse)[0]

    def measure_end_to_end_many(self, archs: Sequence["Arch"], *, reuse: bool = True) -> list[float]:
        fp, backend, precision = self.key.fingerprint, self.key.backend, self.key.precision
        out: dict[str, float] = {}
        todo = []
        for arch in archs:
            sig = self.network_signature(arch)
            entry = self.table.get(fp, backend, precision, sig) if reuse else None
            if entry is not None:
                out[sig] = getattr(entry, self._field)
            elif sig not in {s for s, _ in todo}:
                todo.append((sig, arch))
        # All exported first, then measured one at a time: never export while the pool
        # measures on this machine. Not reusing also bypasses the agent's result cache (the
        # export cache hands it the very same bytes as last time).
        for sig, job in self._export_jobs(dict(todo), self.end_to_end_policy, fresh=not reuse).items():
            (result,) = self.pool.measure_many([job])  # type: ignore[union-attr]
            if self.pool.table is not self.table:  # type: ignore[union-attr]
                self.table.record(sig, result)
            out[sig] = getattr(result, self._field)
        return [out[self.network_signature(a)] for a in archs]

    def _export_jobs(self, archs: dict[str, "Arch"], policy: "MeasurementPolicy | None" = None,
                     fresh: bool = False) -> dict:
        """`archs` (by network signature) exported for this target, several at once in the
        export workers, as measurement jobs; the first failed export is raised."""
        from autonad_edge.latency.export_pool import export_networks
        from autonad_edge.latency.pool import MeasureJob

        if not archs:
            return {}
        if self.pool is None:
            raise EstimateError("measuring a whole subnet needs a pool (an open target)")
        exported = export_networks(list(archs.values()), self.space, self.num_classes, self.image_size,
                                   self.key.flavor)
        jobs = {}
        for sig, onnx in zip(archs, exported):
            if isinstance(onnx, BaseException):
                raise onnx
            jobs[sig] = MeasureJob(onnx=onnx, signature=sig, policy=policy, fresh=fresh)
        return jobs

    def measure_together(self, archs: Sequence["Arch"], *, rounds: "RoundsPolicy | None" = None) -> list[float]:
        """Each subnet of `archs` measured end to end afresh, all of them in interleaved rounds
        (`latency.protocol.measure_in_rounds`), for choices that compare them with each other.

        Measured one after another, a change of the host's speed (a clock boost, another
        tenant's load) lands on whichever subnet was timed while it lasted, and a choice by
        latency then picks that one: finalists measured one by one read 2.24 ms for one subnet
        and 3.4-3.6 ms for its peers, the same subnet 3.55 ms at export (benchmarks/RESULTS.md,
        session 17). In rounds every subnet is timed in every phase of such a change, and the
        estimate is the median of its rounds (`rounds_policy`), not the fastest: on this 2-core
        VM the host also gets *faster* for seconds at a time, and a floor then picked the one
        subnet timed in such a moment (2.31 ms; its other rounds 3.6-3.8 ms, like its peers').
        Each result (the statistics of the round values) replaces the table's entry for the
        subnet; returns the estimates, in the order of `archs` (a repeated arch is measured once)."""
        from autonad_edge.latency.protocol import measure_in_rounds, robust_measurement

        if not archs:
            return []
        jobs = self._export_jobs({self.network_signature(a): a for a in archs})
        result = measure_in_rounds(self.pool, jobs, next(iter(jobs.values())), rounds or self.rounds_policy())
        for sig, latency in result.latencies.items():
            self.table.record(sig, robust_measurement(latency))
        return [result.latencies[self.network_signature(a)].estimate_ms for a in archs]

    def rounds_policy(self) -> "RoundsPolicy":
        """Rounds for `measure_together`: each round takes the estimator's statistic of its runs
        (the one its unit sums add up, so the correction fits like with like), the estimate is
        the median over the rounds of those values, scaled by the reference's level at the time."""
        from autonad_edge.latency.protocol import RoundsPolicy

        return RoundsPolicy(rounds=5, max_extra_rounds=2, statistic=self.stat,
                            estimate="median")

    # ---- correction ----------------------------------------------------------------------
    def fit(self, measured: Iterable[tuple["Arch", float]], *, save: bool = True) -> Correction:
        """Fit the correction to (arch, end-to-end ms) pairs and use it from now on; saved
        next to the table under this target's key unless `save=False`."""
        pairs = list(measured)
        rows = [self.features(a) for a, _ in pairs]
        correction = fit_correction(rows, [ms for _, ms in pairs])
        correction.meta = {
            "fingerprint": self.key.fingerprint.hash, "fingerprint_summary": self.key.fingerprint.summary(),
            "backend": self.key.backend, "precision": self.key.precision, "stat": self.stat,
            "image_size": list(self.image_size), "num_classes": self.num_classes,
            "space": json.loads(self.space.to_json()), "fitted_at": time.time(),
        }
        self.correction = correction
        if save:
            save_correction(self.corrections_path, self.correction_key, correction)
        return correction

    def calibrate(self, archs: Sequence["Arch"], *, save: bool = True) -> Correction:
        """Measure `archs` end to end, together in interleaved rounds (`measure_together`), and
        fit the correction to them.

        Measured one after another, the host's changes of speed land on some of them: a
        default run's 8 calibration subnets read 5.3-7.2 ms for the first five (above their
        unit sums) and 2.7-4.5 ms for the last three (below), 0.8 min apart, and the fit came
        out with weights from -7 to +7 and a leave-one-out error of 19 % (session 18)."""
        ms = self.measure_together(archs)
        return self.fit(list(zip(archs, ms)), save=save)


def stored_key(table: "LatencyTable", backend: str, precision: str = "fp32",
               fingerprint: str | None = None) -> TargetKey:
    """A target key for offline estimation from a table: the stored fingerprint whose hash
    starts with `fingerprint`, or the only one stored for `backend`/`precision` (an error if
    there are several: never guess between devices)."""
    stored = [s.fingerprint for s in table.fingerprints()]
    with_entries = {e.fingerprint_hash for e in table.entries(backend=backend, precision=precision)}
    candidates = [f for f in stored if f.hash in with_entries and (fingerprint is None or f.hash.startswith(fingerprint))]
    if len(candidates) != 1:
        listing = ", ".join(f.summary() for f in candidates) or "none"
        raise LookupError(
            f"{table.path}: need exactly one {backend}/{precision} fingerprint"
            f"{' matching ' + fingerprint if fingerprint else ''}, found {listing}"
        )
    return TargetKey(candidates[0], backend, precision)


def accuracy_report(estimates: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    """nn-Meter style: share within +-5% and +-10%, RMSPE, mean absolute percentage error."""
    errs = [(e - m) / m for e, m in zip(estimates, measured)]
    n = len(errs)
    if not n:
        return {"n": 0}
    return {
        "n": n,
        "within_5pct": sum(abs(e) <= 0.05 for e in errs) / n,
        "within_10pct": sum(abs(e) <= 0.10 for e in errs) / n,
        "rmspe_pct": math.sqrt(sum(e * e for e in errs) / n) * 100,
        "mape_pct": sum(abs(e) for e in errs) / n * 100,
        "max_abs_pct": max(abs(e) for e in errs) * 100,
        "mean_pct": sum(errs) / n * 100,
    }


__all__ = [
    "Correction",
    "EstimateError",
    "FEATURES",
    "LatencyEstimator",
    "accuracy_report",
    "correction_key",
    "corrections_path",
    "fit_correction",
    "load_corrections",
    "save_correction",
    "stored_key",
]
