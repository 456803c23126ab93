"""The training scale a data set allows: how far its images can be scaled down before its
thinnest defects stop being learnable.

Training at a smaller scale buys context per crop and cheaper evaluation, and on
Magnetic-tile it buys accuracy: one subnet trained for the same 6 400 steps reached 51.5 %
test mIoU at a long side of 224 px against 45.4 % at native size (benchmarks/RESULTS.md,
session 9). A crack one or two pixels wide, though, vanishes when scaled down. So the scale is
read from the masks: every defect class's connected regions are measured (a region's width is
the diameter of its largest inscribed disc, from the Euclidean distance transform) and the images may
shrink until the thinnest class's median region is `min_width` pixels wide; never below the
training crop, never up.

    scale = training_scale(data.train, data.num_classes, min_width=3.0, floor=128)
    scale.max_side  # None: keep the native scale
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class TrainingScale:
    """The chosen scale and the figures it was chosen from (at the scale the data was loaded)."""

    max_side: int | None  # the long side to scale the images down to; None = as loaded
    factor: float  # the downscale (1.0 = none)
    min_width: float  # the width the thinnest class keeps, in pixels
    median_long_side: int  # of the images measured
    median_widths: dict[str, float] = field(default_factory=dict)  # per defect class with regions

    @property
    def thinnest(self) -> str | None:
        return min(self.median_widths, key=self.median_widths.get) if self.median_widths else None

    def summary(self) -> str:
        if self.thinnest is None:
            return "training scale: as loaded (no defect regions to measure)"
        width = self.median_widths[self.thinnest]
        if self.max_side is None:
            return (f"training scale: as loaded (thinnest class {self.thinnest}: median region "
                    f"width {width:.1f} px, {self.min_width:g} px kept at least)")
        return (f"training scale: long side {self.max_side} px, x{self.factor:.2f} (thinnest class "
                f"{self.thinnest}: median region width {width:.1f} -> {width * self.factor:.1f} px)")


def region_widths(mask: np.ndarray, label: int) -> np.ndarray:
    """Width in pixels of each connected region of `label` in `mask` (8-connected): the
    diameter of its largest inscribed disc, ``2 d - 1`` for the largest distance ``d`` from one
    of its pixels to the nearest pixel outside it (a line one pixel wide is 1, a bar three
    pixels wide 3)."""
    regions, count = ndimage.label(mask == label, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return np.zeros(0)
    inside = ndimage.distance_transform_edt(regions > 0)
    return 2.0 * np.asarray(ndimage.maximum(inside, regions, index=np.arange(1, count + 1)), dtype=float) - 1.0


def training_scale(split, num_classes: int, *, min_width: float, floor: int,
                   class_names: Sequence[str] | None = None) -> TrainingScale:
    """The scale for a split (anything with ``len`` and ``raw(i) -> (image, mask)``): class 0 is
    background; labels outside ``1..num_classes-1`` (ignore) are not regions."""
    if min_width <= 0:
        raise ValueError(f"min_width must be positive, got {min_width}")
    names = list(class_names) if class_names is not None else [f"class{c}" for c in range(num_classes)]
    widths: dict[int, list[np.ndarray]] = {c: [] for c in range(1, num_classes)}
    sides = []
    for i in range(len(split)):
        _, mask = split.raw(i)
        sides.append(max(mask.shape))
        for c in np.unique(mask):
            if 1 <= c < num_classes:
                widths[int(c)].append(region_widths(mask, int(c)))
    medians = {names[c]: float(np.median(np.concatenate(w))) for c, w in widths.items() if w}
    long_side = int(np.median(sides)) if sides else 0
    # The smallest scale at which the thinnest class's median region keeps `min_width` pixels.
    factor = min(1.0, min_width / min(medians.values())) if medians else 1.0
    max_side = None
    if factor < 1.0:
        factor = max(factor, floor / long_side)
        max_side = int(round(factor * long_side)) if factor < 1.0 else None
    if max_side is None:
        factor = 1.0
    return TrainingScale(max_side=max_side, factor=factor, min_width=min_width,
                         median_long_side=long_side, median_widths=medians)


__all__ = ["TrainingScale", "region_widths", "training_scale"]
