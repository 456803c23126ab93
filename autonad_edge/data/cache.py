"""The in-memory image cache and the file reading shared by the dataset formats (numpy + PIL).

Every image is decoded and resized exactly once, into one uint8 array; training then only
slices that array and applies cheap tensor ops. A few hundred 320x320 images take tens of MB,
and a 2-core machine spends its time in the model rather than in JPEG decoding.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from autonad_edge.data.errors import DatasetError

IGNORE_INDEX = 255
# Said wherever a mask label is refused: the usual cause is a mask saved as a picture.
CLASS_INDEX_HINT = (
    "mask values must be class indices (0 = background, 1..N defects), not an anti-aliased or "
    "blurred drawing"
)

T = TypeVar("T")
R = TypeVar("R")


def image_size_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    """Normalise `image_size` (an int for square, or (height, width)) to (height, width)."""
    if isinstance(image_size, (int, np.integer)):
        height = width = int(image_size)
    else:
        values = [int(v) for v in image_size]
        if len(values) != 2:
            raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}")
        height, width = values
    if height < 8 or width < 8:
        raise ValueError(f"image_size must be at least 8x8, got {height}x{width}")
    return height, width


def training_scale_hw(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """The (height, width) an image of `height` x `width` is trained and inferred at: the
    aspect ratio kept, the long side scaled DOWN to `max_side` (never up; None = native).
    Thin structures survive because nothing is squashed to a square."""
    if max_side is None or max(height, width) <= max_side:
        return int(height), int(width)
    factor = max_side / max(height, width)
    return max(1, round(height * factor)), max(1, round(width * factor))


@dataclass
class ImageCache:
    """Decoded, resized samples of one dataset, in the order of `ids`.

    images:       uint8 [N, H, W, C], C = 1 (greyscale, replicated to 3 channels on use) or 3;
                  a list of [H_i, W_i, C] arrays when the samples' sizes differ
    masks:        uint8 [N, H, W] class indices, IGNORE_INDEX for "don't care" (or a list)
    native_sizes: int64 [N, 2] (height, width) of the files before resizing
    label_counts: int64 [N, 256] histogram of each mask at its native resolution
    strata:       int64 [N] class used to stratify splits (MT: folder class; else dominant class)
    sources:      the image file of each sample (None when generated in memory)
    """

    ids: list[str]
    images: np.ndarray | list[np.ndarray]
    masks: np.ndarray | list[np.ndarray]
    native_sizes: np.ndarray
    label_counts: np.ndarray
    strata: np.ndarray
    class_names: list[str]
    sources: list[str | None]

    def __post_init__(self) -> None:
        self.index_of = {sample_id: i for i, sample_id in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_pixel_counts(self) -> np.ndarray:
        """int64 [N, num_classes + 1]: native-resolution pixels per class, then ignored ones."""
        counts = self.label_counts[:, : self.num_classes]
        return np.concatenate([counts, self.label_counts[:, IGNORE_INDEX : IGNORE_INDEX + 1]], 1)

    def check_labels(self) -> None:
        """Raise DatasetError naming the first mask with a label >= num_classes (not 255)."""
        stray = self.label_counts[:, self.num_classes : IGNORE_INDEX].sum(axis=1)
        bad = np.flatnonzero(stray)
        if bad.size:
            row = int(bad[0])
            strays = self.label_counts[row, self.num_classes : IGNORE_INDEX]
            label = self.num_classes + int(np.flatnonzero(strays)[0])
            where = self.sources[row] or self.ids[row]
            raise DatasetError(
                f"mask label {label} out of range: {self.num_classes} classes "
                f"(0..{self.num_classes - 1}) and {IGNORE_INDEX} = ignore; {CLASS_INDEX_HINT}",
                where,
            )


def parallel_map(func: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """`[func(x) for x in items]` on a few threads (PIL decoding releases the GIL). The first
    failing item in order raises, so errors are deterministic."""
    workers = min(4, os.cpu_count() or 1, max(1, len(items) // 16))
    if workers <= 1:
        return [func(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(func, items))


def open_image(path: Path):  # -> PIL.Image.Image (PIL imported lazily: host-side only)
    """Open and fully decode an image file, oriented as a viewer shows it; any failure becomes
    a one-line DatasetError.

    The EXIF orientation is applied (`ImageOps.exif_transpose`): a camera stores a turned
    photo's pixels unturned with an Orientation tag, and annotation tools draw the mask on the
    view they display. Masks go through the same call, so every file is read as the user saw
    it: a PNG mask has no tag (unchanged), one that has a tag is shown turned, like its image.
    `predict` (through `open_image_as`) and the bundle's infer.py orient the same way.

    Pillow's limit is kept (it refuses images of more than 2 * Image.MAX_IMAGE_PIXELS, 179 Mpx
    by default, as decompression bombs), deliberately not raised for line-scan images: beyond
    it, predict and infer.py would hold several float32 planes of that size per class, so such
    an image is refused in one line saying to cut it into tiles.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        # No `with`: closing an image discards its decoded data; Pillow closes the file itself
        # once `load()` has read a single-frame image.
        image = Image.open(path)
        image.load()
        orientation = image.getexif().get(0x0112, 1)  # EXIF Orientation
        ImageOps.exif_transpose(image, in_place=True)
        if orientation in (5, 6, 7, 8):  # a quarter turn: a mask of the stored pixels is W x H the other way
            image.info["exif_turned"] = True
        return image
    except FileNotFoundError:
        raise DatasetError("file not found", path) from None
    except Image.DecompressionBombError as exc:
        raise DatasetError(too_large_message(exc), path) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DatasetError(f"unreadable image ({exc})", path) from None


