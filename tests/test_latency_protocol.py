"""The noise-robust measurement protocol: its statistics on given samples, and real rounds on
a real agent (no timing assertions)."""

from __future__ import annotations

import secrets
from pathlib import Path

import numpy as np
import pytest

from autonad_agent import testing
from autonad_agent.measure import MeasurementPolicy
from autonad_edge.latency import AgentClient, ClientPool, LatencyTable, MeasureJob
from autonad_edge.latency.protocol import (
    RoundsPolicy, detect_drift, floor_interval, measure_in_rounds, median_interval, normalised, robust_measurement,
)


def test_median_interval_uses_binomial_order_statistics():
    # n = 10: P(B <= 1) = 11/1024, so [x(2), x(9)] covers the median with 1 - 22/1024 = 97.9 %;
    # [x(3), x(8)] would cover only 1 - 112/1024 = 89.1 %.
    samples = [10.0, 1.0, 9.0, 2.0, 8.0, 3.0, 7.0, 4.0, 6.0, 5.0]
    iv = median_interval(samples)
    assert (iv.estimate, iv.low, iv.high, iv.samples) == (5.5, 2.0, 9.0, 10)
    assert iv.confidence == pytest.approx(1 - 22 / 1024)
    assert iv.relative_halfwidth == pytest.approx(3.5 / 5.5)
    # Five rounds cannot reach 95 %: the interval is the range, with its real coverage.
    five = median_interval([3.0, 1.0, 2.0, 5.0, 4.0])
    assert (five.estimate, five.low, five.high) == (3.0, 1.0, 5.0)
    assert five.confidence == pytest.approx(1 - 2 / 32)
    assert median_interval([4.0]).relative_halfwidth == 0.0
    with pytest.raises(ValueError):
        median_interval([])


def test_intervals_overlap_only_when_they_share_a_value():
    a = median_interval([1.0, 2.0, 3.0])
    assert a.overlaps(median_interval([3.0, 4.0, 5.0]))
    assert not a.overlaps(median_interval([3.5, 4.0, 5.0]))


def test_drift_is_a_trend_that_moves_the_level():
    rising = [10.0 + 0.2 * i for i in range(15)]  # thirds' medians 10.4 and 12.4: +19 %, monotonic
    d = detect_drift(rising)
    assert d.drifting and d.tau == pytest.approx(1.0) and d.relative_change == pytest.approx(12.4 / 10.4 - 1)
    # Alternating noise of +-4 % around a flat level: no trend.
    flat = [10.0 + (0.4 if i % 2 else -0.4) for i in range(15)]
    assert not detect_drift(flat).drifting
    # A significant trend too small to matter (1 %) is not reported as drift.
    assert not detect_drift([10.0 + 0.0075 * i for i in range(15)]).drifting
    assert not detect_drift([1.0, 2.0, 3.0]).drifting  # too short to tell


def test_normalised_cancels_a_host_wide_slowdown():
    # The reference ran at 10 ms, then 20 ms (host twice as slow), then 10 ms again. A model
    # measured between the first two took 6 ms, one between the last two 6 ms: both read as
    # 6 * 10 / 15 = 4 ms at the session's reference level (its median, 10 ms).
    reference = [10.0, 20.0, 10.0]
    assert normalised([(6.0, 0), (6.0, 1), (3.0, 2)], reference) == pytest.approx([4.0, 4.0, 3.0])


def test_rounds_policy_rejects_nonsense():
    with pytest.raises(ValueError):
        RoundsPolicy(rounds=0)
    with pytest.raises(ValueError):
        RoundsPolicy(statistic="p99")
    assert RoundsPolicy(statistic="p90").statistic == "p90"  # the estimator's statistics are all allowed
    with pytest.raises(ValueError):
        RoundsPolicy(estimate="mean")


