"""Pascal-VOC segmentation layout: read (any dataset converted to it) and write (numpy + PIL).

    ROOT/JPEGImages/<id>.jpg                  image (.jpeg/.png/.bmp/.tif/.tiff also accepted,
                                              suffixes in any case; one image per id)
    ROOT/SegmentationClass/<id>.png           palette PNG (palette indices are the labels) or
                                              greyscale PNG (grey values are the labels)
    ROOT/ImageSets/Segmentation/train.txt     one id per line (the whole line, so an id may
                                              hold spaces; `<id>.jpg` also names <id>); val.txt
                                              and test.txt optional
    ROOT/classes.txt                          optional, one class name per line (background
                                              first); else background, class1..classN-1 with
                                              N = the largest label found + 1 (at most 32,
                                              see `labels.py`)

Text files may start with a UTF-8 byte-order mark (Windows Notepad writes one). Label 255
means "ignore"; masks whose only defect label is 255 (binary 0/255 masks) are refused. A
missing val.txt or test.txt is carved out of train.txt (seeded and stratified by dominant
class, see `splits.py` and `dataset.py`; the split manifest records it), so that no figure is
called "test" that was used to choose a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autonad_edge.data.cache import (
    IGNORE_INDEX,
    ImageCache,
    build_cache,
    label_histogram,
    mask_values,
    open_image,
    open_image_as,
    parallel_map,
    resize_pair,
)
from autonad_edge.data.errors import DatasetError
from autonad_edge.data.files import IMAGE_SUFFIXES, files_by_stem, single_file, strip_image_suffix
from autonad_edge.data.labels import check_defects_labelled, class_names_from_labels

IMAGE_DIR = "JPEGImages"
MASK_DIR = "SegmentationClass"
SPLIT_DIR = Path("ImageSets") / "Segmentation"
CLASSES_FILE = "classes.txt"
MASK_SUFFIXES = (".png",)

def voc_palette() -> list[int]:
    """The standard VOC colour map, so written masks look like VOC's in an image viewer."""
    palette = []
    for index in range(256):
        red = green = blue = 0
        value = index
        for bit in range(8):
            red |= ((value >> 0) & 1) << (7 - bit)
            green |= ((value >> 1) & 1) << (7 - bit)
            blue |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette += [red, green, blue]
    return palette


@dataclass
class VocIndex:
    root: Path
    class_names: list[str] | None
    splits: dict[str, list[str] | None]  # None: that list file does not exist


def is_voc_root(root: Path) -> bool:
    return (root / IMAGE_DIR).is_dir() and (root / MASK_DIR).is_dir()


def _read_lines(path: Path, what: str) -> list[str]:
    """The stripped, non-empty lines of a text file; utf-8-sig drops a byte-order mark, which
    would otherwise become part of the first id or class name."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"unreadable {what} ({exc})", path) from None
    return [line.strip() for line in lines if line.strip()]


def _read_id_list(path: Path) -> list[str]:
    ids = [strip_image_suffix(line) for line in _read_lines(path, "split list")]
    seen: set[str] = set()
    for sample_id in ids:
        if sample_id in seen:
            raise DatasetError(f"id {sample_id!r} is listed twice", path)
        seen.add(sample_id)
    return ids


def read_voc_index(root: str | Path) -> VocIndex:
    """Class names and split lists of a VOC-layout directory (no image is opened)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError("no such directory", root)
    for sub in (IMAGE_DIR, MASK_DIR):
        if not (root / sub).is_dir():
            raise DatasetError(f"missing {sub}/ folder (not a VOC-layout dataset)", root)
    class_names = None
    classes_path = root / CLASSES_FILE
    if classes_path.is_file():
        class_names = _read_lines(classes_path, "class list")
        if not class_names:
            raise DatasetError("empty class list", classes_path)
        if len(set(class_names)) != len(class_names):
            raise DatasetError("duplicate class name", classes_path)
        if len(class_names) > IGNORE_INDEX:
            raise DatasetError(
                f"{len(class_names)} classes: at most {IGNORE_INDEX} fit", classes_path
            )
    split_dir = root / SPLIT_DIR
    train_path = split_dir / "train.txt"
    if not train_path.is_file():
        raise DatasetError("missing split list (train.txt is required)", train_path)
    splits: dict[str, list[str] | None] = {}
    for name in ("train", "val", "test"):
        path = split_dir / f"{name}.txt"
        splits[name] = _read_id_list(path) if path.is_file() else None
    if not splits["train"]:
        raise DatasetError("empty dataset: the train list has no ids", train_path)
    seen: dict[str, str] = {}
    for name, ids in splits.items():
        for sample_id in ids or []:
            if sample_id in seen:
                raise DatasetError(
                    f"id {sample_id!r} is in both {seen[sample_id]}.txt and {name}.txt", split_dir
                )
            seen[sample_id] = name
    return VocIndex(root, class_names, splits)


