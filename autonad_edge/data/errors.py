"""The one exception the data layer raises for a bad dataset (numpy-free, torch-free)."""

from __future__ import annotations

from pathlib import Path

from autonad_edge.errors import AutonadError


class DatasetError(AutonadError, ValueError):
    """A dataset on disk (or a split manifest) is missing, malformed or inconsistent.

    The message is always a single line that names the offending file and the problem, so the
    CLI can print it as `error: ...` without a traceback.
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        text = f"{path}: {message}" if path is not None else message
        # Collapse embedded newlines (e.g. from a wrapped PIL error) to keep it one line.
        super().__init__(" ".join(str(text).split()))
