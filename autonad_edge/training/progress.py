"""Progress display and the per-epoch JSON-lines log.

`Progress` shows a rich bar (loss, lr, images/s, ETA) on an interactive terminal, one plain line
per epoch when stderr is not a TTY or ``CI`` is set, and nothing with ``quiet=True``. Progress
goes to stderr, so a command's results on stdout stay machine-readable. `JsonlLog` appends one
JSON object per line (``train_log.jsonl``); on resume it drops records past the checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from autonad_edge.io import atomic_write_text
from autonad_edge.io import json_safe as _json_safe


def fancy_output_allowed(quiet: bool = False) -> bool:
    """Rich live bars only on an interactive stderr, outside CI, and when not quiet."""
    if quiet or os.environ.get("CI"):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _fmt_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_eta(epochs_eta_s: float, blocks_left: int | None = None) -> str:
    """"epochs ETA 3:10, blocks left 40": the training time left at the epoch rate, and the
    block-timing backlog apart from it (timing it costs its own time, between epochs)."""
    text = f"epochs ETA {_fmt_eta(epochs_eta_s)}"
    if blocks_left:
        text += f", blocks left {blocks_left}"
    return text


class Progress:
    """Per-step and per-epoch progress of a training run (rank 0 only: pass enabled=False
    elsewhere). Use as a context manager.

    The ETA is the epochs' own rate: time spent between epochs (block timing in epoch hooks)
    is not extrapolated into it; `backlog`, if given, returns the blocks still to time, shown
    next to it."""

    def __init__(self, total_epochs: int, steps_per_epoch: int, *, quiet: bool = False,
                 enabled: bool = True, title: str = "train", start_step: int = 0,
                 backlog: "Callable[[], int] | None" = None) -> None:
        self.total_epochs = total_epochs
        self.steps_per_epoch = max(steps_per_epoch, 1)
        self.total_steps = total_epochs * self.steps_per_epoch
        self.enabled = enabled and not quiet
        self.fancy = self.enabled and fancy_output_allowed(quiet)
        self.title = title
        self._progress = None
        self._task = None
        self._run_start = time.perf_counter()
        self._step = start_step  # global optimiser step
        self._session_steps = 0  # steps taken by this process (a resumed run starts at 0)
        self._epoch_s = 0.0  # time inside finished epochs (training + validation)
        self._epoch_start: float | None = None
        self.backlog = backlog

    def set_total_epochs(self, total_epochs: int) -> None:
        """The run now ends at `total_epochs` (a time limit cut or lengthened it)."""
        self.total_epochs = total_epochs
        self.total_steps = total_epochs * self.steps_per_epoch

    def eta(self) -> float:
        """Seconds of epochs left, from this session's mean step time inside epochs."""
        if not self._session_steps:
            return math.inf
        inside = self._epoch_s + (time.perf_counter() - self._epoch_start if self._epoch_start is not None else 0.0)
        per_step = inside / self._session_steps
        return max(self.total_steps - self._step, 0) * per_step

    def eta_text(self, remaining_epochs: int | None = None) -> str:
        eta = 0.0 if remaining_epochs == 0 else self.eta()
        return format_eta(eta, self.backlog() if self.backlog is not None else None)

    def __enter__(self) -> "Progress":
        if self.fancy:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,
                                       TextColumn, TimeElapsedColumn, TimeRemainingColumn)

            self._progress = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TextColumn("epoch ETA"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None

    def start_epoch(self, epoch: int, steps: int) -> None:
        self.steps_per_epoch = max(steps, 1)
        self._epoch_start = time.perf_counter()
        if self._progress is not None:
            if self._task is not None:
                self._progress.remove_task(self._task)
            self._task = self._progress.add_task(
                f"{self.title} {epoch + 1}/{self.total_epochs}", total=steps, stats=""
            )

    def step(self, loss: float, lr: float, images_per_s: float) -> None:
        self._step += 1
        self._session_steps += 1
        if self._progress is not None and self._task is not None:
            stats = f"loss {loss:.4f}  lr {lr:.2e}  {images_per_s:.1f} img/s  {self.eta_text()}"
            self._progress.update(self._task, advance=1, stats=stats)

    def end_epoch(self, record: dict[str, Any], remaining_epochs: int) -> None:
        """One line per epoch: loss, lr, images/s, time, val mIoU, ETA (and block backlog)."""
        if self._epoch_start is not None:
            self._epoch_s += time.perf_counter() - self._epoch_start
            self._epoch_start = None
        if not self.enabled:
            return
        parts = [
            f"{self.title} epoch {record['epoch']}/{self.total_epochs}",
            f"loss {record['loss']:.4f}",
            f"lr {record['lr']:.2e}",
            f"{record['images_per_s']:.1f} img/s",
            f"{record['time']:.1f}s",
        ]
        if record.get("val_miou") is not None:
            parts.append(f"val mIoU {100 * record['val_miou']:.1f}%")  # as the report gives it
        parts.append(self.eta_text(remaining_epochs))
        line = "  ".join(parts)
        if self._progress is not None:
            self._progress.console.print(line, highlight=False)
        else:
            print(line, file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.console.print(text, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)


class JsonlLog:
    """Append-only JSON-lines log; each record is flushed and fsynced as it is written."""

    def __init__(self, path: str | Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled

    def truncate_after(self, epoch: int) -> None:
        """Keep only records with ``record["epoch"] <= epoch`` (a resumed run rewrites the rest)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [r for r in self.read() if int(r.get("epoch", 0)) <= epoch]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def reset(self) -> None:
        if self.enabled and self.path.exists():
            self.path.unlink()

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(_json_safe(record)) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line from a kill: ignore it and anything after
        return out


__all__ = ["JsonlLog", "Progress", "fancy_output_allowed"]
