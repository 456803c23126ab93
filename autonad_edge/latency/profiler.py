"""Profiling: measure every unit a search can hit on a target, into the latency table.

    with LatencyTable("runs/latency.sqlite") as table, open_target("local") as pool:
        report = profile(SearchSpace.tiny(), pool, table, image_size=320, num_classes=6)

Only units the table does not hold yet for the target's fingerprint (and backend/precision)
are exported and measured, so a second run measures nothing. Measurements are spread over the
target's agents by the `ClientPool`; only complete measurements reach the table (the pool
records them as they arrive, or this module does when the pool has no table of its own), and
a unit that fails (export error, agent rejection) is reported, never recorded.

Host export and device measurement overlap for remote targets. For a target whose agents run
on this machine (loopback addresses, e.g. `local`) they alternate instead: exporting on the
same cores while the agent times a model would inflate its numbers.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from autonad_edge.latency.blocks import Unit, dedup, space_units, units_of

if TYPE_CHECKING:
    from autonad_agent.measure import MeasurementPolicy
    from autonad_edge.latency.client import Measurement
    from autonad_edge.latency.export_cache import ExportCache
    from autonad_edge.latency.fingerprint import Fingerprint
    from autonad_edge.latency.pool import ClientPool
    from autonad_edge.latency.table import LatencyTable
    from autonad_edge.space import SearchSpace

log = logging.getLogger(__name__)

# Units exported ahead of the measurements: bounds memory and keeps the pool busy.
DEFAULT_CHUNK = 8


@dataclass(frozen=True)
class TargetKey:
    """What the pool's measurements are filed under in the table."""

    fingerprint: "Fingerprint"
    backend: str
    precision: str

    @property
    def flavor(self) -> str:
        """The export flavour this backend runs: the TensorRT plugin node, or portable ONNX."""
        return "tensorrt" if self.backend == "tensorrt" else "portable"

    def summary(self) -> str:
        return f"{self.fingerprint.summary()} / {self.backend} {self.precision}"


def target_key(pool: "ClientPool") -> TargetKey:
    """Fingerprint, backend and precision of `pool`'s measurements (asks the agents)."""
    infos = pool.device_info()
    backend = pool.backend or infos[0].default_backend
    return TargetKey(pool.fingerprint(), backend, pool.precision)


def is_loopback_pool(pool: "ClientPool") -> bool:
    """True when every agent of `pool` runs on this machine (shares its cores)."""
    from autonad_agent.server import is_loopback

    return all(is_loopback(c.address.rsplit(":", 1)[0]) for c in pool.clients)


def lenient_policy() -> "MeasurementPolicy":
    """A fast policy for tests and quick looks: a few warm-ups, a handful of timed runs.

    (The agent reads 0 as "its default", so the small durations are set to tiny values.)
    """
    from autonad_agent.measure import MeasurementPolicy

    return MeasurementPolicy(
        warmup_runs=3, warmup_ms=1e-3, min_runs=7, min_duration_ms=1e-3, max_runs=7, max_cv=10.0, max_repeats=1
    )


@dataclass
class ProfileReport:
    """What a profiling run did."""

    key: TargetKey
    considered: int = 0  # distinct units asked for
    known: int = 0  # already in the table for this fingerprint
    measured: int = 0
    unstable: int = 0  # measured but flagged noisy by the agent (recorded, flagged)
    failed: list[tuple[Unit, str]] = field(default_factory=list)
    export_s: float = 0.0
    seconds: float = 0.0

    def summary(self) -> str:
        text = (
            f"{self.considered} units: {self.known} already in the table, {self.measured} measured"
            f" ({self.unstable} flagged unstable), {len(self.failed)} failed in {self.seconds:.1f} s"
            f" (export {self.export_s:.1f} s)"
        )
        return text


def missing_units(units: Iterable[Unit], table: "LatencyTable", key: TargetKey) -> list[Unit]:
    """The distinct `units` the table has no entry for under `key` (never another device's)."""
    return [u for u in dedup(units) if table.get(key.fingerprint, key.backend, key.precision, u.signature) is None]


