"""The training scale a data set allows: how far its images can be scaled down before its
thinnest defects stop being learnable.

Training at a smaller scale buys context per crop and cheaper evaluation, and on
Magnetic-tile it buys accuracy: one subnet trained for the same 6 400 steps reached 51.5 %
test mIoU at a long side of 224 px against 45.4 % at native size (benchmarks/RESULTS.md,
session 9). A crack one or two pixels wide, though, vanishes when scaled down. So the scale is
read from the masks: every defect class's connected regions are measured (a region's width is
the diameter of its largest inscribed disc, from the Euclidean distance transform), and the
long side may shrink to the smallest value at which the thinnest class's median region, each
scaled with its own image, is still `min_width` pixels wide; never below the training crop,
never up.

    scale = training_scale(data.train, data.num_classes, min_width=3.0, floor=128)
    scale.max_side  # None: keep the scale the data was loaded at
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class TrainingScale:
    """The chosen scale and the figures it was chosen from (at the scale the data was loaded)."""

    max_side: int | None  # the long side to scale the images down to; None = as loaded
    min_width: float  # the median width, in pixels, the thinnest class must keep
    median_long_side: int  # of the images measured
    median_widths: dict[str, float] = field(default_factory=dict)  # per defect class, as loaded
    scaled_widths: dict[str, float] = field(default_factory=dict)  # the same at max_side
    loaded_at: int | None = None  # the long-side cap the masks were loaded at (None: native size)

    @property
    def thinnest(self) -> str | None:
        return min(self.median_widths, key=self.median_widths.get) if self.median_widths else None

    @property
    def too_thin(self) -> bool:
        """The thinnest class is below `min_width` even as loaded: nothing here can keep it."""
        return bool(self.scaled_widths) and min(self.scaled_widths.values()) < self.min_width

    def summary(self) -> str:
        thinnest = self.thinnest
        loaded = "native size" if self.loaded_at is None else f"as loaded (long side at most {self.loaded_at} px)"
        if thinnest is None:
            return f"{loaded} (no defect regions to measure)"
        width = self.median_widths[thinnest]
        if self.max_side is None:
            kept = (f"under the {self.min_width:g} px the rule keeps: not scaled down" if width < self.min_width
                    else f"{self.min_width:g} px kept")
            return f"{loaded} (thinnest class {thinnest}: median region width {width:.1f} px, {kept})"
        thinnest = min(self.scaled_widths, key=self.scaled_widths.get)
        return (f"long side {self.max_side} px, from a median of {self.median_long_side} "
                f"(thinnest class {thinnest}: median region width {self.median_widths[thinnest]:.1f} -> "
                f"{self.scaled_widths[thinnest]:.1f} px)")

    def to_dict(self) -> dict:
        return {**asdict(self), "thinnest": self.thinnest, "summary": self.summary()}


def region_widths(mask: np.ndarray, label: int) -> np.ndarray:
    """Width in pixels of each connected region of `label` in `mask` (8-connected): the
    diameter of its largest inscribed disc, ``2 d - 1`` for the largest distance ``d`` from one
    of its pixels to the nearest pixel outside it (a line one pixel wide is 1, a bar three
    pixels wide 3). The image's border counts as outside: a band along an edge is as wide as
    the same band inside."""
    regions, count = ndimage.label(mask == label, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return np.zeros(0)
    inside = ndimage.distance_transform_edt(np.pad(regions > 0, 1))[1:-1, 1:-1]
    return 2.0 * np.asarray(ndimage.maximum(inside, regions, index=np.arange(1, count + 1)), dtype=float) - 1.0


def training_scale(split, num_classes: int, *, min_width: float, floor: int,
                   class_names: Sequence[str] | None = None, loaded_at: int | None = None) -> TrainingScale:
    """The scale for a split (anything with ``len`` and ``raw(i) -> (image, mask)``): class 0 is
    background; labels outside ``1..num_classes-1`` (ignore) are not regions. An image whose
    long side ``L`` exceeds the chosen side ``S`` shrinks by ``S / L``, a smaller one not at all.
    `loaded_at`: the long-side cap the split was loaded at (None: native size), for the record."""
    if not min_width > 0:
        raise ValueError(f"min_width must be positive, got {min_width}")
    names = list(class_names) if class_names is not None else [f"class{c}" for c in range(num_classes)]
    widths: dict[int, list[np.ndarray]] = {c: [] for c in range(1, num_classes)}
    sides: dict[int, list[np.ndarray]] = {c: [] for c in range(1, num_classes)}
    long_sides = []
    for i in range(len(split)):
        _, mask = split.raw(i)
        long_sides.append(max(mask.shape))
        for c in np.unique(mask):
            if 1 <= c < num_classes:
                w = region_widths(mask, int(c))
                widths[int(c)].append(w)
                sides[int(c)].append(np.full(len(w), max(mask.shape), dtype=float))
    measured = {c: (np.concatenate(widths[c]), np.concatenate(sides[c])) for c in widths if widths[c]}
    medians = {names[c]: float(np.median(w)) for c, (w, _) in measured.items()}
    median_side = int(np.median(long_sides)) if long_sides else 0

    def thinnest_at(side: int) -> float:
        return min(float(np.median(w * np.minimum(1.0, side / s))) for w, s in measured.values())

    largest = max(long_sides, default=0)
    if not measured or largest <= floor or thinnest_at(largest - 1) < min_width:
        return TrainingScale(None, min_width, median_side, medians, dict(medians), loaded_at)
    # The thinnest median grows with the side: bisect for the smallest side that keeps min_width.
    low, high = max(1, floor), largest - 1  # thinnest_at(high) >= min_width
    while low < high:
        mid = (low + high) // 2
        if thinnest_at(mid) >= min_width:
            high = mid
        else:
            low = mid + 1
    scaled = {names[c]: float(np.median(w * np.minimum(1.0, high / s))) for c, (w, s) in measured.items()}
    return TrainingScale(high, min_width, median_side, medians, scaled, loaded_at)


__all__ = ["TrainingScale", "region_widths", "training_scale"]
