"""Which files of a dataset folder are images, and which file belongs to a sample id (no numpy).

Suffixes match in any case: cameras and Windows tools write `IMG_0001.JPG` and `mask.PNG`.
Dotfiles are skipped: macOS leaves an AppleDouble `._a.jpg` (metadata, not an image) next to
every file copied to a FAT, exFAT or network drive. An id with two files (`a.jpg` and `a.png`)
is refused rather than resolved: either choice could silently train on the wrong picture.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from autonad_edge.data.errors import DatasetError

# What Pillow reads losslessly or as photos; `predict` accepts the same set.
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def is_hidden(path: str | Path) -> bool:
    """A dotfile (`._a.jpg`, `.DS_Store`): never a sample."""
    return Path(path).name.startswith(".")


def has_suffix(path: str | Path, suffixes: Iterable[str]) -> bool:
    return Path(path).suffix.lower() in suffixes


def strip_image_suffix(entry: str) -> str:
    """A split-list entry without a trailing image suffix: `img1.jpg` names the id `img1`."""
    stem, suffix = os.path.splitext(entry)
    return stem if stem and suffix.lower() in IMAGE_SUFFIXES else entry


def files_by_stem(folder: Path, suffixes: Iterable[str]) -> dict[str, list[Path]]:
    """The visible files of `folder` with one of `suffixes` (any case), by name without it."""
    suffixes = tuple(suffixes)
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if not is_hidden(path) and has_suffix(path, suffixes) and path.is_file():
            found.setdefault(path.stem, []).append(path)
    return found


def single_file(found: dict[str, list[Path]], stem: str) -> Path | None:
    """The file of `stem` in a `files_by_stem` result (None: there is none); two are refused
    in one line naming both."""
    paths = found.get(stem, [])
    if len(paths) > 1:
        raise DatasetError(
            f"{paths[0].name} and {paths[1].name} are both files of id {stem!r}: "
            "keep one (move or rename the other)",
            paths[0].parent,
        )
    return paths[0] if paths else None