def too_large_message(exc: Exception) -> str:
    """What to say about an image Pillow refused as a decompression bomb: its size and limit."""
    from PIL import Image

    # Pillow's message is "Image size (N pixels) exceeds limit of M pixels, ...".
    match = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(match.group(1)):,} pixels" if match else "too many pixels"
    limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    return (f"image too large to open: {size}, above Pillow's limit of {limit:,} (a guard against "
            "decompression bombs); cut it into tiles first")


# Pillow modes of more than 8 bits a channel: converting them to "L" or "RGB" clips at 255.
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def open_image_as(path: Path, mode: str | None = None):  # -> PIL.Image.Image
    """`open_image`, converted to `mode`: "L", "RGB", or None for "L" when the file is grey and
    "RGB" otherwise. An image of more than 8 bits a channel is refused in one line where its
    values do not fit 0..255: Pillow would clip them (a 16-bit image saturates to near white)
    and the network trains on 8-bit pixels."""
    image = open_image(path)
    if mode is None:
        mode = "L" if image.mode in ("L", "1", *_WIDE_MODES) else "RGB"
    if image.mode in _WIDE_MODES:
        low, high = image.getextrema()
        if low < 0 or high > 255:
            raise DatasetError(
                f"{image.mode} image with values {low:g}..{high:g}: only 8-bit images are supported; "
                f"convert it to 8-bit grey or colour first", path
            )
        if image.mode == "F" and not np.array_equal(values := np.asarray(image), np.round(values)):
            # Fractions (a 0..1 float image): converting would truncate every pixel to 0 or 1.
            raise DatasetError(
                f"floating-point image with fractional values ({low:g}..{high:g}): only 8-bit images are "
                f"supported; convert it to 8-bit 0..255 grey or colour first", path
            )
    return image if image.mode == mode else image.convert(mode)


def mask_values(image, path: Path) -> np.ndarray:
    """Label values of a mask image: palette indices for a palette PNG, grey values otherwise."""
    if image.mode in ("P", "L"):
        return np.asarray(image, dtype=np.uint8)
    if image.mode == "1":
        return np.asarray(image, dtype=np.uint8)
    if image.mode in ("I", "I;16", "I;16B", "I;16L"):
        values = np.asarray(image)
        if values.min() < 0 or values.max() > 255:
            raise DatasetError(
                f"mask values {int(values.min())}..{int(values.max())} do not fit 0..255", path
            )
        return values.astype(np.uint8)
    raise DatasetError(
        f"mask must be a palette (P) or greyscale (L) PNG of class indices, got mode {image.mode}",
        path,
    )


