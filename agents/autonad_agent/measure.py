"""The measurement loop every backend shares: warm-up, timed runs, statistics, repeats.

Modelled on trtexec: warm up until both a run count and a duration are reached (caches,
clocks, lazy allocations settle), then time runs until both a minimum count and a minimum
duration are reached, capped by a maximum count. Outliers are counted, never dropped, so
the statistics describe what the device really did. A round whose coefficient of
variation is above `max_cv` is measured again (bounded); the least noisy round is reported
and flagged unstable when even that one is too noisy.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from typing import Callable

import numpy as np


# The agent's caps, whatever a caller asks for: they bound the device time of one request.
MAX_WARMUP_RUNS = 1_000
MAX_WARMUP_MS = 10_000.0
MAX_MIN_DURATION_MS = 30_000.0
MAX_RUNS = 100_000
MAX_REPEATS = 5
# Warm-up and timed runs of one measurement stop here, whatever the counts asked for (a slow
# model times fewer runs, flagged unstable if that leaves it noisy): with one inference's
# time on top, this bounds the device time of any policy. Loading the model is bounded by the
# agent's --max-request-s.
MAX_MEASURE_MS = 60_000.0


@dataclass(frozen=True)
class MeasurementPolicy:
    """How to time a model. The defaults suit models that run in 0.1-100 ms."""

    warmup_runs: int = 10
    warmup_ms: float = 200.0
    min_runs: int = 50
    min_duration_ms: float = 1000.0
    max_runs: int = 5000
    max_cv: float = 0.10
    max_repeats: int = 2

    def __post_init__(self) -> None:
        if self.warmup_runs < 0 or self.min_runs < 1 or self.max_runs < self.min_runs or self.max_repeats < 0:
            raise ValueError(f"need warmup_runs, max_repeats >= 0 and 1 <= min_runs <= max_runs, got {self}")
        for name in ("warmup_ms", "min_duration_ms", "max_cv"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        if self.max_cv == 0:
            raise ValueError("max_cv must be > 0")

    @classmethod
    def from_wire(cls, **values: float) -> MeasurementPolicy:
        """A policy from the fields a request set (the others take their defaults),
        clamped to the agent's caps. Raises ValueError for invalid values."""
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown policy fields: {sorted(unknown)}")
        default = cls()
        merged = {f.name: values.get(f.name, getattr(default, f.name)) for f in fields(cls)}
        if "max_runs" not in values:
            merged["max_runs"] = max(merged["max_runs"], merged["min_runs"])
        merged["warmup_runs"] = min(merged["warmup_runs"], MAX_WARMUP_RUNS)
        merged["warmup_ms"] = min(merged["warmup_ms"], MAX_WARMUP_MS)
        merged["min_duration_ms"] = min(merged["min_duration_ms"], MAX_MIN_DURATION_MS)
        merged["max_runs"] = min(merged["max_runs"], MAX_RUNS)
        merged["min_runs"] = min(merged["min_runs"], merged["max_runs"])
        merged["max_repeats"] = min(merged["max_repeats"], MAX_REPEATS)
        return cls(**merged)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class LatencyStats:
    """Summary statistics of one round of timed runs, in milliseconds: the record the agent
    reports (the protocol's ``LatencyStats``), the host's `Measurement` and the latency
    table's `TableEntry` extend."""

    median_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    p90_ms: float
    p99_ms: float
    std_ms: float
    cv: float
    runs: int
    outliers: int

    @property
    def variance_ms2(self) -> float:
        return self.std_ms**2

    def stats(self) -> LatencyStats:
        """Just the statistics (of a record that extends them)."""
        return LatencyStats(**{name: getattr(self, name) for name in STAT_FIELDS})

    @classmethod
    def from_samples(cls, samples_ms: np.ndarray | list[float]) -> LatencyStats:
        samples = np.asarray(samples_ms, dtype=np.float64)
        if samples.size == 0:
            raise ValueError("no samples")
        mean = float(samples.mean())
        std = float(samples.std(ddof=1)) if samples.size > 1 else 0.0
        q1, median, q3, p90, p99 = np.percentile(samples, [25, 50, 75, 90, 99])
        outliers = int(np.count_nonzero(samples > q3 + 1.5 * (q3 - q1)))
        return cls(
            median_ms=float(median), mean_ms=mean, min_ms=float(samples.min()), max_ms=float(samples.max()),
            p90_ms=float(p90), p99_ms=float(p99), std_ms=std, cv=std / mean if mean > 0 else math.inf,
            runs=int(samples.size), outliers=outliers,
        )


STAT_FIELDS = tuple(f.name for f in fields(LatencyStats))


@dataclass(frozen=True)
class MeasurementResult:
    """What one measurement produced: the reported round and how it was obtained."""

    stats: LatencyStats
    stable: bool
    attempts: int
    warmup_runs: int


def _warm_up(run_once: Callable[[], float], policy: MeasurementPolicy, stop_at: float) -> int:
    runs = 0
    start = time.perf_counter()
    while (runs < policy.warmup_runs or (time.perf_counter() - start) * 1e3 < policy.warmup_ms) and (
        time.perf_counter() < stop_at
    ):
        run_once()
        runs += 1
    return runs


def _timed_round(run_once: Callable[[], float], policy: MeasurementPolicy, stop_at: float) -> LatencyStats:
    samples = np.empty(policy.max_runs, dtype=np.float64)
    runs = 0
    start = time.perf_counter()
    while runs < policy.max_runs and (
        runs < policy.min_runs or (time.perf_counter() - start) * 1e3 < policy.min_duration_ms
    ) and (runs < 2 or time.perf_counter() < stop_at):  # two runs at least, for a spread
        samples[runs] = run_once()
        runs += 1
    return LatencyStats.from_samples(samples[:runs])


def measure_latency(run_once: Callable[[], float], policy: MeasurementPolicy,
                    budget_ms: float = MAX_MEASURE_MS) -> MeasurementResult:
    """Time `run_once` (one inference, returning its latency in ms) under `policy`, within
    `budget_ms` of warm-up and timed runs (plus the inference in progress when it ends)."""
    best: LatencyStats | None = None
    warmup_runs = 0
    attempts = 0
    stop_at = time.perf_counter() + budget_ms / 1e3
    for attempts in range(1, policy.max_repeats + 2):
        # Warm up before every round: a noisy round often follows a clock or cache change.
        warmup_runs = _warm_up(run_once, policy, stop_at)
        stats = _timed_round(run_once, policy, stop_at)
        if best is None or stats.cv < best.cv:
            best = stats
        if best.cv <= policy.max_cv or time.perf_counter() >= stop_at:
            break
    assert best is not None
    return MeasurementResult(stats=best, stable=best.cv <= policy.max_cv, attempts=attempts, warmup_runs=warmup_runs)
