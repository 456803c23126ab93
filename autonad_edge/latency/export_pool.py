"""Unit exports in worker processes, off the training process's critical path.

An export is a second of pure-Python work (torch.export, the ONNX translation). In the
training process it holds the GIL against the training loop and, run from a low-priority
thread on a busy host, it starved (10 s instead of 0.4 s per unit, measured); exports in worker
processes run at their own pace, several at once when the cores are free (between epochs, with
a local agent, training waits for them anyway)::

    data = export_units(units, "portable")     # list of bytes (or the exception), in order

The units missing from the caches go out in bundles (`BUNDLE_SIZE`, at least one per worker),
each exported by one joint torch.export call and cut back into per-unit models identical to
single exports (`onnx_export.export_units_together`). Hits in the in-memory and on-disk caches
(`profiler.EXPORT_CACHE`, `export_cache`) are served here without a worker. The pool is created on first use and lives for the process;
``AUTONAD_EXPORT_WORKERS`` sets its size (default: the CPU count, at most 4; 0 exports in
this process). Workers start with the spawn method (a fork of a process with live torch
threads is unsafe) and one torch thread each. Exports ahead of need (`export_ahead`) run in
the same workers at the lowest CPU priority; `stop_idle_exports` ends them by killing those
workers when they cannot finish (other work keeping every core busy), and the next export
starts new ones.
"""

from __future__ import annotations

import atexit
import logging
import math
import multiprocessing
import os
import threading
import weakref
from concurrent.futures import CancelledError, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    from autonad_edge.latency.blocks import Unit
    from autonad_edge.space import Arch, SearchSpace

log = logging.getLogger(__name__)

ENV_VAR = "AUTONAD_EXPORT_WORKERS"
MAX_DEFAULT_WORKERS = 4
# Units per export call (`onnx_export.export_units_together`): enough to share a call's fixed
# cost; a larger bundle mostly delays its first result (timing waits for the whole bundle).
BUNDLE_SIZE = 16

_pool: ProcessPoolExecutor | None = None
_warming: list = []  # the warm-up futures of the current pool
_disabled = False  # workers failed to start once: export in this process from then on
_pool_lock = threading.Lock()
# Under _pool_lock: calls at the lowest priority running, by pool; pools whose workers were
# killed on purpose, with their worker processes (a worker started while one was killed is
# killed at the next stop).
_idle_calls: "weakref.WeakKeyDictionary[ProcessPoolExecutor, int]" = weakref.WeakKeyDictionary()
_stopped: "weakref.WeakKeyDictionary[ProcessPoolExecutor, dict]" = weakref.WeakKeyDictionary()


def worker_count() -> int:
    value = os.environ.get(ENV_VAR)
    if value is not None and value.strip():
        try:
            return max(0, int(value))
        except ValueError:
            raise ValueError(f"{ENV_VAR} must be a whole number of processes, got {value!r}") from None
    return min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1)


def _exit_with_parent() -> None:
    """Block until the process that started this worker is gone, then exit. A worker waits
    for work on a queue whose write end it holds itself, so it never sees the parent go: a
    killed run (SIGKILL, or SIGTERM to it alone) left its workers alive for good."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        parent.join()
        os._exit(0)


def _init_worker() -> None:
    import warnings

    threading.Thread(target=_exit_with_parent, name="exit-with-parent", daemon=True).start()
    import torch

    torch.set_num_threads(1)
    # The exporter's notices (e.g. "torchvision is not installed") are not the user's business.
    warnings.simplefilter("ignore")
    for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript", "torch._dynamo"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _lowest_priority() -> bool:
    """Put the calling thread at the scheduler's lowest priority (Linux: ``SCHED_IDLE``, which
    runs only on a core nothing else wants; where that is refused, nice 19). A thread can
    always lower its own priority; it cannot raise it back without privilege, so only a thread
    made for the purpose calls this. False if neither worked."""
    tid = threading.get_native_id()  # on Linux a thread's id is what these calls take for a pid
    try:
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        return True
    except (AttributeError, OSError):
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, tid, 19)
        return os.getpriority(os.PRIO_PROCESS, tid) == 19
    except (AttributeError, OSError):
        return False


def idle_exports_possible() -> bool:
    """Whether this platform can run exports at a priority below training's (Linux)."""
    return hasattr(os, "SCHED_IDLE")


