"""The persistent export cache, the export workers and the ETA line."""

import os
import subprocess
from pathlib import Path

import pytest
import torch

from autonad_edge.latency import export_cache as ec
from autonad_edge.latency import profiler
from autonad_edge.latency.blocks import edge_unit, units_of
from autonad_edge.latency.export_cache import ExportCache, export_key
from autonad_edge.latency.export_pool import export_units
from autonad_edge.space import SearchSpace
from autonad_edge.training.progress import format_eta


def units(n: int):
    # Small, distinct, quick to export.
    return [edge_unit("conv1x1", 8, 8 + 4 * i, (8, 8)) for i in range(n)]


def test_hit_returns_the_bytes_put_and_a_missing_key_misses(tmp_path):
    cache = ExportCache(tmp_path)
    cache.put("ab" * 32, b"onnx bytes")
    assert cache.get("ab" * 32) == b"onnx bytes"
    assert cache.get("cd" * 32) is None
    assert (cache.hits, cache.misses) == (1, 1)


def test_a_corrupt_entry_is_detected_removed_and_missed(tmp_path):
    cache = ExportCache(tmp_path)
    key = "ef" * 32
    cache.put(key, b"x" * 100)
    path = cache.path(key)
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF  # one flipped bit in the payload
    path.write_bytes(bytes(blob))
    assert cache.get(key) is None and cache.corrupt == 1 and not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"truncated")
    assert cache.get(key) is None and cache.corrupt == 2


def test_eviction_keeps_the_bound_and_drops_the_least_recently_used(tmp_path):
    cache = ExportCache(tmp_path, max_bytes=5_000)
    keys = [f"{i:064x}" for i in range(8)]
    for i, key in enumerate(keys):
        cache.put(key, bytes(900))
        os.utime(cache.path(key), (1000 + i, 1000 + i))  # distinct ages, oldest first
        if i == 3:
            cache.get(keys[0])  # a hit makes the oldest the newest
    assert cache.size_bytes() <= 5_000
    assert cache.get(keys[0]) is not None and cache.get(keys[-1]) is not None
    assert cache.get(keys[1]) is None  # the least recently used went first


def test_writers_sharing_a_cache_keep_its_bound_together(tmp_path):
    """The run and its export workers write to one directory: each counted the size once, at
    its first write, and then its own writes alone, so together they grew it to a multiple of
    the bound. A writer now recounts every RECOUNT_EVERY writes."""
    from autonad_edge.latency.export_cache import RECOUNT_EVERY

    run, worker = ExportCache(tmp_path, max_bytes=20_000), ExportCache(tmp_path, max_bytes=20_000)
    keys = iter(f"{i:064x}" for i in range(1000))
    run.put(next(keys), bytes(900))
    for _ in range(20):  # the worker fills the cache to its bound
        worker.put(next(keys), bytes(900))
    for _ in range(RECOUNT_EVERY - 1):  # the run's count still says 1 entry
        run.put(next(keys), bytes(900))
    assert run.size_bytes() <= 20_000


def test_a_cache_it_may_not_delete_from_costs_a_miss_not_an_error(tmp_path, monkeypatch):
    """A shared, read-only cache directory: removing a corrupt entry or evicting one fails, and
    used to escape `get` and `put` (a unit whose export succeeded was then reported failed)."""
    cache = ExportCache(tmp_path, max_bytes=2_000)
    key = "ab" * 32
    cache.put(key, bytes(900))
    cache.path(key).write_bytes(b"torn")

    def refuse(self, missing_ok=False):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "unlink", refuse)
    assert cache.get(key) is None and cache.corrupt == 1
    for i in range(4):  # over the bound: eviction runs and cannot delete
        cache.put(f"{i:064x}", bytes(900))