def _image_path(root: Path, sample_id: str, images: dict[str, list[Path]]) -> Path:
    path = single_file(images, sample_id)
    if path is None:
        first = sample_id.split()[0] if sample_id.split() else ""
        hint = (f"; a split line is the whole id, and {first!r} is an image: remove what follows it"
                if first != sample_id and first in images else "")
        raise DatasetError(
            f"missing image for id {sample_id!r} (looked for {sample_id} with "
            f"{'/'.join(IMAGE_SUFFIXES)}, any case){hint}", root / IMAGE_DIR,
        )
    return path


def load_voc(
    root: str | Path,
    size_hw: tuple[int, int] | None,
    ids: Sequence[str],
    class_names: list[str] | None,
    max_side: int | None = None,
) -> ImageCache:
    """Decode and resize the samples `ids` into an ImageCache (3 channels); see `resize_pair`
    for `size_hw` (None: keep the aspect ratio) and `max_side`.

    Raises DatasetError on a missing image/mask, a size mismatch, a label out of range or an
    unreadable file. Splits are stratified by each image's dominant class.
    """
    root = Path(root)
    if not ids:
        raise DatasetError("empty dataset: no ids to load", root)
    images = files_by_stem(root / IMAGE_DIR, IMAGE_SUFFIXES)
    masks = files_by_stem(root / MASK_DIR, MASK_SUFFIXES)
    jobs = []
    for sample_id in ids:
        image_path = _image_path(root, sample_id, images)
        mask_path = single_file(masks, sample_id)
        if mask_path is None:
            raise DatasetError(f"missing mask {MASK_DIR}/{sample_id}.png", image_path)
        jobs.append((image_path, mask_path))

    def load_one(job: tuple[Path, Path]):
        image_path, mask_path = job
        image = open_image_as(image_path, "RGB")
        mask = mask_values(open_image(mask_path), mask_path)
        pixels, mask_resized = resize_pair(image, mask, size_hw, image_path, mask_path, max_side)
        return pixels, mask_resized, (image.height, image.width), label_histogram(mask)

    samples = parallel_map(load_one, jobs)
    sources = [str(mask_path) for _, mask_path in jobs]
    if class_names is None:
        # No classes.txt: as many classes as the largest label seen (ignore excluded) + 1.
        class_names = class_names_from_labels(np.stack([s[3] for s in samples]), sources)
    cache = build_cache(
        ids=list(ids),
        samples=samples,
        class_names=class_names,
        strata=None,
        sources=sources,
    )
    cache.check_labels()
    check_defects_labelled(cache.label_counts, cache.num_classes, sources)
    return cache


def write_voc(
    root: str | Path,
    ids: Sequence[str],
    images: np.ndarray,
    masks: np.ndarray,
    class_names: Sequence[str],
    splits: dict[str, list[str]],
    jpeg_quality: int = 95,
) -> Path:
    """Write images (uint8 [N,H,W,3]) and masks (uint8 [N,H,W]) in VOC layout, with palette
    PNG masks, `classes.txt` and one ImageSets list per split."""
    from PIL import Image

    root = Path(root)
    (root / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    (root / MASK_DIR).mkdir(parents=True, exist_ok=True)
    (root / SPLIT_DIR).mkdir(parents=True, exist_ok=True)
    palette = voc_palette()
    for sample_id, image, mask in zip(ids, images, masks):
        Image.fromarray(image).save(root / IMAGE_DIR / f"{sample_id}.jpg", quality=jpeg_quality)
        mask_image = Image.fromarray(mask)
        mask_image.putpalette(palette)  # turns the L image into P, keeping values as indices
        mask_image.save(root / MASK_DIR / f"{sample_id}.png")
    (root / CLASSES_FILE).write_text("\n".join(class_names) + "\n", encoding="utf-8")
    for name, split_ids in splits.items():
        (root / SPLIT_DIR / f"{name}.txt").write_text(
            "".join(f"{sample_id}\n" for sample_id in split_ids), encoding="utf-8"
        )
    return root