def _seed_for(unit: Unit) -> int:
    return int(unit.key[:8], 16)


class _ExportCache:
    """Recently exported units, by (signature, flavour), bounded in bytes. Exports are
    deterministic (weights seeded by the signature), so a repeat is the same model; exporting
    takes seconds, so a profile, an estimator and a background profiler in one process share."""

    def __init__(self, max_bytes: int = 128 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: tuple[str, str], data: bytes) -> None:
        with self._lock:
            if key in self._items or len(data) > self.max_bytes:
                return
            self._items[key] = data
            self._size += len(data)
            while self._size > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._size -= len(old)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._size = 0


EXPORT_CACHE = _ExportCache()


_DISK_CACHE: "ExportCache | None | bool" = False  # False: not resolved yet


def disk_export_cache() -> "ExportCache | None":
    """The on-disk export cache of this process (`export_cache.ExportCache.default()` unless
    `use_export_cache` chose another); None when turned off."""
    global _DISK_CACHE
    if _DISK_CACHE is False:
        from autonad_edge.latency.export_cache import ExportCache

        _DISK_CACHE = ExportCache.default()
    return _DISK_CACHE  # type: ignore[return-value]


def use_export_cache(location: "str | os.PathLike | None") -> "ExportCache | None":
    """Put the on-disk export cache at `location` ("off" or None: no disk cache) for this
    process and the export workers it starts (through the environment)."""
    global _DISK_CACHE
    from autonad_edge.latency import export_pool
    from autonad_edge.latency.export_cache import ENV_VAR, ExportCache

    off = location is None or str(location).lower() == "off"
    os.environ[ENV_VAR] = "off" if off else str(location)
    _DISK_CACHE = None if off else ExportCache(location)
    export_pool.shutdown()  # running workers were started with the previous setting
    return _DISK_CACHE  # type: ignore[return-value]


def cached_export(unit: Unit, flavor: str) -> bytes | None:
    """The unit's export from the in-memory or the on-disk cache, or None."""
    data = EXPORT_CACHE.get((unit.signature, flavor))
    if data is not None:
        return data
    disk = disk_export_cache()
    if disk is not None:
        from autonad_edge.latency.export_cache import export_key

        data = disk.get(export_key(unit.signature, flavor))
        if data is not None:
            EXPORT_CACHE.put((unit.signature, flavor), data)
    return data


def remember_export(unit: Unit, flavor: str, data: bytes, disk: bool = False) -> None:
    """Keep an export in memory (and on disk if `disk`; a worker process already wrote it)."""
    EXPORT_CACHE.put((unit.signature, flavor), data)
    cache = disk_export_cache() if disk else None
    if cache is not None:
        from autonad_edge.latency.export_cache import export_key

        cache.put(export_key(unit.signature, flavor), data)


def export_bytes(unit: Unit, flavor: str) -> bytes:
    """Serialised ONNX of `unit` with deterministic weights (seeded by its signature: the same
    unit exports the same bytes, so repeats hit the export caches and the agent's result
    cache). Exports in this process; `export_pool.export_units` exports many in workers."""
    cached = cached_export(unit, flavor)
    if cached is not None:
        return cached
    from autonad_edge.export.onnx_export import export_unit

    data = export_unit(unit, flavor=flavor, module=_seeded_module(unit)).SerializeToString()
    remember_export(unit, flavor, data, disk=True)
    return data


