"""The magnetic-tile (MT) defect dataset in its original layout (numpy + PIL).

    ROOT/MT_<Class>/Imgs/<id>.jpg   photo, any size (.jpeg/.bmp/.tif/.tiff also accepted,
                                    suffixes in any case); grey in the original set, and
                                    loaded in its own mode: a colour photo stays colour, as
                                    `predict` and the bundle's infer.py feed it
    ROOT/MT_<Class>/Imgs/<id>.png   greyscale mask of the same size, near-binary

A mask pixel >= 128 is defect and takes the class of its folder; below is background. Only
the five defect folders are read; MT_Free (defect-free tiles, no masks) is ignored, any other
MT_* folder is an error (it usually means a half-converted copy). Sample ids are
`MT_<Class>/<id>`, unique across folders; two photos of one id (`e0.jpg` and `e0.jpeg`) are
refused. Dotfiles (macOS `._e0.jpg`) are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autonad_edge.data.cache import (
    ImageCache,
    build_cache,
    label_histogram,
    open_image,
    open_image_as,
    parallel_map,
    resize_pair,
)
from autonad_edge.data.errors import DatasetError
from autonad_edge.data.files import IMAGE_SUFFIXES, files_by_stem, single_file

MT_CLASSES: tuple[str, ...] = ("background", "blowhole", "break", "crack", "fray", "uneven")
MT_FOLDERS: dict[str, int] = {
    "mt_blowhole": 1,
    "mt_break": 2,
    "mt_crack": 3,
    "mt_fray": 4,
    "mt_uneven": 5,
}
MT_IGNORED_FOLDERS = frozenset({"mt_free"})
MASK_THRESHOLD = 128
MASK_SUFFIXES = (".png",)
# In this layout a PNG is the mask, so a photo is any other image file.
PHOTO_SUFFIXES = tuple(suffix for suffix in IMAGE_SUFFIXES if suffix not in MASK_SUFFIXES)


@dataclass(frozen=True)
class MTPair:
    sample_id: str
    image_path: Path
    mask_path: Path
    label: int


def is_mt_root(root: Path) -> bool:
    return root.is_dir() and any(
        child.is_dir() and child.name.lower() in MT_FOLDERS for child in root.iterdir()
    )


def find_mt_pairs(root: str | Path) -> list[MTPair]:
    """All image/mask pairs under `root`, sorted by id; raises DatasetError on a broken layout."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError("no such directory", root)
    pairs: list[MTPair] = []
    for folder in sorted(root.iterdir()):
        key = folder.name.lower()
        if not folder.is_dir() or not key.startswith("mt_") or key in MT_IGNORED_FOLDERS:
            continue
        if key not in MT_FOLDERS:
            known = ", ".join(f"MT_{name.capitalize()}" for name in MT_CLASSES[1:])
            raise DatasetError(
                f"unknown magnetic-tile class folder (expected {known} or MT_Free)", folder
            )
        images_dir = folder / "Imgs"
        if not images_dir.is_dir():
            raise DatasetError("missing Imgs/ folder", folder)
        photos = files_by_stem(images_dir, PHOTO_SUFFIXES)
        masks = files_by_stem(images_dir, MASK_SUFFIXES)
        for stem in sorted(set(photos) | set(masks)):
            path = single_file(photos, stem)
            mask_path = single_file(masks, stem)
            if path is None:
                raise DatasetError(f"mask without an image ({stem}.jpg missing)", mask_path)
            if mask_path is None:
                raise DatasetError(f"missing mask {stem}.png", path)
            pairs.append(MTPair(f"{folder.name}/{stem}", path, mask_path, MT_FOLDERS[key]))
    if not pairs:
        raise DatasetError(
            "empty dataset: no MT_<Class>/Imgs/<id>.jpg + <id>.png pairs found", root
        )
    return pairs


def _load_pair(pair: MTPair, size_hw: tuple[int, int] | None, max_side: int | None):
    image = open_image_as(pair.image_path)  # its own mode, as predict and infer.py read it
    mask_image = open_image(pair.mask_path)
    native = (image.height, image.width)
    grey = np.asarray(mask_image.convert("L"), dtype=np.uint8)
    top = int(grey.max())
    if 0 < top < MASK_THRESHOLD:
        # Marked but nothing reaches the threshold: a 0/1 (or 0..top) mask would train as all
        # background without a word.
        raise DatasetError(f"mask values 0..{top}: this layout marks a defect with 255 (any value >= "
                           f"{MASK_THRESHOLD}); scale the mask to 0/255", pair.mask_path)
    mask = np.where(grey >= MASK_THRESHOLD, pair.label, 0).astype(np.uint8)
    pixels, mask_resized = resize_pair(image, mask, size_hw, pair.image_path, pair.mask_path, max_side)
    return pixels, mask_resized, native, label_histogram(mask)


def load_mt(
    root: str | Path, size_hw: tuple[int, int] | None, ids: list[str] | None = None,
    max_side: int | None = None,
) -> ImageCache:
    """Decode and resize the MT dataset (or only `ids`) into an ImageCache (1 channel for a
    grey photo, 3 for a colour one); see `resize_pair` for `size_hw` (None: keep the aspect
    ratio) and `max_side`.

    Splits are stratified by the folder class.
    """
    pairs = find_mt_pairs(root)
    if ids is not None:
        by_id = {pair.sample_id: pair for pair in pairs}
        missing = [sample_id for sample_id in ids if sample_id not in by_id]
        if missing:
            raise DatasetError(
                f"manifest id {missing[0]!r} not found ({len(missing)} missing)", root
            )
        pairs = [by_id[sample_id] for sample_id in ids]
    samples = parallel_map(lambda pair: _load_pair(pair, size_hw, max_side), pairs)
    return build_cache(
        ids=[pair.sample_id for pair in pairs],
        samples=samples,
        class_names=list(MT_CLASSES),
        strata=[pair.label for pair in pairs],
        sources=[str(pair.image_path) for pair in pairs],
    )
