"""Profiling into the table, subnet estimates with the learned correction, and the background
profiler: against a real in-process agent (`open_target("local")`, ONNX Runtime on this CPU),
with a lenient measurement policy and a very small space to stay fast."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import threading
import time

import pytest

from autonad_edge.latency import LatencyTable, MissingEntriesError, open_target
from autonad_edge.latency.background import BackgroundProfiler
from autonad_edge.latency.blocks import space_units, units_of
from autonad_edge.latency.estimator import (
    FEATURES,
    Correction,
    LatencyEstimator,
    accuracy_report,
    corrections_path,
    fit_correction,
    stored_key,
)
from autonad_edge.latency.profiler import export_bytes, lenient_policy, missing_units, profile, target_key
from autonad_edge.space import SearchSpace, StageSpace

SIZE = 32
CLASSES = 3


def micro_space() -> SearchSpace:
    """Two operators, one width and ratio per stage: 19 distinct units at 32 px."""
    return SearchSpace(
        stages=(
            StageSpace((1, 2), (16,), (2.0,), sr_ratio=4),
            StageSpace((1,), (16,), (2.0,), sr_ratio=2),
            StageSpace((1,), (16,), (2.0,), sr_ratio=1),
            StageSpace((1,), (32,), (2.0,), sr_ratio=1),
        ),
        operators=("conv", "mlp"),
        kernels=(3,),
        edge_ops=("conv1x1", "dwconv3x3"),
        pool_size_choices=(1, 2),
        num_pool_branches=2,
        decoder_channels=16,
        head_dim=16,
    )


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """One local agent, one table profiled once for the whole module."""
    path = tmp_path_factory.mktemp("latency") / "table.sqlite"
    space = micro_space()
    with LatencyTable(path) as table, open_target("local") as pool:
        first = profile(space, pool, table, SIZE, CLASSES, policy=lenient_policy())
        yield {"space": space, "table": table, "pool": pool, "path": path, "first": first}


def test_profile_fills_the_table_and_a_second_run_measures_nothing(lab):
    space, table, pool = lab["space"], lab["table"], lab["pool"]
    first = lab["first"]
    every = space_units(space, CLASSES, SIZE)
    assert first.considered == len(every) and first.known == 0
    assert first.measured == len(every) and not first.failed
    key = target_key(pool)
    assert missing_units(every, table, key) == []
    entries = table.entries(key.fingerprint, key.backend, key.precision)
    assert {e.signature for e in entries} == {u.signature for u in every}
    assert all(e.median_ms > 0 and e.n == 7 for e in entries)
    second = profile(space, pool, table, SIZE, CLASSES, policy=lenient_policy())
    assert second.measured == 0 and second.known == len(every) and second.considered == len(every)


def test_estimate_against_end_to_end_after_fitting(lab):
    space, table, pool, path = lab["space"], lab["table"], lab["pool"], lab["path"]
    policy = lenient_policy()
    est = LatencyEstimator(table, space, SIZE, CLASSES, pool=pool, policy=policy, end_to_end_policy=policy)
    assert est.correction is None
    rng = random.Random(7)
    archs = []
    while len(archs) < 4:  # distinct subnets
        a = space.sample(rng)
        if a not in archs:
            archs.append(a)
    raw = [est.estimate(a) for a in archs]
    assert raw == pytest.approx([est.raw_sum(a) for a in archs])
    assert all(r > 0 for r in raw)
    measured = est.measure_end_to_end_many(archs[:3])  # the fit's rows; archs[3] is only estimated
    assert all(m > 0 for m in measured)
    # Recorded in the table: a second call reuses it without measuring.
    assert est.measure_end_to_end(archs[0]) == measured[0]
    correction = est.fit(list(zip(archs[:3], measured[:3])))
    assert correction.samples == 3 and set(correction.weights) == set(FEATURES)
    corrected = est.estimate(archs[3])
    # The estimate is the fitted model applied to the subnet's block sums (no comparison with
    # the measured time: that depends on the machine's load, not on this code).
    assert corrected == pytest.approx(correction.apply(est.features(archs[3])))
    # The fit is the one `fit_correction` gives for those rows (deterministic).
    refit = fit_correction([est.features(a) for a in archs[:3]], measured[:3])
    assert refit.weights == pytest.approx(correction.weights)
    # Saved next to the table under this fingerprint, and found again by a new estimator.
    saved = json.loads(corrections_path(path).read_text())
    assert est.correction_key in saved["corrections"]
    again = LatencyEstimator(table, space, SIZE, CLASSES, pool=pool)
    assert again.correction is not None and again.estimate(archs[3]) == pytest.approx(corrected)
    # Offline (no target): the table's only fingerprint, same numbers.
    offline = LatencyEstimator(table, space, SIZE, CLASSES, key=stored_key(table, est.key.backend))
    assert offline.estimate(archs[3]) == pytest.approx(corrected)
    # Another image size has no correction and no entries: offline it says so.
    other = LatencyEstimator(table, space, 48, CLASSES, key=est.key)
    assert other.correction is None
    with pytest.raises(MissingEntriesError):
        other.estimate(archs[0])


def test_measuring_without_reuse_measures_afresh(lab, monkeypatch):
    # The export cache hands the agent the very same bytes each time, and the agent keeps a
    # stable result: without `fresh`, asking again would return the old measurement.
    from autonad_agent.measure import MeasurementPolicy

    space, table, pool = lab["space"], lab["table"], lab["pool"]
    always_stable = MeasurementPolicy(warmup_runs=1, warmup_ms=0, min_runs=3, min_duration_ms=5, max_runs=50,
                                      max_cv=100, max_repeats=0)
    est = LatencyEstimator(table, space, SIZE, CLASSES, pool=pool, correct=False, end_to_end_policy=always_stable)
    arch = space.sample(random.Random(5))
    seen = []
    measure_many = pool.measure_many

    def recording(jobs, **kwargs):  # the real pool, its results kept for the test
        results = measure_many(jobs, **kwargs)
        seen.extend(results)
        return results

    monkeypatch.setattr(pool, "measure_many", recording)
    est.measure_end_to_end(arch, reuse=False)
    est.measure_end_to_end(arch, reuse=False)
    assert len(seen) == 2 and not any(m.cached for m in seen)


def test_subnets_measured_together_are_timed_afresh_in_every_round(lab):
    from autonad_agent.measure import MeasurementPolicy

    space, table, pool = lab["space"], lab["table"], lab["pool"]
    quick = MeasurementPolicy(warmup_runs=1, warmup_ms=0, min_runs=3, min_duration_ms=5, max_runs=50, max_cv=100,
                              max_repeats=0)
    rng = random.Random(11)
    a, b = space.sample(rng), space.sample(rng)
    while b == a:
        b = space.sample(rng)
    for stat in ("min", "median", "p90"):
        est = LatencyEstimator(table, space, SIZE, CLASSES, pool=pool, correct=False, stat=stat)
        policy = est.rounds_policy()
        # Each round's statistic is the estimator's (the one its unit sums add up: a p90
        # correction is fitted to p90s); over the rounds, the median, not the floor.
        assert policy.statistic == stat and policy.estimate == "median"
        rounds = dataclasses.replace(policy, rounds=3, max_extra_rounds=0, per_round=quick)
        ms = est.measure_together([a, b, a], rounds=rounds)  # a repeat is measured once
        assert len(ms) == 3 and ms[0] == ms[2] and all(m > 0 for m in ms)
        key = est.key
        for arch, value in zip((a, b), ms):
            entry = table.get(key.fingerprint, key.backend, key.precision, est.network_signature(arch))
            # The table keeps the statistics of the round values, one value a round, all fresh:
            # their median is the estimate returned.
            assert entry is not None and entry.n == 3
            assert value == pytest.approx(entry.median_ms) and entry.min_ms <= entry.median_ms <= entry.max_ms
    assert LatencyEstimator(table, space, SIZE, CLASSES, pool=pool).measure_together([]) == []


def test_fit_correction_recovers_a_linear_relation_and_shrinks_to_the_sum():
    rng = random.Random(0)
    rows = []
    for _ in range(40):
        row = {f: 0.0 for f in FEATURES}
        for f in (f for f in FEATURES if f.startswith("sum_")):
            row[f] = rng.uniform(0.1, 2.0)
        row["n_units"], row["bias"] = float(rng.randint(15, 30)), 1.0
        rows.append(row)
    truth = Correction.identity()
    truth.weights.update(sum_transformer=1.3, sum_conv=0.8, n_units=-0.02, bias=0.3)
    y = [truth.apply(r) for r in rows]
    fitted = fit_correction(rows, y)
    assert fitted.fit_rmspe < 1.0
    assert all(abs(fitted.apply(r) - t) / t < 0.02 for r, t in zip(rows, y))
    # Measurements that equal the plain sum leave it (almost) alone.
    plain = [Correction.identity().apply(r) for r in rows]
    same = fit_correction(rows, plain)
    assert same.fit_rmspe < 1e-6
    report = accuracy_report([1.04, 0.92, 1.0], [1.0, 1.0, 1.0])
    assert report["within_5pct"] == pytest.approx(2 / 3) and report["within_10pct"] == 1.0


def test_corrections_saved_at_once_by_several_processes_are_all_kept(tmp_path):
    # Runs sharing a table save their corrections into one file: a read-modify-write each, so
    # without turns one run writes back a copy that lacks another's correction.
    import subprocess
    import sys

    path = tmp_path / "corrections.json"
    writer = (
        "import sys\n"
        "from autonad_edge.latency.estimator import Correction, save_correction\n"
        "for i in range(25):\n"
        "    save_correction(sys.argv[1], f'{sys.argv[2]}-{i}', Correction.identity())\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", writer, str(path), name]) for name in "abcd"]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    saved = json.loads(path.read_text())["corrections"]
    assert set(saved) == {f"{name}-{i}" for name in "abcd" for i in range(25)}


def test_a_corrected_estimate_never_falls_below_a_share_of_the_block_sum():
    from autonad_edge.latency.estimator import MIN_SHARE_OF_SUM

    # A fit with a large negative intercept (seen on a busy host) extrapolated to a small subnet.
    correction = Correction.identity()
    correction.weights.update(sum_conv=0.9, bias=-3.0)
    small = {f: 0.0 for f in FEATURES}
    small.update(sum_conv=1.0, sum_embed=0.2, bias=1.0)
    assert correction.apply(small) == pytest.approx(MIN_SHARE_OF_SUM * 1.2)
    large = dict(small, sum_conv=10.0)
    assert correction.apply(large) == pytest.approx(0.9 * 10.0 + 0.2 - 3.0)


def test_background_profiler_measures_without_blocking_submit(lab, tmp_path):
    space, pool = lab["space"], lab["pool"]
    rng = random.Random(3)
    archs = [space.sample(rng) for _ in range(30)]
    wanted = {u.signature for a in archs for u in units_of(a, space, CLASSES, SIZE)}
    inside, release = threading.Event(), threading.Event()

    def held_exporter(unit, flavor):
        inside.set()
        release.wait(60)  # the worker stays inside its first export until the test lets it go
        return export_bytes(unit, flavor)

    with LatencyTable(tmp_path / "bg.sqlite") as table:
        profiler = BackgroundProfiler(pool, table, space, SIZE, CLASSES, mode="continuous", policy=lenient_policy(),
                                      exporter=held_exporter)
        with profiler:
            profiler(0, archs[0])  # the step-hook form
            assert inside.wait(60)
            # The worker is busy: every later step's submit must still return at once.
            submitting = threading.Thread(target=lambda: [profiler(step, a) for step, a in enumerate(archs[1:], 1)])
            submitting.start()
            submitting.join(30)
            blocked = submitting.is_alive()
            release.set()
            assert not blocked, "submit waited for the worker"
            assert profiler.stats.submitted == len(archs)
            assert profiler.flush(timeout=120)
            stats = profiler.stats
        assert stats.submitted == 30 and stats.failed == 0 and stats.dropped == 0
        assert stats.units_seen == len(wanted) == stats.measured
        key = target_key(pool)
        assert {e.signature for e in table.entries(key.fingerprint)} == wanted
    # Deferred mode collects but measures only on flush; known units are not measured again.
    distinct = len(set(units_of(archs[0], space, CLASSES, SIZE)))
    with LatencyTable(tmp_path / "bg2.sqlite") as table:
        deferred = BackgroundProfiler(pool, table, space, SIZE, CLASSES, mode="deferred", policy=lenient_policy())
        deferred.submit(archs[0])
        deferred.submit(archs[0])
        deadline = time.monotonic() + 30
        while deferred.backlog() < distinct and time.monotonic() < deadline:  # a loaded host expands slowly
            time.sleep(0.02)
        # Expanded into units at once (the backlog the progress line shows), measured only on flush.
        assert deferred.stats.measured == 0 and deferred.backlog() == distinct
        assert deferred.flush(timeout=60)
        assert deferred.stats.measured == distinct
        deferred.submit(archs[0])
        assert deferred.flush(timeout=60)
        deferred.close()
        assert deferred.stats.measured == distinct and deferred.stats.units_seen == distinct
        assert not deferred._thread.is_alive()


def test_deferred_profiler_exports_ahead_and_times_only_on_flush(lab, tmp_path, monkeypatch):
    """Deferred mode exports the units it collects while training would run (nothing timed
    yet), each once, so the flush finds every export in the caches. (The exports ahead run at
    normal priority here: at the lowest, a loaded test host would starve them.)"""
    from autonad_edge.latency import export_pool, profiler as profiler_module

    space, pool = lab["space"], lab["pool"]
    rng = random.Random(5)
    archs = [space.sample(rng) for _ in range(4)]
    units = {u.signature: u for a in archs for u in units_of(a, space, CLASSES, SIZE)}
    handed: list[str] = []

    def ahead(todo, flavor):
        handed.extend(u.signature for u in todo)
        return sum(isinstance(b, bytes) for b in export_pool.export_units(todo, flavor))

    monkeypatch.setenv("AUTONAD_EXPORT_WORKERS", "0")  # the exports in this process
    monkeypatch.setattr(export_pool, "ahead_available", lambda: True)
    monkeypatch.setattr(export_pool, "export_ahead", ahead)
    monkeypatch.setattr(profiler_module, "EXPORT_CACHE", profiler_module._ExportCache())
    session_cache = profiler_module.disk_export_cache()
    profiler_module.use_export_cache(tmp_path / "exports")  # empty: every unit must be exported
    try:
        with LatencyTable(tmp_path / "ahead.sqlite") as table, \
                BackgroundProfiler(pool, table, space, SIZE, CLASSES, mode="deferred", policy=lenient_policy()) as bg:
            for arch in archs:
                bg.submit(arch)
            deadline = time.monotonic() + 120
            while bg.stats.exported_ahead < len(units) and time.monotonic() < deadline:
                time.sleep(0.05)
            stats = bg.stats
            assert stats.exported_ahead == len(units) and stats.measured == 0
            assert sorted(handed) == sorted(units)  # each unit handed once
            assert all(profiler_module.cached_export(u, "portable") is not None for u in units.values())
            assert bg.flush(timeout=120)
            bg.submit(archs[0])  # known now: nothing more to export or time
            assert bg.flush(timeout=60)
            assert bg.stats.measured == len(units) and sorted(handed) == sorted(units)
            assert f"{len(units)} exported ahead of it" in bg.stats.summary()
            key = target_key(pool)
            assert {e.signature for e in table.entries(key.fingerprint)} == set(units)
    finally:
        profiler_module.use_export_cache(session_cache.root if session_cache is not None else None)


def test_exports_ahead_in_the_worker_processes_fill_the_caches(tmp_path, monkeypatch):
    """`export_pool.export_ahead` itself, in two worker processes (at normal priority: a loaded
    test host would starve the lowest), each unit once; a second call finds them all cached."""
    from autonad_edge.latency import export_pool, profiler as profiler_module

    space = micro_space()
    todo = space_units(space, CLASSES, 24)[:6]  # a size no other test exports
    monkeypatch.setenv("AUTONAD_EXPORT_WORKERS", "2")
    monkeypatch.setattr(export_pool, "_disabled", False)
    monkeypatch.setattr(profiler_module, "EXPORT_CACHE", profiler_module._ExportCache())
    session_cache = profiler_module.disk_export_cache()
    profiler_module.use_export_cache(tmp_path / "exports")
    try:
        assert export_pool.export_ahead(todo, "portable", idle=False) == len(todo)
        assert export_pool.export_ahead(todo, "portable", idle=False) == 0
        cached = [profiler_module.cached_export(u, "portable") for u in todo]
        # The same bytes as single exports in this process, with empty caches.
        profiler_module.EXPORT_CACHE.clear()
        profiler_module.use_export_cache(None)
        assert cached == [export_bytes(u, "portable") for u in todo]
    finally:
        export_pool.shutdown()
        profiler_module.use_export_cache(session_cache.root if session_cache is not None else None)


def test_a_long_round_of_exports_ahead_holds_up_neither_the_backlog_nor_the_flush(lab, tmp_path, monkeypatch):
    """At the lowest priority a round of exports ahead can last a whole epoch: the worker went
    on counting new architectures' units only after it (the progress line showed 32 blocks
    left of 95), and a flush must wait for the round, not export its units a second time."""
    from autonad_edge.latency import export_pool

    space, pool = lab["space"], lab["pool"]
    rng = random.Random(11)
    first = space.sample(rng)
    later = next(a for a in (space.sample(rng) for _ in range(100))
                 if {u.signature for u in units_of(a, space, CLASSES, SIZE)}
                 - {u.signature for u in units_of(first, space, CLASSES, SIZE)})
    entered, release, rounds = threading.Event(), threading.Event(), []

    def slow_round(units, flavor):
        rounds.append([u.signature for u in units])
        entered.set()
        release.wait(60)
        return 0  # exported nothing: the flush exports every unit itself

    monkeypatch.setattr(export_pool, "ahead_available", lambda: True)
    monkeypatch.setattr(export_pool, "export_ahead", slow_round)
    wanted = {u.signature for a in (first, later) for u in units_of(a, space, CLASSES, SIZE)}
    with LatencyTable(tmp_path / "slow.sqlite") as table:
        bg = BackgroundProfiler(pool, table, space, SIZE, CLASSES, mode="deferred", policy=lenient_policy())
        bg.submit(first)
        assert entered.wait(60)
        bg.submit(later)
        deadline = time.monotonic() + 60
        while bg.backlog() < len(wanted) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert bg.backlog() == len(wanted)  # counted while the round is still in flight
        flushed = []
        flusher = threading.Thread(target=lambda: flushed.append(bg.flush(timeout=120)))
        flusher.start()
        deadline = time.monotonic() + 60
        while not bg.busy and time.monotonic() < deadline:  # the flush's batch has started
            time.sleep(0.01)
        assert bg.busy and bg.stats.measured == 0  # the flush waits for the round before it measures
        release.set()
        flusher.join(120)
        bg.close()
        assert flushed == [True] and bg.stats.measured == len(wanted) and bg.stats.exported_ahead == 0
        assert len(rounds) == 1  # no second round was started while one was in flight


def test_a_flush_stops_a_round_of_exports_ahead_that_gets_no_cpu(lab, tmp_path, monkeypatch, caplog):
    """While other work keeps every core busy, exports at the lowest priority make no progress:
    the flush waits for the round about as long as it would take at normal priority, then stops
    it and exports its units itself, instead of waiting for ever."""
    from autonad_edge.latency import background, export_pool

    space, pool = lab["space"], lab["pool"]
    arch = space.sample(random.Random(12))
    wanted = {u.signature for u in units_of(arch, space, CLASSES, SIZE)}
    stopped = threading.Event()

    def starved_round(units, flavor):
        stopped.wait(60)  # no progress until its workers are killed
        return 0

    def stop_idle_exports():
        stopped.set()
        return True

    monkeypatch.setattr(export_pool, "ahead_available", lambda: True)
    monkeypatch.setattr(export_pool, "export_ahead", starved_round)
    monkeypatch.setattr(export_pool, "stop_idle_exports", stop_idle_exports)
    monkeypatch.setattr(background, "AHEAD_WAIT_MIN_S", 0.5)
    monkeypatch.setattr(background, "AHEAD_WAIT_S_PER_UNIT", 0.0)
    with LatencyTable(tmp_path / "starved.sqlite") as table, \
            BackgroundProfiler(pool, table, space, SIZE, CLASSES, mode="deferred", policy=lenient_policy()) as bg:
        bg.submit(arch)
        deadline = time.monotonic() + 60
        while bg.backlog() < len(wanted) and time.monotonic() < deadline:
            time.sleep(0.05)
        with caplog.at_level("WARNING", logger=background.__name__):
            assert bg.flush(timeout=60)
        assert stopped.is_set() and bg.stats.measured == len(wanted) and bg.stats.exported_ahead == 0
        assert any("did not finish in time" in r.getMessage() for r in caplog.records)


def test_a_round_that_does_not_stop_is_left_behind_not_waited_for(lab, tmp_path, monkeypatch, caplog):
    """A stopped round whose thread does not end (by CPython's source, a pool's manager can
    hang on a worker killed mid-send) holds the flush only `AHEAD_STOP_S`, and no second round
    starts."""
    from autonad_edge.latency import background, export_pool

    space, pool = lab["space"], lab["pool"]
    arch = space.sample(random.Random(13))
    wanted = {u.signature for u in units_of(arch, space, CLASSES, SIZE)}
    release, rounds = threading.Event(), []

    def stuck_round(units, flavor):
        rounds.append(len(units))
        release.wait(60)  # ignores the stop
        return 0

    monkeypatch.setattr(export_pool, "ahead_available", lambda: True)
    monkeypatch.setattr(export_pool, "export_ahead", stuck_round)
    monkeypatch.setattr(export_pool, "stop_idle_exports", lambda: True)
    monkeypatch.setattr(background, "AHEAD_WAIT_MIN_S", 0.2)
    monkeypatch.setattr(background, "AHEAD_WAIT_S_PER_UNIT", 0.0)
    monkeypatch.setattr(background, "AHEAD_STOP_S", 0.5)
    try:
        with LatencyTable(tmp_path / "stuck.sqlite") as table, \
                BackgroundProfiler(pool, table, space, SIZE, CLASSES, mode="deferred", policy=lenient_policy()) as bg:
            bg.submit(arch)
            deadline = time.monotonic() + 60
            while not rounds and time.monotonic() < deadline:
                time.sleep(0.02)
            with caplog.at_level("WARNING", logger=background.__name__):
                assert bg.flush(timeout=60)
            assert bg.stats.measured == len(wanted) and len(rounds) == 1
            assert any("left behind" in r.getMessage() for r in caplog.records)
    finally:
        release.set()


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="per-thread nice values: Linux")
def test_only_the_continuous_profiler_works_below_trainings_priority(lab, tmp_path):
    """Continuous mode measures while training runs, so its thread is niced; deferred mode works
    while training waits, and export workers it starts would inherit a nice value for good."""
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    with LatencyTable(tmp_path / "nice.sqlite") as table:
        for mode, expected in (("continuous", max(own, 10)), ("deferred", own)):
            with BackgroundProfiler(lab["pool"], table, lab["space"], SIZE, CLASSES, mode=mode,
                                    policy=lenient_policy()) as bg:
                deadline = time.monotonic() + 10
                while os.getpriority(os.PRIO_PROCESS, bg._thread.native_id) != expected \
                        and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert os.getpriority(os.PRIO_PROCESS, bg._thread.native_id) == expected


def test_cli_profile_and_prior(lab, tmp_path):
    """`latency profile` finds nothing left to measure in the profiled table; `latency prior`
    writes the prior JSON and its heatmap."""
    import typer
    from typer.testing import CliRunner

    from autonad_edge.cli.latency_profile import register
    from autonad_edge.space import ChoicePrior

    group = typer.Typer()
    register(group)
    space_file = tmp_path / "space.json"
    space_file.write_text(lab["space"].to_json())
    common = ["--space", str(space_file), "--image-size", str(SIZE), "--num-classes", str(CLASSES),
              "--table", str(lab["path"])]
    runner = CliRunner()
    result = runner.invoke(group, ["profile", *common, "--quick"])
    assert result.exit_code == 0, result.output
    assert "0 measured" in result.output
    out, png = tmp_path / "prior.json", tmp_path / "prior.png"
    result = runner.invoke(group, ["prior", *common, "--out", str(out), "--plot", str(png), "--temperature", "0.3"])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    prior = ChoicePrior.from_dict(data)
    assert len(prior.ops) == 4 and set(prior.ops[0][0]) == {"conv", "mlp"}
    assert data["meta"]["temperature"] == 0.3 and data["meta"]["target"] == "local"
    assert png.read_bytes()[:4] == b"\x89PNG"
    # Offline: from the table alone, labelled with the given target name.
    result = runner.invoke(group, ["prior", *common, "--offline", "only", "--target", "bench-box",
                                   "--method", "fastest", "--samples", "50", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["meta"]["target"] == "bench-box"
    result = runner.invoke(group, ["prior", *common, "--offline", "ffff", "--out", str(out)])
    assert result.exit_code == 2 and "fingerprint" in result.output
    result = runner.invoke(group, ["prior", *common, "--out", str(out), "--method", "nope"])
    assert result.exit_code == 2 and "softmax or fastest" in result.output


def test_cli_estimate_with_the_min_statistic(lab, tmp_path):
    """`latency estimate --stat min` sums the units' minima (never more than their medians);
    an unknown statistic is a one-line error."""
    import typer
    from typer.testing import CliRunner

    from autonad_edge.cli.latency_profile import register

    group = typer.Typer()
    register(group)
    space_file = tmp_path / "space.json"
    space_file.write_text(lab["space"].to_json())
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(lab["space"].sample(random.Random(4)).to_json())
    common = [str(arch_file), "--space", str(space_file), "--image-size", str(SIZE), "--num-classes",
              str(CLASSES), "--table", str(lab["path"]), "--json"]
    runner = CliRunner()
    by_stat = {}
    for stat in ("median", "min"):
        result = runner.invoke(group, ["estimate", *common, "--stat", stat])
        assert result.exit_code == 0, result.output
        by_stat[stat] = json.loads(result.output)
    assert by_stat["min"]["statistic"] == "min"
    assert 0 < by_stat["min"]["sum_ms"] <= by_stat["median"]["sum_ms"]
    result = runner.invoke(group, ["estimate", *common, "--stat", "mode"])
    assert result.exit_code == 2 and "--stat 'mode': choose one of median, min, mean, p90" in result.output


def test_profiling_progress_is_plain_lines_on_stderr_off_a_terminal(lab, tmp_path, capsys):
    """`latency profile` and the pipeline drew a rich bar on stdout even into a log file (its
    last frame, cut off); off a terminal it is a plain line at every tenth of the units, on
    stderr."""
    with LatencyTable(tmp_path / "fresh.sqlite") as table:
        report = profile(lab["space"], lab["pool"], table, SIZE, CLASSES, policy=lenient_policy(), progress=True)
    out, err = capsys.readouterr()
    assert out == "" and report.measured > 0
    lines = err.splitlines()
    assert lines and lines[-1].startswith(f"profiling {report.measured}/{report.measured} blocks: ")
    assert all(line.startswith("profiling ") for line in lines) and len(lines) <= 11, lines