def _at_lowest_priority(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` on a new thread of this process at the lowest priority; its result, or its
    exception raised here. The worker's one torch thread computes on the calling thread, so the
    whole export runs at that priority. Raises OSError, without calling `fn`, where the
    priority cannot be lowered: work ahead at normal priority would slow training."""
    outcome: list[Any] = []

    def run() -> None:
        if not _lowest_priority():
            outcome.append((False, OSError("cannot lower this thread's CPU priority")))
            return
        try:
            outcome.append((True, fn(*args)))
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            outcome.append((False, exc))

    # A daemon: a worker interrupted while it waits here must not be kept alive by the export.
    thread = threading.Thread(target=run, name="export-idle", daemon=True)
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def _export_in_worker(units: Sequence["Unit"], flavor: str, idle: bool = False) -> list[bytes | BaseException]:
    from autonad_edge.latency.profiler import export_bundle_bytes

    if idle:
        return _at_lowest_priority(export_bundle_bytes, units, flavor)
    return export_bundle_bytes(units, flavor)


def _warm_worker(flavor: str) -> int:
    """One tiny export: the exporter's one-off costs (imports, op registry, torch.export's
    first call: several seconds) are paid here, not by the first real unit."""
    from autonad_edge.export.onnx_export import export_unit
    from autonad_edge.latency.blocks import edge_unit

    export_unit(edge_unit("conv1x1", 4, 4, (4, 4)), flavor=flavor)
    return os.getpid()


def start(flavor: str = "portable", workers: int | None = None, wait: bool = True) -> int:
    """Start the worker processes and warm them up (`_warm_worker`), once per pool; with
    `wait`, until they are ready. Returns the pool's size (0: exports run in this process)."""
    workers = worker_count() if workers is None else workers
    if workers < 2 or _disabled:
        return 0
    pool = None
    try:
        pool = _get_pool(workers)
        with _pool_lock:
            if not _warming:
                _warming.extend(pool.submit(_warm_worker, flavor) for _ in range(workers))
            futures = list(_warming)
        if wait:
            for future in futures:
                future.result()
    except (BrokenProcessPool, CancelledError, OSError, RuntimeError) as exc:
        if pool is None or pool not in _stopped:  # workers killed on purpose start again on demand
            _give_up(exc)
        return 0
    return workers


def _give_up(exc: BaseException) -> None:
    global _disabled
    if not _disabled:
        log.warning("export workers unavailable (%s); exports run in this process", " ".join(str(exc).split())[:200])
    _disabled = True
    shutdown()


def _get_pool(workers: int) -> ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_init_worker)
        return _pool


def shutdown() -> None:
    """Stop the worker processes (a later export starts new ones). Work at the lowest priority
    still running is stopped, not waited for (`stop_idle_exports`)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
        _warming.clear()
        idle = pool is not None and _idle_calls.get(pool, 0) > 0
    if pool is not None:
        if idle:
            _kill(pool)
        else:
            pool.shutdown(wait=True, cancel_futures=True)


def stop_idle_exports() -> bool:
    """Stop the exports running at the lowest priority, by killing the workers that run them (a
    later export starts new ones; their callers get RuntimeErrors, and the pool is not given
    up). For a flush that cannot wait: while other work keeps every core busy, a `SCHED_IDLE`
    export makes no progress at all (a weight of 3 against 1024), it holds the worker that
    normal exports would queue behind, and its priority cannot be raised back without
    privilege. False if none was running."""
    global _pool
    with _pool_lock:
        pools = [pool for pool, calls in _idle_calls.items() if calls > 0]
        if _pool is not None and _pool in pools:
            _pool = None
            _warming.clear()
    for pool in pools:
        _kill(pool)
    return bool(pools)


def _kill(pool: ProcessPoolExecutor) -> None:
    """Kill `pool`'s workers; its unfinished calls fail (`BrokenProcessPool`, `CancelledError`)."""
    with _pool_lock:
        # The executor's own table of its workers, which it fills as it starts them (private;
        # Python 3.14 has `kill_workers`); None once it is shut down.
        table = getattr(pool, "_processes", None)
        processes = _stopped.setdefault(pool, table if table is not None else {})
    pool.shutdown(wait=False, cancel_futures=True)  # no new calls, no new workers from here on
    for process in list(processes.values()):
        try:
            process.kill()
        except (ValueError, OSError, AttributeError):  # already reaped and closed
            pass


def _register_exit_hook() -> None:
    """Shut the pool down at exit before concurrent.futures' own exit hook runs: that one joins
    the pool's manager thread, which waits for every queued export, lowest-priority rounds
    included (a process that never closed its profiler would wait for them). Its hooks run
    in reverse order of registration, after atexit's would be too late; this one is
    registered after concurrent.futures.process was imported (above), so it runs first."""
    register = getattr(threading, "_register_atexit", None)  # CPython 3.9+; private but stable
    try:
        if register is not None:
            register(shutdown)
            return
    except RuntimeError:  # the interpreter is already shutting down
        return
    atexit.register(shutdown)


_register_exit_hook()


def _run(calls: list[tuple[Callable[..., Any], tuple]], workers: int | None, idle: bool = False) -> list[Any]:
    """Each call's result (or the exception it raised), in order: in the worker pool when there
    are two or more (or `idle`) and `workers` (default `worker_count()`) is 2 or more, else
    here. `idle` calls (work at the lowest priority) never run in this process: one the pool
    cannot run, or whose worker `stop_idle_exports` killed, gets a RuntimeError. Normal calls
    whose workers were killed so run again in a new pool."""
    results: list[Any] = [None] * len(calls)
    workers = worker_count() if workers is None else workers
    if (len(calls) >= 2 or idle) and workers >= 2:
        todo = list(range(len(calls)))
        for _attempt in range(2):
            if _disabled:
                break
            pool, error = None, None
            try:
                pool = _get_pool(workers)
                todo = _calls_in(pool, calls, todo, results, idle)
            except (BrokenProcessPool, OSError, RuntimeError) as exc:
                error = exc
            if not todo and error is None:
                return results  # type: ignore[return-value]
            if pool is not None and pool in _stopped:
                if idle:
                    break
                continue  # killed on purpose: a new pool
            # No workers (a sandbox without process spawning, a script without the
            # ``if __name__ == "__main__":`` guard spawn needs, a killed worker): export here.
            _give_up(error or BrokenProcessPool("an export worker died"))
            break
    if idle:
        return [RuntimeError("not exported: no export worker processes, or stopped") if r is None else r
                for r in results]
    for i, (fn, args) in enumerate(calls):
        if results[i] is None:
            try:
                results[i] = fn(*args)
            except Exception as exc:
                results[i] = exc
    return results  # type: ignore[return-value]


def _calls_in(pool: ProcessPoolExecutor, calls: list[tuple[Callable[..., Any], tuple]], indices: list[int],
              results: list[Any], idle: bool) -> list[int]:
    """Run the calls at `indices` in `pool`, each result (or the exception the call raised) into
    `results`; the indices of the calls the pool lost (a worker died or was killed, the call
    was cancelled by a stop) come back."""
    with _pool_lock:
        _idle_calls[pool] = _idle_calls.get(pool, 0) + int(idle)
    try:
        try:
            futures = [(i, pool.submit(calls[i][0], *calls[i][1])) for i in indices]
        except (BrokenProcessPool, OSError, RuntimeError):
            if pool in _stopped:
                return list(indices)
            raise
        lost = []
        for i, future in futures:
            try:
                results[i] = future.result()
            except (BrokenProcessPool, CancelledError):
                lost.append(i)
            except Exception as exc:  # one export that fails must not stop the others
                results[i] = exc
        return lost
    finally:
        with _pool_lock:
            _idle_calls[pool] -= int(idle)


def export_units(units: Sequence["Unit"], flavor: str, workers: int | None = None,
                 idle: bool = False) -> list[bytes | BaseException]:
    """Each unit's ONNX bytes (or the exception its export raised), in order; cached units
    come from the caches, the others are exported (`_run`). With `idle`, only in the workers
    and at the lowest CPU priority (`_at_lowest_priority`)."""
    from autonad_edge.latency.profiler import cached_export, remember_export

    results: list[bytes | BaseException | None] = [cached_export(u, flavor) for u in units]
    todo = [i for i, r in enumerate(results) if r is None]
    workers = worker_count() if workers is None else workers
    bundles = _bundles(todo, workers)
    done = _run([(_export_in_worker, ([units[i] for i in bundle], flavor, idle)) for bundle in bundles], workers,
                idle=idle)
    for bundle, out in zip(bundles, done):
        for i, data in zip(bundle, out if isinstance(out, list) else [out] * len(bundle)):
            if isinstance(data, bytes):
                remember_export(units[i], flavor, data)
            results[i] = data
    return results  # type: ignore[return-value]


def ahead_available() -> bool:
    """Whether `export_ahead` can work: two or more worker processes, started or startable,
    on a platform with a priority below training's."""
    return worker_count() >= 2 and not _disabled and idle_exports_possible()


def export_ahead(units: Sequence["Unit"], flavor: str, idle: bool = True) -> int:
    """Export `units` into the caches ahead of need, in the workers at the lowest CPU priority
    (`export_units(idle=True)`), so the work uses only cores nothing else wants, e.g. what
    training leaves idle; blocks until done. Returns the units exported. Without worker
    processes it does nothing: in this process an export would hold the GIL against training
    (and a low-priority thread holding it would stall the training thread behind it).
    `idle=False` exports as `export_units` does (normal priority)."""
    from autonad_edge.latency.profiler import cached_export

    if worker_count() < 2 or _disabled or (idle and not idle_exports_possible()):
        return 0
    todo = [u for u in units if cached_export(u, flavor) is None]
    return sum(isinstance(data, bytes) for data in export_units(todo, flavor, idle=idle))


def _bundles(indices: list[int], workers: int) -> list[list[int]]:
    """`indices` cut into contiguous bundles of at most `BUNDLE_SIZE`, at least one per worker
    while there are enough (every worker busy), of nearly equal sizes."""
    if not indices:
        return []
    count = max(min(max(workers, 1), len(indices)), math.ceil(len(indices) / BUNDLE_SIZE))
    size, extra = divmod(len(indices), count)
    bundles, start = [], 0
    for k in range(count):
        end = start + size + (k < extra)
        bundles.append(indices[start:end])
        start = end
    return bundles


def _network_in_worker(arch: "Arch", space: "SearchSpace", num_classes: int, image_size, flavor: str) -> bytes:
    from autonad_edge.export.onnx_export import export_arch
    from autonad_edge.latency.blocks import network_signature
    from autonad_edge.latency.export_cache import export_key
    from autonad_edge.latency.profiler import disk_export_cache

    cache = disk_export_cache()
    key = export_key(network_signature(arch, space, num_classes, image_size), flavor)
    data = cache.get(key) if cache is not None else None
    if data is None:
        data = export_arch(arch, space, num_classes, image_size, flavor).SerializeToString()
        if cache is not None:
            cache.put(key, data)
    return data


def export_networks(archs: Sequence["Arch"], space: "SearchSpace", num_classes: int, image_size, flavor: str,
                    workers: int | None = None) -> list[bytes | BaseException]:
    """Whole subnets' ONNX bytes (`onnx_export.export_arch`: deterministic, so cached on disk
    like units), in order; several at once in the workers."""
    return _run([(_network_in_worker, (arch, space, num_classes, image_size, flavor)) for arch in archs], workers)


__all__ = ["ENV_VAR", "ahead_available", "export_ahead", "export_networks", "export_units", "shutdown", "start",
           "stop_idle_exports", "worker_count"]
