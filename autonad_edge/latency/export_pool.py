"""Unit exports in worker processes, off the training process's critical path.

An export is a second of pure-Python work (torch.export, the ONNX translation). In the
training process it holds the GIL against the training loop and, run from a low-priority
thread on a busy host, it starved (10 s instead of 0.4 s per unit, measured); exports in worker
processes run at their own pace, several at once when the cores are free (between epochs, with
a local agent, training waits for them anyway)::

    data = export_units(units, "portable")     # list of bytes (or the exception), in order

Hits in the in-memory and on-disk caches (`profiler.EXPORT_CACHE`, `export_cache`) are served
here without a worker. The pool is created on first use and lives for the process;
``AUTONAD_EXPORT_WORKERS`` sets its size (default: the CPU count, at most 4; 0 exports in
this process). Workers start with the spawn method (a fork of a process with live torch
threads is unsafe) and one torch thread each.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from autonad_edge.latency.blocks import Unit

log = logging.getLogger(__name__)

ENV_VAR = "AUTONAD_EXPORT_WORKERS"
MAX_DEFAULT_WORKERS = 4

_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def worker_count() -> int:
    value = os.environ.get(ENV_VAR)
    if value is not None and value.strip():
        try:
            return max(0, int(value))
        except ValueError:
            raise ValueError(f"{ENV_VAR} must be a whole number of processes, got {value!r}") from None
    return min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _export_in_worker(unit: "Unit", flavor: str) -> bytes:
    from autonad_edge.latency.profiler import export_bytes

    return export_bytes(unit, flavor)


def _get_pool(workers: int) -> ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_init_worker)
        return _pool


def shutdown() -> None:
    """Stop the worker processes (a later export starts new ones)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


atexit.register(shutdown)


def export_units(units: Sequence["Unit"], flavor: str, workers: int | None = None) -> list[bytes | BaseException]:
    """Each unit's ONNX bytes (or the exception its export raised), in order. Cached units
    come from the caches; two or more misses go to the worker pool (if `workers`, default
    `worker_count()`, is 2 or more), else they are exported here."""
    from autonad_edge.latency.profiler import cached_export, export_bytes, remember_export

    results: list[bytes | BaseException | None] = [cached_export(u, flavor) for u in units]
    todo = [i for i, r in enumerate(results) if r is None]
    workers = worker_count() if workers is None else workers
    if len(todo) >= 2 and workers >= 2:
        try:
            pool = _get_pool(workers)
            futures = {i: pool.submit(_export_in_worker, units[i], flavor) for i in todo}
            for i, future in futures.items():
                try:
                    data = future.result()
                except BrokenProcessPool:
                    raise
                except Exception as exc:  # one unit that does not export must not stop the others
                    results[i] = exc
                else:
                    remember_export(units[i], flavor, data)
                    results[i] = data
            todo = []
        except (BrokenProcessPool, OSError, RuntimeError) as exc:
            # No workers (a sandbox without process spawning, a killed worker): export here.
            log.warning("export workers unavailable (%s); exporting in this process", exc)
            shutdown()
            todo = [i for i, r in enumerate(results) if r is None]
    for i in todo:
        try:
            results[i] = export_bytes(units[i], flavor)
        except Exception as exc:
            results[i] = exc
    return results  # type: ignore[return-value]


__all__ = ["ENV_VAR", "export_units", "shutdown", "worker_count"]
