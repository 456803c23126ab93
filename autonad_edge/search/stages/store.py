"""``stages.json``: which stages finished, their wall time and their results, and the seconds a
stage that has not finished (yet, or ever: a killed run) has spent, which a rerun counts.

Each stage returns a frozen `StageResult`; it is stored under its fields' names (the same JSON
keys the records have always had, so a run directory written by an older version resumes) and
loaded back as the same type when a rerun skips the stage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from autonad_edge.io import atomic_write_json
from autonad_edge.search.stages.context import RunClock, read_run_json, unreadable

R = TypeVar("R", bound="StageResult")


def _plain(value: Any) -> Any:
    """JSON form of a result field: nested records by their own `to_dict`."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class StageResult:
    """Base of the stages' frozen result dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[R], d: dict[str, Any]) -> R:
        return cls(**{f.name: d.get(f.name) for f in dataclasses.fields(cls)})

    def stage_note(self) -> str:
        """The line the report's stage table shows next to the stage."""
        return ""


@dataclass
class StageLog:
    path: Path
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    # How each stage went in this process: "done" (ran now) or "resumed" (skipped).
    status: dict[str, str] = field(default_factory=dict)
    # How often a running stage's seconds so far are written down: a process killed outright
    # (no exception to catch) loses at most this much of the run's clock.
    heartbeat_s: float = 10.0

    # What deleting a damaged stages.json does: the stages run again (training resumes from its checkpoints).
    REDO = "run the stages again"

    @classmethod
    def open(cls, path: Path) -> "StageLog":
        records = read_run_json(path, cls.REDO) if path.exists() else {}
        bad = next((name for name, record in records.items() if not isinstance(record, dict)), None)
        if bad is not None:
            raise unreadable(path, cls.REDO, f"its {bad} record is not a JSON object")
        return cls(path, records)

    def done(self, name: str) -> bool:
        return self.records.get(name, {}).get("status") == "done"

    def wall_s(self, name: str) -> float:
        """The stage's seconds, in every process that ran it (so far, when it is unfinished)."""
        return self.records.get(name, {}).get("wall_s", 0.0)

    def note(self, name: str) -> str:
        return self.records.get(name, {}).get("note", "")

    def load(self, name: str, result_type: type[R]) -> R:
        try:
            return result_type.from_dict(self.records[name]["result"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a hand edit, a torn copy
            raise unreadable(self.path, self.REDO, f"the {name} result: {type(exc).__name__} {exc}") from None

    def finish(self, name: str, wall_s: float, result: StageResult) -> None:
        self.records[name] = {"status": "done", "wall_s": wall_s, "result": result.to_dict(),
                              "note": result.stage_note()}
        atomic_write_json(self.path, self.records)

    def unfinished(self, name: str, wall_s: float) -> None:
        """Record that `name` has run `wall_s` seconds without finishing (the in-memory records
        keep what this process started from: another thread writes this)."""
        atomic_write_json(self.path, {**self.records, name: {"status": "running", "wall_s": wall_s}})

    def run(self, name: str, result_type: type[R], fn: Callable[[], R], *, log: Callable[[str], None],
            clock: RunClock) -> R:
        """The stage's result: loaded when an earlier run finished it, else computed and saved.
        An unfinished stage's seconds are kept in ``stages.json`` as it runs, and a rerun that
        resumes it adds them to the run's clock: the time budget was spent on them (the
        re-plan of the retraining reads the clock)."""
        if self.done(name):
            self.status[name] = "resumed"
            clock.add_earlier(self.wall_s(name), stage=name)
            log(f"[{name}] done in an earlier run; skipped")
            return self.load(name, result_type)
        earlier = self.wall_s(name)
        if earlier:
            clock.add_earlier(earlier, stage=name)
            log(f"[{name}] resuming ({earlier:.1f} s spent in an earlier run) ...")
        else:
            log(f"[{name}] ...")
        start = clock.now()

        def spent_s() -> float:
            return earlier + clock.now() - start

        try:
            with self._heartbeat(name, spent_s):
                result = fn()
        except BaseException:
            with contextlib.suppress(OSError):  # the stage's own error is the one to see
                self.unfinished(name, spent_s())
            raise
        wall = spent_s()
        self.finish(name, wall, result)
        self.status[name] = "done"
        log(f"[{name}] finished in {wall:.1f} s")
        return result

    @contextlib.contextmanager
    def _heartbeat(self, name: str, spent_s: Callable[[], float]) -> Iterator[None]:
        """Write the stage's seconds so far now and every `heartbeat_s` until the block ends."""
        self.unfinished(name, spent_s())
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat_s):
                with contextlib.suppress(OSError):  # a missed beat costs seconds, not the run
                    self.unfinished(name, spent_s())

        thread = threading.Thread(target=beat, name=f"stage-{name}-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