def test_floor_interval_is_the_floor_and_how_often_it_was_seen():
    # A host that is sometimes 50 % slower: the floor is the fast state, and it is reproduced
    # (the interval narrow) once two rounds saw it.
    seen_twice = floor_interval([70.0, 46.0, 71.0, 47.0, 69.0])
    assert seen_twice.estimate == seen_twice.low == 46.0 and seen_twice.high == 47.0
    assert seen_twice.relative_halfwidth == pytest.approx(0.5 / 46.0)
    seen_once = floor_interval([70.0, 46.0, 71.0, 69.0])
    assert seen_once.relative_halfwidth == pytest.approx(23.0 / 2 / 46.0)
    assert floor_interval([5.0]).relative_halfwidth == 0.0
    with pytest.raises(ValueError):
        floor_interval([])


@pytest.fixture
def token_file(tmp_path: Path) -> tuple[Path, str]:
    token = secrets.token_urlsafe(24)
    path = tmp_path / "token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path, token


def test_rounds_on_a_real_agent_measure_afresh_and_interleave_the_reference(tmp_path: Path, token_file):
    path, token = token_file
    quick = MeasurementPolicy(warmup_runs=1, warmup_ms=0, min_runs=3, min_duration_ms=5, max_runs=50,
                              max_cv=100, max_repeats=0)
    policy = RoundsPolicy(rounds=3, max_extra_rounds=0, reference_every=2, per_round=quick)
    models = {f"m{i}": MeasureJob(testing.conv_model(channels=8, size=16, seed=i)) for i in range(3)}
    reference = MeasureJob(testing.conv_model(channels=4, size=16, seed=99))
    with testing.AgentProcess(path) as agent, LatencyTable(tmp_path / "pool.sqlite") as pool_table:
        with ClientPool([AgentClient(agent.address, token=token, timeout_s=60)], table=pool_table) as pool:
            result = measure_in_rounds(pool, models, reference, policy, seed=1)
        # A round's figure is no measurement of the model: nothing reaches the pool's table
        # (the caller records the summary, `robust_measurement`).
        assert pool_table.entries() == []
    assert set(result.latencies) == set(models)
    # Per round: a reference before each chunk of two (2 chunks) and one at the end.
    assert len(result.reference_series_ms) == 3 * 3
    assert result.measurements == 3 * (3 + 3)
    assert len(result.hosts) == 9 and all(h.cpus >= 1 for h in result.hosts)
    for lat in result.latencies.values():
        assert len(lat.values_ms) == 3 and not lat.last.cached  # every round measured, none from the cache
        assert lat.interval.low <= lat.estimate_ms <= lat.interval.high
    # The table form: the floor (the default estimate) is the table's min, one "run" per round.
    m = robust_measurement(result.latencies["m0"])
    assert m.min_ms == pytest.approx(result.latencies["m0"].estimate_ms) and m.runs == 3
    assert result.latencies["m0"].values_ms == result.latencies["m0"].raw_ms  # the floor takes raw values
    with LatencyTable(tmp_path / "t.sqlite") as table:
        table.record("m0", m)
        assert table.get(m.fingerprint, m.backend, m.precision, "m0").median_ms == pytest.approx(m.median_ms)


def test_unstable_models_get_extra_rounds(tmp_path: Path, token_file):
    path, token = token_file
    quick = MeasurementPolicy(warmup_runs=0, warmup_ms=0, min_runs=1, min_duration_ms=0, max_runs=1,
                              max_cv=100, max_repeats=0)
    # A tolerance nothing real meets: every model is re-measured in each extra round.
    policy = RoundsPolicy(rounds=2, max_extra_rounds=2, max_relative_halfwidth=1e-12, normalize=False,
                          reference_every=4, per_round=quick)
    models = {"a": MeasureJob(testing.conv_model(channels=8, size=16, seed=1))}
    with testing.AgentProcess(path) as agent:
        with ClientPool([AgentClient(agent.address, token=token, timeout_s=60)]) as pool:
            result = measure_in_rounds(pool, models, MeasureJob(testing.conv_model(seed=5)), policy)
    values = result.latencies["a"].values_ms
    assert len(values) == 4
    if len(set(values)) > 1:  # identical timings would be stable, legitimately
        assert result.unstable == ["a"]
    assert np.all(np.asarray(values) > 0)