def test_eviction_removes_the_temp_files_of_killed_writers(tmp_path):
    """A writer killed mid-write leaves `.<key>.onnxc.*.tmp`, which no entry listing counted and
    nothing removed; eviction removes those older than an hour and leaves a fresh one (a write
    in progress) alone."""
    cache = ExportCache(tmp_path, max_bytes=2_000)
    shard = tmp_path / "ab"
    shard.mkdir()
    old, fresh = shard / ".abcd.onnxc.x1.tmp", shard / ".abce.onnxc.x2.tmp"
    old.write_bytes(bytes(10_000))
    fresh.write_bytes(bytes(10))
    os.utime(old, (1000, 1000))
    for i in range(4):
        cache.put(f"{i:064x}", bytes(900))  # over the bound: eviction runs
    assert not old.exists() and fresh.exists()


def _torch_upgraded(monkeypatch):
    import torch

    monkeypatch.setattr(torch, "__version__", "9.9.9")


def _plugin_upgraded(monkeypatch):
    # A tensorrt-flavour export names the plugin's version in its nodes: an export cached under
    # the old version would not load on an agent built with the new one.
    import dataclasses

    import autonad_agent.plugin_identity as identity

    monkeypatch.setattr(identity, "SPATIAL_SHIFT_PLUGIN", dataclasses.replace(identity.SPATIAL_SHIFT_PLUGIN, version="2"))


@pytest.mark.parametrize("change", [_torch_upgraded, _plugin_upgraded], ids=["torch", "plugin"])
def test_a_version_change_misses(monkeypatch, change):
    before = {flavor: export_key("sig", flavor) for flavor in ("portable", "tensorrt")}
    assert before["portable"] != before["tensorrt"]
    ec.exporter_fingerprint.cache_clear()
    change(monkeypatch)
    try:
        assert all(export_key("sig", flavor) != key for flavor, key in before.items())
    finally:
        monkeypatch.undo()
        ec.exporter_fingerprint.cache_clear()
    assert {flavor: export_key("sig", flavor) for flavor in before} == before


def test_workers_export_the_same_bytes_and_a_second_run_exports_nothing(tmp_path):
    profiler.use_export_cache(tmp_path / "cache")
    try:
        todo = units(3)
        here = [profiler.export_bytes(u, "portable") for u in todo[:1]]
        profiler.EXPORT_CACHE.clear()
        profiler.disk_export_cache().clear()
        first = export_units(todo, "portable", workers=2)  # in two worker processes
        assert all(isinstance(b, bytes) for b in first) and first[0] == here[0]
        files = profiler.disk_export_cache().entries()
        assert len(files) == 3  # written by the workers
        # A new process (or another target) finds every export on disk: nothing is exported.
        profiler.EXPORT_CACHE.clear()
        cache = profiler.disk_export_cache()
        hits = cache.hits
        second = export_units(todo, "portable", workers=2)
        assert second == first and cache.hits - hits == 3
        assert profiler.disk_export_cache().entries() == files
    finally:
        profiler.use_export_cache(os.environ.get("AUTONAD_SESSION_EXPORT_CACHE", "off"))


def test_a_unit_that_cannot_export_is_reported_not_raised():
    bad = edge_unit("conv1x1", 8, 8, (8, 8))
    object.__setattr__(bad, "kind", "pool_fuse")  # a PPM fuse without its parameters cannot be built
    profiler.EXPORT_CACHE.clear()
    result = export_units([bad], "portable", workers=0)
    assert isinstance(result[0], Exception)


@pytest.mark.parametrize("eta,blocks,text", [
    (190.0, 40, "epochs ETA 3:10, blocks left 40"),
    (3725.0, 0, "epochs ETA 1:02:05"),
    (5.0, None, "epochs ETA 0:05"),
    (float("inf"), 3, "epochs ETA ?, blocks left 3"),
])
def test_eta_line_keeps_epochs_and_block_backlog_apart(eta, blocks, text):
    assert format_eta(eta, blocks) == text


