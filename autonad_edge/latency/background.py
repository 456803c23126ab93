"""Measuring units in the background while the supernet trains.

Every training step samples a subnet; its units that the table lacks are worth measuring, so
the latency table is full by the time the search starts::

    with BackgroundProfiler(pool, table, space, image_size=320, num_classes=6) as profiler:
        trainer.add_step_hook(profiler)                # fn(step, arch): queues, never blocks
        trainer.add_epoch_hook(profiler.epoch_hook)    # deferred mode measures here, between epochs
        trainer.fit()

`submit` only appends the architecture to a queue (microseconds); a worker thread expands it
into units, drops the ones already queued or in the table (by signature), exports the rest
(in worker processes, `export_pool`; several at once while training waits) and measures
them through the pool, which records complete measurements only.

Two modes:

- ``continuous``: the worker measures as architectures arrive. Right for a remote target: the
  host only exports (a few seconds of one core per new unit, early in training; then almost
  every unit is known) and the device measures undisturbed.
- ``deferred``: units are measured only when `flush()` is called (between epochs, when
  training is paused). Right for an agent on the training machine (``local``): there the
  agent's timed runs and the training step would compete for the same cores, slowing the step
  and, worse, inflating the recorded latencies. Meanwhile the collected units are exported
  ahead (`export_pool.export_ahead`: worker processes at the lowest CPU priority, on whatever
  core training leaves idle), so that where training leaves one (a GPU trains, or fewer
  training threads than cores) a flush mostly times; where it leaves none, the round finishes
  in the flush, as the exports would without it; where other work leaves none either, the
  flush stops the round after about its time at normal priority and exports the rest itself.

``mode="auto"`` (the default) picks ``deferred`` when every agent of the pool is on a loopback
address, ``continuous`` otherwise.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from autonad_edge.latency import export_pool
from autonad_edge.latency.blocks import Unit, units_of
from autonad_edge.latency.profiler import (
    ProfileReport,
    TargetKey,
    export_bytes,
    is_loopback_pool,
    measure_units,
    target_key,
)

if TYPE_CHECKING:
    from autonad_agent.measure import MeasurementPolicy
    from autonad_edge.latency.pool import ClientPool
    from autonad_edge.latency.table import LatencyTable
    from autonad_edge.space import Arch, SearchSpace

log = logging.getLogger(__name__)

MODES = ("auto", "continuous", "deferred")

# How long a flush waits for a round of exports ahead still in flight before stopping it and
# exporting its units at normal priority: what the round takes at normal priority (0.14-0.3 s
# of one core a unit, sessions 15-23), twice over and at least 10 s. At the lowest priority a
# round makes no progress at all while other work keeps every core busy.
AHEAD_WAIT_S_PER_UNIT = 0.5
AHEAD_WAIT_MIN_S = 10.0
# After a stop, how long its thread may take to end; one that does not is left behind (no other
# round starts) rather than hold the flush.
AHEAD_STOP_S = 30.0


@dataclass(frozen=True)
class BackgroundStats:
    submitted: int  # architectures submitted
    dropped: int  # architectures dropped because the queue was full
    units_seen: int  # distinct unit signatures considered
    known: int  # of those, already in the table
    measured: int
    failed: int
    pending_archs: int
    pending_units: int
    export_s: float  # exporting the units (part of measure_s)
    measure_s: float  # exporting and timing them: all the block timing cost
    # Units exported by rounds ahead of their flush (deferred mode), at the lowest priority; a
    # round still in flight when a flush begins finishes in it (and its wait is in export_s).
    exported_ahead: int = 0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, float]) -> "BackgroundStats":
        # A run recorded before a field existed reads it as its default.
        return cls(**{f: d[f] for f in cls.__dataclass_fields__ if f in d})

    def summary(self) -> str:
        """The block timing's cost in one line (the supernet stage's note in the report)."""
        ahead = f", {self.exported_ahead} exported ahead of it" if self.exported_ahead else ""
        return (f"block timing: {self.measured} units in {self.measure_s:.1f} s (exports {self.export_s:.1f} s)"
                f"{ahead}, {self.known} already in the table")


class BackgroundProfiler:
    """Queue architectures' unmeasured units and measure them on a background thread."""

    def __init__(
        self,
        pool: "ClientPool",
        table: "LatencyTable",
        space: "SearchSpace",
        image_size: int | Sequence[int],
        num_classes: int,
        *,
        mode: str = "auto",
        policy: "MeasurementPolicy | None" = None,
        key: TargetKey | None = None,
        nice: int = 10,
        chunk: int = 8,
        max_pending: int = 10_000,
        exporter: Callable[[Unit, str], bytes] = export_bytes,
        export_ahead: bool = True,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.pool, self.table, self.space, self.num_classes = pool, table, space, num_classes
        self.image_size = image_size
        self.key = key or target_key(pool)
        self.mode = ("deferred" if is_loopback_pool(pool) else "continuous") if mode == "auto" else mode
        self.policy, self.nice, self.chunk, self.max_pending = policy, nice, chunk, max_pending
        self.exporter = exporter
        # Deferred mode: export collected units before their flush (`export_pool.export_ahead`).
        self.export_ahead = export_ahead
        self._archs: deque["Arch"] = deque()
        self._units: deque[Unit] = deque()
        self._seen: set[str] = set()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._paused = False
        self._drain = 0  # flush() calls waiting
        self._busy = False
        self._report = ProfileReport(self.key)
        self._submitted = self._dropped = self._known = 0
        self._failed: dict[str, str] = {}
        self._not_ahead: deque[Unit] = deque()  # units not yet handed to `export_ahead` (deferred mode)
        self._exported_ahead = 0
        # The round of exports ahead in flight, on its own thread: at the lowest priority it may
        # last a whole epoch, and the worker keeps expanding architectures meanwhile.
        self._ahead_thread: threading.Thread | None = None
        self._ahead_units = 0  # units in that round; 0 when none is in flight
        self._measure_s = 0.0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="latency-background", daemon=True)
        self._thread.start()

    # ---- the training side (never blocks) ------------------------------------------------
    def submit(self, arch: "Arch") -> bool:
        """Queue `arch` for measurement; returns at once. False if the queue was full."""
        with self._cond:
            if self._stop.is_set():
                raise RuntimeError("the background profiler is closed")
            if len(self._archs) >= self.max_pending:
                self._dropped += 1
                return False
            self._archs.append(arch)
            self._submitted += 1
            self._cond.notify_all()
        return True

    def __call__(self, step: int, arch: "Arch") -> None:
        """Step-hook form: ``trainer.add_step_hook(profiler)``."""
        self.submit(arch)

    def epoch_hook(self, epoch: int, record: object = None) -> None:
        """Epoch-hook form, ``trainer.add_epoch_hook(profiler.epoch_hook)``: measures what the
        epoch's subnets left unmeasured, while training waits (the deferred mode's drain)."""
        self.flush()

    def pause(self) -> None:
        """Stop measuring after the current chunk (continuous mode) until `resume()`."""
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    # ---- draining ------------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Measure everything submitted so far and wait for it (deferred mode measures only
        here). Returns False on timeout. Re-raises an error that stopped the worker."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._drain += 1
            self._cond.notify_all()
            try:
                while self._archs or self._units or self._busy:
                    if self._error is not None or not self._thread.is_alive():
                        break
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(remaining)
            finally:
                self._drain -= 1
        if self._error is not None:
            raise RuntimeError(f"background profiling stopped: {self._error}") from self._error
        return True

    def close(self, flush: bool = False, timeout: float | None = None) -> None:
        """Stop the worker (after measuring what is pending if `flush`). Chunks in flight finish."""
        if flush and self._thread.is_alive():
            self.flush(timeout)
        with self._cond:
            self._stop.set()
            self._cond.notify_all()
        self._thread.join(timeout)
        self._end_ahead(wait_s=0.0)  # work ahead of a need that is gone

    def __enter__(self) -> "BackgroundProfiler":
        return self

    def __exit__(self, exc_type, *exc_info: object) -> None:
        # Leaving normally, continuous mode finishes what is queued; deferred mode leaves it to
        # the caller (an epoch hook has flushed each epoch; `profile()` measures any rest with
        # its progress bar). On an error: stop.
        self.close(flush=exc_type is None and self.mode == "continuous")

    def backlog(self) -> int:
        """Units known to be waiting for their timing (architectures not yet expanded aside)."""
        with self._cond:
            return len(self._units)

    def _chunk_size(self) -> int:
        """Units exported and measured per round. Deferred, training waits for the whole
        backlog anyway, so a round fills every export worker with a full bundle (one joint
        export each, `export_pool.BUNDLE_SIZE`); continuous, small rounds keep a remote
        device busy while the next ones export."""
        if self.mode != "deferred":
            return self.chunk
        return max(self.chunk, export_pool.BUNDLE_SIZE * max(1, export_pool.worker_count()))

    @property
    def busy(self) -> bool:
        """True while the worker is exporting or measuring a chunk."""
        with self._cond:
            return self._busy

    @property
    def stats(self) -> BackgroundStats:
        with self._cond:
            return BackgroundStats(
                submitted=self._submitted, dropped=self._dropped, units_seen=len(self._seen), known=self._known,
                measured=self._report.measured, failed=len(self._report.failed),
                pending_archs=len(self._archs), pending_units=len(self._units),
                export_s=self._report.export_s, measure_s=self._measure_s, exported_ahead=self._exported_ahead,
            )

    @property
    def failures(self) -> list[tuple[Unit, str]]:
        return list(self._report.failed)

    # ---- the worker ----------------------------------------------------------------------
    def _lower_priority(self) -> None:
        """Continuous mode works while training runs: below it. Deferred mode works while
        training waits, and export workers it starts (a pool replacing one whose exports ahead
        were stopped) inherit its priority: at nice 10 they exported 67 units in 168 s beside
        two busy processes (`benchmarks/starved_exports.py`)."""
        if self.mode != "continuous" or self.nice <= 0 or not hasattr(os, "setpriority"):
            return
        try:  # Linux: a thread's nice value is per thread (its native id is a pid)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
        except OSError:
            pass

    def _may_work(self) -> bool:
        if self._stop.is_set():
            return False
        if self._drain:
            return True
        return self.mode == "continuous" and not self._paused

    def _expand(self, archs: list["Arch"]) -> list[Unit]:
        """New, unmeasured units of `archs` (worker thread only; no lock held, so `submit`
        never waits on the table)."""
        fp, backend, precision = self.key.fingerprint, self.key.backend, self.key.precision
        new: list[Unit] = []
        known = 0
        for arch in archs:
            for unit in units_of(arch, self.space, self.num_classes, self.image_size):
                if unit.signature in self._seen:
                    continue
                self._seen.add(unit.signature)
                if self.table.get(fp, backend, precision, unit.signature) is not None:
                    known += 1
                else:
                    new.append(unit)
        with self._cond:
            self._known += known
        return new

    def _to_export_ahead(self) -> list[Unit]:
        """Deferred mode, between flushes, no round in flight: the next units to export ahead
        of their timing (call with the lock held). Only the real exporter fills the caches a
        flush reads."""
        if self.mode != "deferred" or not self.export_ahead or self.exporter is not export_bytes:
            return []
        if self._stop.is_set() or not self._not_ahead or self._ahead_units:
            return []
        if not export_pool.ahead_available():
            self._not_ahead.clear()
            return []
        return list(itertools.islice(self._not_ahead, self._chunk_size()))

    def _start_ahead(self, units: list[Unit]) -> None:
        """Export `units` (the head of `_not_ahead`) ahead on a thread of their own (call with
        the lock held)."""
        for _ in units:
            self._not_ahead.popleft()
        self._ahead_units = len(units)

        def run() -> None:
            exported = 0
            try:
                exported = export_pool.export_ahead(units, self.key.flavor)
            except BaseException as exc:  # noqa: BLE001 - the flush exports them itself, and reports
                log.warning("exporting ahead failed: %s", " ".join(str(exc).split())[:200])
            finally:
                with self._cond:  # what a stopped round exported is counted (cached: not again)
                    self._exported_ahead += exported
                    self._ahead_units = 0
                    self._cond.notify_all()

        self._ahead_thread = threading.Thread(target=run, name="latency-export-ahead", daemon=True)
        self._ahead_thread.start()

    def _finish_ahead(self) -> None:
        """Wait for the round in flight (its units are in this batch or the next): exporting them
        again meanwhile would do the work twice. Counted as export time: the flush waits. A
        round that does not end in `AHEAD_WAIT_S_PER_UNIT` a unit (its workers get no core) is
        stopped, and the flush exports what it had left at normal priority."""
        t0 = time.perf_counter()
        with self._cond:
            units = self._ahead_units
        if self._end_ahead(max(AHEAD_WAIT_MIN_S, AHEAD_WAIT_S_PER_UNIT * units / max(1, export_pool.worker_count()))):
            log.warning("exports ahead of block timing did not finish in time (the CPU is busy with other work):"
                        " the flush exports their %d units at normal priority", units)
        self._report.export_s += time.perf_counter() - t0

    def _end_ahead(self, wait_s: float) -> bool:
        """Wait up to `wait_s` for the round of exports ahead in flight, then stop it and wait
        for its thread, up to `AHEAD_STOP_S` (a round just starting has no work in the pool to
        stop yet: stopped again each second). True if it had to be stopped."""
        ahead = self._ahead_thread
        if ahead is None or not ahead.is_alive():
            return False
        ahead.join(wait_s)
        stopped = False
        deadline = time.monotonic() + AHEAD_STOP_S
        while ahead.is_alive() and time.monotonic() < deadline:
            stopped = export_pool.stop_idle_exports() or stopped
            ahead.join(1.0)
        if ahead.is_alive():
            log.warning("a round of exports ahead did not stop in %.0f s: left behind, no other is started",
                        AHEAD_STOP_S)
        return stopped

    def _run(self) -> None:
        self._lower_priority()
        try:
            while True:
                with self._cond:
                    # New architectures are expanded into units at once (cheap: it keeps the
                    # backlog count true); units are measured only when allowed, exported
                    # ahead meanwhile.
                    while not self._stop.is_set() and not (self._archs or (self._may_work() and self._units)
                                                           or self._to_export_ahead()):
                        self._cond.wait()
                    if self._stop.is_set():
                        return
                    archs = list(self._archs)
                    self._archs.clear()
                    self._busy = True
                new = self._expand(archs)
                with self._cond:
                    self._units.extend(new)
                    if self.mode == "deferred":
                        self._not_ahead.extend(new)
                    take = min(self._chunk_size(), len(self._units)) if self._may_work() else 0
                    batch = [self._units.popleft() for _ in range(take)]
                    if batch:
                        self._not_ahead.clear()  # a flush measures every unit waiting
                    ahead = [] if batch else self._to_export_ahead()
                    if ahead:
                        self._start_ahead(ahead)
                if batch:
                    t0 = time.perf_counter()
                    self._finish_ahead()
                    measure_units(
                        self.pool, self.table, batch, key=self.key, policy=self.policy, chunk=len(batch),
                        overlap=False, exporter=self.exporter, report=self._report,
                    )
                    elapsed = time.perf_counter() - t0
                else:
                    elapsed = 0.0
                with self._cond:
                    self._measure_s += elapsed
                    self._busy = False
                    self._cond.notify_all()
        except BaseException as exc:  # surfaced by flush()
            log.error("background profiling stopped: %s", exc)
            with self._cond:
                self._error = exc
                self._busy = False
                self._cond.notify_all()


__all__ = ["BackgroundProfiler", "BackgroundStats", "MODES"]
