"""Decision calibration: the background logit offset that maximises validation mIoU.

The defect-aware recipe (defect-centred crops, class weights, Dice) teaches a network a defect
prior far above that of whole inspection images (Magnetic-tile: 0.03-6 % defect pixels), so at
test time it calls a band of background around every defect, and stray texture, a defect.
The fix is where a detector's threshold is set: on validation data. One constant added to the
background logit moves every pixel's decision between "background" and "some defect" at once;
the offset with the best validation mIoU is chosen and folded into the classifier's bias, so
the saved checkpoint, its ONNX export, the TensorRT engine and the bundle's ``infer.py`` all
decide with it and nothing downstream needs to know::

    calibration = calibrate(model, data.val, tile_size=128)
    apply_offset(model.classifier, calibration)        # in place; exact, see `apply_offset`
    calibration.to_dict()                              # recorded in the checkpoint and report

One scalar, chosen on a grid, is hard to overfit to a small val split; the test split is never
seen. All offsets are scored from one pass over val (one argmax per offset per batch).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from autonad_edge.metrics import ConfusionMatrix, metrics_from_matrix
from autonad_edge.space import Arch
from autonad_edge.training.evaluate import iter_logits

# Background logit offsets tried: negative ones call more defects, positive ones fewer.
OFFSETS: tuple[float, ...] = tuple(float(v) for v in np.round(np.arange(-3.0, 9.01, 0.5), 2))


@dataclass(frozen=True)
class Calibration:
    """The background logit offset chosen on a split, with the curve it was chosen from."""

    background_offset: float
    miou_before: float  # at offset 0
    miou_after: float
    split: str
    offsets: tuple[float, ...]
    miou_per_offset: tuple[float, ...]
    mf1_after: float = float("nan")

    @property
    def gain(self) -> float:
        return self.miou_after - self.miou_before

    def summary(self) -> str:
        return (f"background logit {self.background_offset:+g} (chosen on {self.split}: "
                f"mIoU {100 * self.miou_before:.2f}% -> {100 * self.miou_after:.2f}%)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Calibration":
        return cls(float(d["background_offset"]), float(d["miou_before"]), float(d["miou_after"]), str(d["split"]),
                   tuple(float(v) for v in d["offsets"]), tuple(float(v) for v in d["miou_per_offset"]),
                   float(d.get("mf1_after", float("nan"))))


def choose_offset(offsets: Sequence[float], scores: Sequence[float]) -> float:
    """The offset of the best score; among ties (within 1e-9), the one closest to 0 (the
    trained network's own decision), so a flat curve changes nothing. NaN scores lose."""
    values = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    best = values.max()
    tied = [o for o, v in zip(offsets, values) if v >= best - 1e-9]
    return float(min(tied, key=abs))


@torch.no_grad()
def calibrate(
    model: nn.Module,
    dataset: Dataset,
    arch: Arch | None = None,
    *,
    offsets: Sequence[float] = OFFSETS,
    split: str = "val",
    num_classes: int | None = None,
    ignore_index: int = 255,
    dist=None,
    **eval_options,
) -> Calibration:
    """Score every background offset in `offsets` on `dataset` in one pass and choose one.
    eval_options: those of `evaluate` (batch_size, device, tile_size, tile_overlap, amp)."""
    offsets = tuple(float(o) for o in offsets)
    if 0.0 not in offsets:
        offsets = tuple(sorted((*offsets, 0.0)))
    num_classes = int(num_classes or getattr(getattr(model, "module", model), "num_classes"))
    matrices = [ConfusionMatrix(num_classes, ignore_index) for _ in offsets]
    shift = torch.zeros(1, num_classes, 1, 1)
    for logits, masks in iter_logits(model, dataset, arch, dist=dist, **eval_options):
        for offset, confusion in zip(offsets, matrices):
            shift[0, 0] = offset
            confusion.update((logits + shift).argmax(dim=1), masks)
    stacked = np.stack([np.asarray(m.matrix, dtype=np.int64) for m in matrices])
    if dist is not None and dist.distributed:
        stacked = dist.all_reduce_sum(torch.from_numpy(stacked)).numpy()
    scores = tuple(float(metrics_from_matrix(m).miou) for m in stacked)
    chosen = choose_offset(offsets, scores)
    best = offsets.index(chosen)
    return Calibration(chosen, scores[offsets.index(0.0)], scores[best], split, offsets, scores,
                       float(metrics_from_matrix(stacked[best]).mf1))


@torch.no_grad()
def apply_offset(classifier: nn.Conv2d, calibration: Calibration | float) -> None:
    """Add the background offset to `classifier`'s class-0 bias, in place. Exact for the
    networks here: the classifier is the last layer before a bilinear resize, whose weights sum
    to one, so a constant added before it is the same constant after it."""
    offset = calibration.background_offset if isinstance(calibration, Calibration) else float(calibration)
    if classifier.bias is None:
        raise ValueError("the classifier has no bias to fold the offset into")
    classifier.bias[0] += offset


__all__ = ["Calibration", "OFFSETS", "apply_offset", "calibrate", "choose_offset"]