def test_units_exported_together_are_the_bytes_each_exports_alone_and_run_like_the_module():
    import numpy as np
    import onnxruntime as ort

    from autonad_edge.export.onnx_export import export_unit, export_units_together

    # An embedding, a block's two steps and another operator's mixer: the kinds a search times most.
    space = SearchSpace.tiny()
    arch = space.largest(op="transformer")
    todo = [u for u in units_of(arch, space, image_size=32, num_classes=3) if not u.kind.startswith("pool_")][:3]
    todo += [u for u in units_of(space.smallest(op="mlp"), space, image_size=32, num_classes=3) if u.kind == "mixer"][:1]
    built = []
    for u in todo:
        torch.manual_seed(profiler._seed_for(u))
        built.append(u.build().eval())
    together = export_units_together(todo, "portable", built)
    for unit, module, model in zip(todo, built, together):
        assert model.SerializeToString() == export_unit(unit, module=module).SerializeToString()
        assert [o.name for o in model.graph.output] == ["output"]
        inputs = unit.example_inputs()
        with torch.no_grad():
            expected = module(*inputs)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        got = session.run(None, {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)})
        np.testing.assert_allclose(got[0], expected.numpy(), atol=1e-4)


def test_a_bundle_with_a_unit_that_cannot_export_still_exports_the_others():
    profiler.EXPORT_CACHE.clear()
    good = units(2)
    bad = edge_unit("conv1x1", 8, 8, (8, 8))
    object.__setattr__(bad, "kind", "pool_fuse")
    result = profiler.export_bundle_bytes([good[0], bad, good[1]], "portable")
    assert isinstance(result[1], Exception)
    assert result[0] == profiler.export_bytes(good[0], "portable") and isinstance(result[2], bytes)


@pytest.mark.parametrize("count,workers,sizes", [
    (0, 2, []), (3, 2, [2, 1]), (5, 1, [5]), (40, 2, [14, 13, 13]), (1, 4, [1]),
])
def test_export_bundles_cover_every_unit_once_in_order(count, workers, sizes):
    from autonad_edge.latency.export_pool import BUNDLE_SIZE, _bundles

    bundles = _bundles(list(range(count)), workers)
    assert [len(b) for b in bundles] == sizes
    assert [i for b in bundles for i in b] == list(range(count))
    assert all(len(b) <= BUNDLE_SIZE for b in bundles)