def _seeded_module(unit: Unit):
    """`unit.build()` with weights seeded by its signature: the same unit, the same weights."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed_for(unit))
        return unit.build()


def export_bundle_bytes(units: Sequence[Unit], flavor: str) -> list[bytes | BaseException]:
    """`export_bytes` of each unit (or the exception its export raised), in order, the uncached
    ones from one joint export (`onnx_export.export_units_together`: the same bytes, a fraction
    of the time). A joint export that fails is retried unit by unit, so one bad unit costs only
    itself."""
    results: list[bytes | BaseException | None] = [cached_export(u, flavor) for u in units]
    todo = [i for i, r in enumerate(results) if r is None]
    if len(todo) > 1:
        from autonad_edge.export.onnx_export import export_units_together

        try:
            modules = [_seeded_module(units[i]) for i in todo]
            models = export_units_together([units[i] for i in todo], flavor, modules)
        except Exception:  # noqa: BLE001 - which unit failed is found below, one at a time
            models = []
        for i, model in zip(todo, models):
            results[i] = model.SerializeToString()
            remember_export(units[i], flavor, results[i], disk=True)
    for i in todo:
        if results[i] is None:
            try:
                results[i] = export_bytes(units[i], flavor)
            except Exception as exc:  # noqa: BLE001 - reported per unit, like a worker's
                results[i] = exc
    return results  # type: ignore[return-value]


ProgressFn = Callable[[int, int, Unit, "Measurement | BaseException"], None]


def measure_units(
    pool: "ClientPool",
    table: "LatencyTable",
    units: Sequence[Unit],
    *,
    key: TargetKey | None = None,
    policy: "MeasurementPolicy | None" = None,
    chunk: int = DEFAULT_CHUNK,
    overlap: bool | None = None,
    progress: ProgressFn | None = None,
    exporter: Callable[[Unit, str], bytes] = export_bytes,
    report: ProfileReport | None = None,
    stop: threading.Event | None = None,
) -> ProfileReport:
    """Export and measure `units` (all of them: filter with `missing_units` first), record
    each complete measurement under its signature. `overlap` (default: unless the agents are
    on this machine) exports the next chunk while the pool measures the current one."""
    from autonad_edge.latency.pool import MeasureJob

    key = key or target_key(pool)
    report = report or ProfileReport(key)
    if overlap is None:
        overlap = not is_loopback_pool(pool)
    units = list(units)
    chunks = [units[i : i + max(1, chunk)] for i in range(0, len(units), max(1, chunk))]
    done = 0
    start = time.perf_counter()

    def export_chunk(part: list[Unit]) -> list[tuple[Unit, bytes | BaseException]]:
        t0 = time.perf_counter()
        if exporter is export_bytes:  # the real exporter: in worker processes, several at once
            from autonad_edge.latency.export_pool import export_units

            out = list(zip(part, export_units(part, key.flavor)))
        else:
            out = []
            for unit in part:
                try:
                    out.append((unit, exporter(unit, key.flavor)))
                except Exception as exc:  # one unit that does not export must not stop the others
                    out.append((unit, exc))
        for unit, result in out:
            if isinstance(result, BaseException):
                log.warning("cannot export %s: %s", unit.describe(), result)
        report.export_s += time.perf_counter() - t0
        return out

    def measure_chunk(exported: list[tuple[Unit, bytes | BaseException]]) -> None:
        nonlocal done
        ready = [(u, b) for u, b in exported if isinstance(b, bytes)]
        for unit, err in exported:
            if not isinstance(err, bytes):
                report.failed.append((unit, f"export: {err}"))
                done += 1
                if progress:
                    progress(done, len(units), unit, err)
        if not ready:
            return
        jobs = [MeasureJob(onnx=b, signature=u.signature, policy=policy) for u, b in ready]
        results = pool.measure_many(jobs, return_exceptions=True)
        to_record = []
        for (unit, _), result in zip(ready, results):
            done += 1
            if isinstance(result, BaseException):
                report.failed.append((unit, str(result)))
            else:
                if result.backend != key.backend or result.fingerprint != key.fingerprint:
                    # An agent answered for another backend/device: keep it out of this key.
                    report.failed.append((unit, f"answered by {result.backend} {result.fingerprint.hash}"))
                    continue
                report.measured += 1
                report.unstable += 0 if result.stable else 1
                if pool.table is not table:
                    to_record.append((unit.signature, result))
            if progress:
                progress(done, len(units), unit, result)
        if to_record:
            table.record_many(to_record)

    if overlap and len(chunks) > 1:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="latency-export") as executor:
            pending: Future | None = executor.submit(export_chunk, chunks[0])
            for i in range(len(chunks)):
                assert pending is not None
                exported = pending.result()
                pending = executor.submit(export_chunk, chunks[i + 1]) if i + 1 < len(chunks) else None
                if stop is not None and stop.is_set():
                    break
                measure_chunk(exported)
            if pending is not None:
                pending.result()
    else:
        for part in chunks:
            if stop is not None and stop.is_set():
                break
            measure_chunk(export_chunk(part))
    report.seconds += time.perf_counter() - start
    return report


def profile(
    space: "SearchSpace",
    pool: "ClientPool",
    table: "LatencyTable",
    image_size: int | Sequence[int],
    num_classes: int,
    *,
    sample: int | None = None,
    seed: int = 0,
    policy: "MeasurementPolicy | None" = None,
    chunk: int = DEFAULT_CHUNK,
    progress: bool | ProgressFn = False,
    exporter: Callable[[Unit, str], bytes] = export_bytes,
) -> ProfileReport:
    """Measure every unit a search over `space` can hit at `image_size` that the table lacks
    for `pool`'s fingerprint. `sample=N` instead takes only the units of N random subnets
    (the estimator measures others on demand). `progress=True` shows a progress bar."""
    if sample is None:
        wanted = space_units(space, num_classes, image_size)
    else:
        rng = random.Random(seed)
        wanted = dedup(u for _ in range(sample) for u in units_of(space.sample(rng), space, num_classes, image_size))
    key = target_key(pool)
    todo = missing_units(wanted, table, key)
    report = ProfileReport(key, considered=len(wanted), known=len(wanted) - len(todo))
    if not todo:
        return report
    if progress is True:
        return _with_progress_bar(pool, table, todo, key, policy, chunk, exporter, report)
    return measure_units(
        pool, table, todo, key=key, policy=policy, chunk=chunk,
        progress=progress or None, exporter=exporter, report=report,
    )


def _with_progress_bar(pool, table, todo, key, policy, chunk, exporter, report) -> ProfileReport:
    """A rich bar on an interactive stderr; elsewhere (a log file, CI) a plain line at every
    tenth of the units. Both on stderr: stdout is for results."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from autonad_edge.training.progress import fancy_output_allowed

    if not fancy_output_allowed():
        step = max(1, -(-len(todo) // 10))

        def line(done: int, total: int, unit: Unit, result) -> None:
            if done % step == 0 or done == total:
                what = f"{result.median_ms:.3f} ms" if not isinstance(result, BaseException) else "failed"
                print(f"profiling {done}/{total} blocks: {unit.describe()}: {what}", file=sys.stderr, flush=True)

        return measure_units(pool, table, todo, key=key, policy=policy, chunk=chunk, progress=line,
                             exporter=exporter, report=report)
    columns = (
        TextColumn("[bold]profiling[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.description}"),
    )
    with Progress(*columns, transient=False, console=Console(stderr=True)) as bar:
        task = bar.add_task("", total=len(todo))

        def advance(done: int, total: int, unit: Unit, result) -> None:
            ok = not isinstance(result, BaseException)
            what = f"{result.median_ms:.3f} ms" if ok else "[red]failed[/]"
            bar.update(task, completed=done, description=f"{unit.describe()}: {what}")

        return measure_units(
            pool, table, todo, key=key, policy=policy, chunk=chunk, progress=advance,
            exporter=exporter, report=report,
        )


__all__ = [
    "ProfileReport",
    "TargetKey",
    "cached_export",
    "disk_export_cache",
    "export_bytes",
    "is_loopback_pool",
    "lenient_policy",
    "measure_units",
    "missing_units",
    "profile",
    "remember_export",
    "target_key",
    "use_export_cache",
]
