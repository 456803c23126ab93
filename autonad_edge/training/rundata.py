"""Loading a run's data so that a resumed run, an evaluation or a later retraining sees
exactly the same split: the split manifest (``splits.json``) is reused when it exists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autonad_edge.data.errors import DatasetError


def load_run_data(
    fmt: str = "synthetic",
    path: str | Path | None = None,
    image_size: int | tuple[int, int] = 320,
    seed: int = 0,
    synthetic_count: int = 240,
    manifest: dict[str, Any] | str | Path | None = None,
    keep_aspect: bool = True,
    max_side: int | None = None,
):
    """`load_dataset(...)`, reusing `manifest` (a dict or a ``splits.json`` path) when given.

    A manifest path that does not exist is ignored (a fresh run). Raises `DatasetError`.
    `keep_aspect` and `max_side` set the training scale (`RunConfig`'s fields of those names).
    """
    from autonad_edge.data import load_dataset
    from autonad_edge.data.splits import load_manifest

    if isinstance(manifest, (str, Path)):
        manifest = load_manifest(manifest) if Path(manifest).is_file() else None
    if manifest is not None and path is None and fmt != "synthetic" and not manifest.get("root"):
        raise DatasetError(f"the split manifest has no dataset root: give the {fmt} dataset path")
    try:
        return load_dataset(
            None if path is None else str(path),
            fmt=fmt,
            image_size=image_size,
            seed=seed,
            synthetic_count=synthetic_count,
            manifest=manifest,
            keep_aspect=keep_aspect,
            max_side=max_side,
        )
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise DatasetError(f"cannot read the dataset: {exc}") from None


__all__ = ["load_run_data"]