def downscale_mask(mask: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize a label mask to `size_hw`; when shrinking, a defect survives in every output pixel
    whose source box it covers by at least 1/(2*factor): a 1-px crack stays a connected line
    instead of the dotted remains of nearest-neighbour sampling. A small defect that covers no
    box that much (a 2x2 pit across the corners of 4x4 boxes) keeps the pixel it covers most:
    no defect region vanishes from the labels. Enlarging is nearest."""
    from PIL import Image

    height, width = size_hw
    nearest = np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))
    factor = max(mask.shape[0] / height, mask.shape[1] / width)
    if factor <= 1.0:
        return nearest
    out = np.ascontiguousarray(nearest).copy()
    best = np.zeros((height, width), dtype=np.float32)
    for label in np.unique(mask):
        if label == 0 or label == IGNORE_INDEX:
            continue
        # In float: 8-bit coverage rounds a line crossing half a box's side (3/36 at 6x) below
        # the threshold and breaks the crack into pieces. The tolerance absorbs float sums.
        binary = Image.fromarray((mask == label).astype(np.float32))
        coverage = np.asarray(binary.resize((width, height), Image.BOX), dtype=np.float32)
        wins = (coverage >= 0.5 / factor - 1e-5) & (coverage > best) & (nearest != IGNORE_INDEX)
        out[wins] = label
        best = np.maximum(best, np.where(wins, coverage, 0.0))
    _keep_every_region(mask, out, (mask.shape[0] / height, mask.shape[1] / width))
    return out


def _keep_every_region(mask: np.ndarray, out: np.ndarray, factor_hw: tuple[float, float]) -> None:
    """Give each defect region of `mask` that left no pixel of its class in the shrunk `out` the
    background pixel of `out` holding most of it (in place)."""
    from scipy import ndimage

    rows = np.minimum((np.arange(mask.shape[0]) / factor_hw[0]).astype(np.int64), out.shape[0] - 1)
    cols = np.minimum((np.arange(mask.shape[1]) / factor_hw[1]).astype(np.int64), out.shape[1] - 1)
    labels_out = out.reshape(-1)  # a view: out is contiguous
    for label in np.unique(mask):
        if label == 0 or label == IGNORE_INDEX:
            continue
        regions, count = ndimage.label(mask == label, structure=np.ones((3, 3)))
        ys, xs = np.nonzero(regions)
        region = regions[ys, xs].astype(np.int64)
        cell = rows[ys] * out.shape[1] + cols[xs]  # each defect pixel's output pixel
        kept = np.zeros(count + 1, dtype=bool)
        kept[region[labels_out[cell] == label]] = True
        lost = ~kept[region]
        if not lost.any():
            continue
        # Per lost region, its source pixels per output pixel; the most-covered free one wins.
        pairs, hits = np.unique(region[lost] * labels_out.size + cell[lost], return_counts=True)
        lost_region, lost_cell = pairs // labels_out.size, pairs % labels_out.size
        free = labels_out[lost_cell] == 0
        lost_region, lost_cell, hits = lost_region[free], lost_cell[free], hits[free]
        order = np.lexsort((-hits, lost_region))
        first = np.unique(lost_region[order], return_index=True)[1]
        labels_out[lost_cell[order][first]] = label


def resize_pair(
    image, mask: np.ndarray, size_hw: tuple[int, int] | None, image_path: Path, mask_path: Path,
    max_side: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Check that image and mask agree in size, then bring them to the training scale.

    size_hw given: squash to exactly that size (the paper's fixed-size resize). size_hw None:
    keep the aspect ratio, the long side scaled down to `max_side` (None: native pixels).
    Image bilinear, mask with `downscale_mask`."""
    from PIL import Image

    if (image.height, image.width) != mask.shape:
        turned = (image.width, image.height) == mask.shape and image.info.get("exif_turned")
        raise DatasetError(
            f"image is {image.width}x{image.height} but its mask {mask_path.name} is "
            f"{mask.shape[1]}x{mask.shape[0]} (width x height)"
            + ("; the photo's EXIF orientation turns it as a viewer shows it: draw the mask on that view"
               if turned else ""),
            image_path,
        )
    height, width = size_hw if size_hw is not None else training_scale_hw(image.height, image.width, max_side)
    if (image.height, image.width) != (height, width):
        image = image.resize((width, height), Image.BILINEAR)
        mask = downscale_mask(mask, (height, width))
    pixels = np.asarray(image, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return pixels, mask


def build_cache(
    ids: list[str],
    samples: list[tuple[np.ndarray, np.ndarray, tuple[int, int], np.ndarray]],
    class_names: list[str],
    strata: Sequence[int] | None,
    sources: list[str | None],
) -> ImageCache:
    """Stack decoded samples `(pixels, mask, native_hw, label_histogram)` into an ImageCache.

    When `strata` is None, each sample is stratified by its dominant defect class.
    """
    from autonad_edge.data.splits import dominant_class

    if not samples:
        raise DatasetError("empty dataset: no samples")
    # One array when every sample has one size (fast slicing); a list when sizes vary.
    same = len({s[1].shape for s in samples}) == 1 and len({s[0].shape for s in samples}) == 1
    images = np.stack([s[0] for s in samples]) if same else [s[0] for s in samples]
    masks = np.stack([s[1] for s in samples]) if same else [s[1] for s in samples]
    native = np.array([s[2] for s in samples], dtype=np.int64)
    counts = np.stack([s[3] for s in samples]).astype(np.int64)
    num_classes = len(class_names)
    if strata is None:
        strata = [dominant_class(row[:num_classes]) for row in counts]
    return ImageCache(
        ids=list(ids),
        images=images,
        masks=masks,
        native_sizes=native,
        label_counts=counts,
        strata=np.asarray(strata, dtype=np.int64),
        class_names=list(class_names),
        sources=list(sources),
    )


def label_histogram(mask: np.ndarray) -> np.ndarray:
    return np.bincount(mask.ravel(), minlength=256).astype(np.int64)
