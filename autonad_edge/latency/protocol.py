"""Latency measurement that holds on a busy host: interleaved rounds against a reference.

One long measurement per model is at the mercy of whatever the host does during it: another
process, a clock change, a Jetson throttling as it warms up. Models measured minutes apart
then disagree by more than the estimator can correct, and the table's sums stop predicting
whole networks (benchmarks/RESULTS.md, issue 16). This protocol spreads each model's time
over the whole session instead:

1. `rounds` rounds; in each, every model is measured once with a short policy, in a fresh
   random order, and a fixed *reference* model is measured before every `reference_every`
   models and at the end of the round.
2. A model's value in a round is its per-round statistic (the minimum of its runs by
   default: far less sensitive to other load than the mean). For the median estimate (3.) it
   is scaled by how fast the host was at that moment: the reference's level then (the mean
   of the two reference measurements around it) against the reference's median over the
   session, so a slow host-wide change moves the reference and the model alike and cancels.
3. The estimate is, by default, the model's *floor*: the smallest of its round values, with
   the second smallest as the interval's upper end. On a shared host the slowdowns come and
   go faster than a reference can follow (a VM whose neighbours share its cores: the same
   model's runs take 38 or 53 ms from one second to the next, RESULTS.md), and nothing makes
   a model faster than it is, so the floor seen in two rounds is its reproducible speed and
   is taken from the raw values. A floor not yet seen twice (interval wider than
   `max_relative_halfwidth`) gets extra rounds (bounded), then is flagged unstable. Where the
   host can also get *faster* for a while (the 2-core development VM did, for seconds: session
   17), a floor favours whichever model was timed then; comparisons between models there use
   the median estimate (`LatencyEstimator.measure_together`).
   `estimate="median"` takes the median of the normalised values instead, with a
   distribution-free interval (order statistics of the binomial): right where the host's
   speed drifts slowly and the reference tracks it.
4. The reference's series is tested for drift (Kendall's tau against time, and the change
   from its first to its last third); the device's load and clock (`HostState`, read by the
   agent) are kept for every reference measurement.

The result of a model is a `LatencyStats` of its round values (min = the floor, median = the
median estimate), so it goes into the latency table like any measurement (`robust_measurement`).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np

from autonad_agent.host_state import HostState
from autonad_agent.measure import LatencyStats, MeasurementPolicy

if TYPE_CHECKING:
    from autonad_edge.latency.client import Measurement
    from autonad_edge.latency.pool import ClientPool, MeasureJob

# Per round: a short warm-up and about 100 ms of runs. No repeats inside a round: the rounds
# are the repeats, and a noisy round is outvoted by the others.
ROUND_POLICY = MeasurementPolicy(warmup_runs=3, warmup_ms=30.0, min_runs=10, min_duration_ms=100.0,
                                 max_runs=2000, max_cv=10.0, max_repeats=0)
STATISTICS = ("min", "median", "mean", "p90")  # of a round's runs: the estimator's choices
ESTIMATES = ("floor", "median")


@dataclass(frozen=True)
class Interval:
    """A robust estimate with its confidence interval (same unit as the samples)."""

    estimate: float
    low: float
    high: float
    samples: int
    confidence: float

    @property
    def relative_halfwidth(self) -> float:
        return (self.high - self.low) / 2 / self.estimate if self.estimate > 0 else math.inf

    def overlaps(self, other: "Interval") -> bool:
        return self.low <= other.high and other.low <= self.high


def median_interval(samples: Sequence[float], confidence: float = 0.95) -> Interval:
    """The median of `samples` and a distribution-free interval for it: the order statistics
    x(k) and x(n+1-k) with the largest k such that P(k <= Binomial(n, 1/2) <= n-k) >=
    `confidence`. Below 6 samples no pair reaches 95 %: the interval is then [min, max]
    (coverage 1 - 2^(1-n))."""
    from scipy.stats import binom

    x = np.sort(np.asarray(samples, dtype=np.float64))
    n = x.size
    if n == 0:
        raise ValueError("no samples")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    k = 1
    # Coverage of [x(k), x(n+1-k)] is P(k <= B <= n - k) = 1 - 2 * P(B <= k - 1).
    while k + 1 <= (n + 1) // 2 and 1 - 2 * binom.cdf(k, n, 0.5) >= confidence:
        k += 1
    return Interval(estimate=float(np.median(x)), low=float(x[k - 1]), high=float(x[n - k]), samples=int(n),
                    confidence=float(max(1 - 2 * binom.cdf(k - 1, n, 0.5), 0.0)))


@dataclass(frozen=True)
class Drift:
    """A trend in a series taken over time (the reference's round values)."""

    relative_change: float  # median of the last third / median of the first third - 1
    tau: float  # Kendall's tau of the values against their order
    p_value: float
    drifting: bool

    def summary(self) -> str:
        verdict = "drifting" if self.drifting else "no drift"
        return f"{verdict} ({100 * self.relative_change:+.1f} % first to last third, tau {self.tau:+.2f}, p {self.p_value:.3f})"


def detect_drift(series: Sequence[float], *, min_change: float = 0.05, alpha: float = 0.05) -> Drift:
    """Drifting: a monotonic trend (Kendall's tau against time, p < `alpha`) that moved the
    level by at least `min_change` (relative) from the first to the last third. Fewer than 6
    values cannot show a trend."""
    from scipy.stats import kendalltau

    y = np.asarray(series, dtype=np.float64)
    if y.size < 6:
        return Drift(0.0, 0.0, 1.0, False)
    third = max(y.size // 3, 1)
    first, last = float(np.median(y[:third])), float(np.median(y[-third:]))
    change = last / first - 1 if first > 0 else 0.0
    result = kendalltau(np.arange(y.size), y)
    tau = 0.0 if math.isnan(result.statistic) else float(result.statistic)
    p = 1.0 if math.isnan(result.pvalue) else float(result.pvalue)
    return Drift(change, tau, p, p < alpha and abs(change) >= min_change)


def floor_interval(samples: Sequence[float]) -> Interval:
    """The floor of `samples` (their minimum) and how well it is reproduced: the interval runs
    from the smallest to the second smallest. Not a probability interval (confidence is NaN):
    narrow means the floor was seen in two rounds. One sample gives a zero-width interval."""
    x = np.sort(np.asarray(samples, dtype=np.float64))
    if x.size == 0:
        raise ValueError("no samples")
    second = x[1] if x.size > 1 else x[0]
    return Interval(estimate=float(x[0]), low=float(x[0]), high=float(second), samples=int(x.size),
                    confidence=math.nan)


@dataclass(frozen=True)
class RoundsPolicy:
    """How to measure in rounds (see the module doc)."""

    rounds: int = 5
    max_extra_rounds: int = 4
    max_relative_halfwidth: float = 0.05
    reference_every: int = 8
    statistic: str = "min"  # of each round's runs: one of STATISTICS
    estimate: str = "floor"  # over the rounds: floor (min, raw values) | median (normalised)
    normalize: bool = True  # median estimate: scale by the reference's level at the time
    confidence: float = 0.95
    per_round: MeasurementPolicy = ROUND_POLICY

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.max_extra_rounds < 0 or self.reference_every < 1:
            raise ValueError(f"need rounds >= 1, max_extra_rounds >= 0, reference_every >= 1, got {self}")
        if self.statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {STATISTICS}, got {self.statistic!r}")
        if self.estimate not in ESTIMATES:
            raise ValueError(f"estimate must be one of {ESTIMATES}, got {self.estimate!r}")


@dataclass(frozen=True)
class RobustLatency:
    """One model's result: its round values (ms; normalised for the median estimate) and the
    estimate's interval."""

    interval: Interval
    values_ms: tuple[float, ...]
    raw_ms: tuple[float, ...]  # the same rounds before normalisation
    stable: bool
    last: "Measurement"  # the model's last round, for what it says about the device and inputs

    @property
    def estimate_ms(self) -> float:
        return self.interval.estimate


@dataclass
class RoundsResult:
    latencies: dict[str, RobustLatency]
    reference: RobustLatency
    reference_series_ms: list[float]  # every reference measurement, in order, raw
    drift: Drift
    hosts: list[HostState]  # the device's state at each reference measurement
    rounds: int  # rounds of the full set (extra rounds are counted per model)
    measurements: int
    wall_s: float
    unstable: list[str] = field(default_factory=list)

    def summary(self) -> str:
        loads = [h.load_1m for h in self.hosts if h.cpus]
        load = f"; device load {min(loads):.2f}-{max(loads):.2f}" if loads else ""
        return (f"{len(self.latencies)} models in {self.rounds} rounds ({self.measurements} measurements, "
                f"{self.wall_s:.0f} s); reference {self.reference.estimate_ms:.3f} ms "
                f"±{100 * self.reference.interval.relative_halfwidth:.1f} %, {self.drift.summary()}; "
                f"{len(self.unstable)} unstable{load}")


def _value(m: "Measurement", statistic: str) -> float:
    return float(getattr(m, f"{statistic}_ms"))


def measure_in_rounds(
    pool: "ClientPool",
    models: Mapping[str, "MeasureJob"],
    reference: "MeasureJob",
    policy: RoundsPolicy = RoundsPolicy(),
    *,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> RoundsResult:
    """Measure every job of `models` (name -> job) in interleaved rounds against `reference`
    on `pool` (see the module doc). Every request asks the agent for a fresh measurement."""
    started = time.perf_counter()
    rng = random.Random(seed)
    # A round's figure is not a measurement of the model: the caller records the summary.
    jobs = {name: dataclasses.replace(job, policy=policy.per_round, fresh=True, record=False)
            for name, job in models.items()}
    ref_job = dataclasses.replace(reference, policy=policy.per_round, fresh=True, record=False)
    ref_series: list[float] = []
    hosts: list[HostState] = []
    # Per model, per round: (raw value, index of the reference measurement before it).
    rounds_of: dict[str, list[tuple[float, int]]] = {name: [] for name in jobs}
    last: dict[str, "Measurement"] = {}
    measurements = 0
    planned = (policy.rounds * (len(jobs) + len(jobs) // policy.reference_every + 2))
    done = 0

    def measure_reference() -> None:
        nonlocal measurements
        m = pool.measure_many([ref_job])[0]
        ref_series.append(_value(m, policy.statistic))
        hosts.append(m.host)
        last["__reference__"] = m
        measurements += 1

    def run_round(names: list[str]) -> None:
        nonlocal measurements, done
        order = list(names)
        rng.shuffle(order)
        for start in range(0, len(order), policy.reference_every):
            chunk = order[start:start + policy.reference_every]
            measure_reference()
            before = len(ref_series) - 1
            for name, m in zip(chunk, pool.measure_many([jobs[n] for n in chunk])):
                rounds_of[name].append((_value(m, policy.statistic), before))
                last[name] = m
            measurements += len(chunk)
            done += len(chunk) + 1
            if progress is not None:
                progress(done, max(planned, done))
        measure_reference()

    for _ in range(policy.rounds):
        run_round(list(jobs))
    results = _summarise(rounds_of, ref_series, policy, last)
    for _ in range(policy.max_extra_rounds):
        wide = [n for n, r in results.items() if not r.stable]
        if not wide:
            break
        run_round(wide)
        results = _summarise(rounds_of, ref_series, policy, last)
    ref_values = tuple(ref_series)
    ref_interval = _interval(ref_values, policy)
    reference_latency = RobustLatency(ref_interval, ref_values, ref_values,
                                      ref_interval.relative_halfwidth <= policy.max_relative_halfwidth,
                                      last["__reference__"])
    return RoundsResult(
        latencies=results, reference=reference_latency, reference_series_ms=list(ref_series),
        drift=detect_drift(ref_series), hosts=hosts, rounds=policy.rounds, measurements=measurements,
        wall_s=time.perf_counter() - started, unstable=sorted(n for n, r in results.items() if not r.stable),
    )


def normalised(values: Sequence[tuple[float, int]], reference_ms: Sequence[float]) -> list[float]:
    """Round values scaled to the reference's session median: each value (measured after
    reference measurement i, before i + 1) times median(reference) / mean(ref[i], ref[i+1])."""
    level = float(np.median(reference_ms))
    out = []
    for value, i in values:
        around = [reference_ms[j] for j in (i, i + 1) if 0 <= j < len(reference_ms)]
        local = sum(around) / len(around)
        out.append(value * level / local if local > 0 else value)
    return out


def _interval(values: Sequence[float], policy: RoundsPolicy) -> Interval:
    """The policy's estimate of `values` with its interval."""
    return floor_interval(values) if policy.estimate == "floor" else median_interval(values, policy.confidence)


def _summarise(rounds_of, ref_series, policy: RoundsPolicy, last) -> dict[str, RobustLatency]:
    results = {}
    for name, values in rounds_of.items():
        raw = tuple(v for v, _ in values)
        scaled = (tuple(normalised(values, ref_series)) if policy.estimate == "median" and policy.normalize
                  else raw)
        interval = _interval(scaled, policy)
        results[name] = RobustLatency(interval, scaled, raw,
                                      interval.relative_halfwidth <= policy.max_relative_halfwidth, last[name])
    return results


def robust_measurement(result: RobustLatency) -> "Measurement":
    """The model's result as a latency-table measurement: the statistics of its round values
    (min = the floor, median = the median estimate, runs = rounds), the device and inputs of
    its last round."""
    stats = LatencyStats.from_samples(result.values_ms)
    return dataclasses.replace(result.last, **dataclasses.asdict(stats), stable=result.stable,
                               attempts=len(result.values_ms), cached=False)


__all__ = ["Drift", "ESTIMATES", "Interval", "ROUND_POLICY", "RobustLatency", "RoundsPolicy", "RoundsResult",
           "detect_drift", "floor_interval", "measure_in_rounds", "median_interval", "normalised", "robust_measurement"]
