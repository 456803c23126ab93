"""``stages.json``: which stages finished, their wall time and their results.

Each stage returns a frozen `StageResult`; it is stored under its fields' names (the same JSON
keys the records have always had, so a run directory written by an older version resumes) and
loaded back as the same type when a rerun skips the stage.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

from autonad_edge.io import atomic_write_json
from autonad_edge.search.stages.context import RunClock

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

    @classmethod
    def open(cls, path: Path) -> "StageLog":
        records = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        return cls(path, records)

    def done(self, name: str) -> bool:
        return self.records.get(name, {}).get("status") == "done"

    def wall_s(self, name: str) -> float:
        return self.records.get(name, {}).get("wall_s", 0.0)

    def note(self, name: str) -> str:
        return self.records.get(name, {}).get("note", "")

    def load(self, name: str, result_type: type[R]) -> R:
        return result_type.from_dict(self.records[name]["result"])

    def finish(self, name: str, wall_s: float, result: StageResult) -> None:
        self.records[name] = {"status": "done", "wall_s": wall_s, "result": result.to_dict(),
                              "note": result.stage_note()}
        atomic_write_json(self.path, self.records)

    def run(self, name: str, result_type: type[R], fn: Callable[[], R], *, log: Callable[[str], None],
            clock: RunClock) -> R:
        """The stage's result: loaded when an earlier run finished it, else computed and saved."""
        if self.done(name):
            self.status[name] = "resumed"
            clock.add_earlier(self.wall_s(name))
            log(f"[{name}] done in an earlier run; skipped")
            return self.load(name, result_type)
        log(f"[{name}] ...")
        start = time.perf_counter()
        result = fn()
        wall = time.perf_counter() - start
        self.finish(name, wall, result)
        self.status[name] = "done"
        log(f"[{name}] finished in {wall:.1f} s")
        return result