def _running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (an orphan's exit is reaped by init, or not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc")
def test_export_workers_exit_when_the_run_that_started_them_is_killed(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "run.py"
    script.write_text(
        "import os, signal\n"
        "from autonad_edge.latency import export_pool\n"
        "if __name__ == '__main__':\n"
        "    assert export_pool.start(workers=2) == 2\n"
        "    pids = ' '.join(str(pid) for pid in export_pool._pool._processes)\n"
        f"    open({str(tmp_path / 'pids')!r}, 'w').write(pids)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)  # no atexit, no shutdown: as `kill -9` or a crash\n"
    )
    # No pipes: a worker that outlived the run would hold them open.
    proc = subprocess.run([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL
    workers = [int(p) for p in (tmp_path / "pids").read_text().split()]
    assert len(set(workers)) == 2
    deadline = time.monotonic() + 30
    while any(_running(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = [p for p in workers if _running(p)]
    for pid in alive:  # leave no stray process behind a failure
        os.kill(pid, signal.SIGKILL)
    assert not alive


def test_a_process_that_never_closed_its_exports_does_not_wait_for_idle_ones_at_exit(tmp_path):
    """concurrent.futures' exit hook joins the pool's manager thread, which waits for every
    queued call: idle exports that never finish on a busy host held the process at exit (the
    pool's own atexit hook ran after it). The pool now shuts down first and kills them."""
    import subprocess
    import sys

    marker = tmp_path / "busy"
    sleeper = tmp_path / "sleeper.py"  # what an idle export that never finishes does
    sleeper.write_text("import sys, time\nopen(sys.argv[1], 'w').close()\ntime.sleep(300)\n")
    script = tmp_path / "run.py"
    script.write_text(
        "import os, subprocess, threading, time\n"
        "from autonad_edge.latency import export_pool\n"
        "if __name__ == '__main__':\n"
        "    os.environ['AUTONAD_EXPORT_WORKERS'] = '2'\n"
        f"    call = (subprocess.run, ([{sys.executable!r}, {str(sleeper)!r}, {str(marker)!r}],))\n"
        "    threading.Thread(target=export_pool._run, args=([call, call], 2), kwargs={'idle': True},\n"
        "                     daemon=True).start()\n"
        f"    while not os.path.exists({str(marker)!r}):\n"
        "        time.sleep(0.05)\n"
        "    # the end of the script: no shutdown, no close\n"
    )
    # No pipes: a worker that outlived the run would hold them open. Hangs end in TimeoutExpired.
    try:
        proc = subprocess.run([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=120)
    finally:
        subprocess.run(["pkill", "-f", str(sleeper)])  # the killed workers' sleepers
    assert proc.returncode == 0


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="a Linux scheduling policy")
def test_work_ahead_runs_at_the_lowest_priority_and_hands_back_its_errors():
    import threading

    from autonad_edge.latency.export_pool import _at_lowest_priority

    def priority():
        tid = threading.get_native_id()
        return os.sched_getscheduler(tid), os.getpriority(os.PRIO_PROCESS, tid)

    policy, nice = _at_lowest_priority(priority)
    assert policy == os.SCHED_IDLE or nice == 19  # nice 19 where SCHED_IDLE is refused (a sandbox)
    assert priority() != (policy, nice)  # the caller keeps its own

    def fails():
        raise ValueError("no such unit")

    with pytest.raises(ValueError, match="no such unit"):
        _at_lowest_priority(fails)


def test_stopping_idle_work_kills_its_workers_and_the_next_export_gets_new_ones(monkeypatch, tmp_path):
    """`stop_idle_exports` ends work at the lowest priority that would never finish on a busy
    host: its caller gets errors at once, normal calls queued behind it run again in a new pool,
    and the pool is not given up."""
    import threading
    import time

    from autonad_edge.latency import export_pool

    monkeypatch.setenv("AUTONAD_EXPORT_WORKERS", "2")
    monkeypatch.setattr(export_pool, "_disabled", False)
    export_pool.shutdown()
    assert not export_pool.stop_idle_exports()  # nothing running
    try:
        old_pids = set(export_pool._run([(os.getpid, ()), (os.getpid, ())], 2))
        idle_results, queued_results = [], []
        markers = [tmp_path / f"busy{i}" for i in range(2)]
        # Each idle call marks that it runs, then blocks its worker (on a shell that holds none
        # of its descriptors: an inherited one would keep the dead worker looking alive).
        idle = threading.Thread(target=lambda: idle_results.extend(
            export_pool._run([(subprocess.run, (["sh", "-c", f"touch {m}; exec sleep 60"],)) for m in markers], 2,
                             idle=True)))
        idle.start()
        deadline = time.monotonic() + 60
        while not all(m.exists() for m in markers):  # both workers taken
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # Normal calls behind the idle ones: cancelled or lost by the stop.
        queued = threading.Thread(target=lambda: queued_results.extend(
            export_pool._run([(os.getpid, ()), (os.getpid, ())], 2)))
        queued.start()
        time.sleep(0.3)  # they are queued (if not yet, they go to the new pool: the same outcome)
        assert export_pool.stop_idle_exports()
        idle.join(60)
        queued.join(60)
        assert not idle.is_alive() and not queued.is_alive()
        assert len(idle_results) == 2 and all(isinstance(r, RuntimeError) for r in idle_results)
        assert not export_pool._disabled
        new_pids = set(export_pool._run([(os.getpid, ()), (os.getpid, ())], 2))
        assert new_pids and not new_pids & old_pids and os.getpid() not in new_pids
        assert len(queued_results) == 2 and not set(queued_results) & (old_pids | {os.getpid()})
    finally:
        export_pool.shutdown()


def test_exporting_ahead_without_workers_leaves_the_work_to_its_time(monkeypatch):
    """In the training process an export would hold the GIL against training: without worker
    processes nothing is exported ahead."""
    from autonad_edge.latency.export_pool import export_ahead

    monkeypatch.setenv("AUTONAD_EXPORT_WORKERS", "0")
    profiler.EXPORT_CACHE.clear()
    todo = [edge_unit("conv1x1", 8, 8, (6, 10))]
    assert profiler.cached_export(todo[0], "portable") is None
    assert export_ahead(todo, "portable") == 0
    assert profiler.cached_export(todo[0], "portable") is None
