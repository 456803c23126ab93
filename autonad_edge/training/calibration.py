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
seen. All offsets are scored from one pass over val and one histogram a batch (each pixel's
decision threshold, binned on the offset grid), about the cost of one `evaluate`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from autonad_edge.metrics import metrics_from_matrix
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
    offsets = tuple(sorted({float(o) for o in offsets} | {0.0}))
    num_classes = int(num_classes or getattr(getattr(model, "module", model), "num_classes"))
    counts = _threshold_counts(model, dataset, arch, offsets, num_classes, ignore_index, dist, eval_options)
    stacked = _matrices(counts, len(offsets))
    scores = tuple(float(metrics_from_matrix(m).miou) for m in stacked)
    chosen = choose_offset(offsets, scores)
    best = offsets.index(chosen)
    return Calibration(chosen, scores[offsets.index(0.0)], scores[best], split, offsets, scores,
                       float(metrics_from_matrix(stacked[best]).mf1))


def _threshold_counts(model, dataset, arch, offsets, num_classes, ignore_index, dist, eval_options) -> np.ndarray:
    """Pixel counts by (target class, best defect class, offset bin) [C, C, K+1], from which
    every offset's confusion matrix follows (`_matrices`), in one pass and one bincount a batch.

    With the background logit shifted by b a pixel is background iff l0 + b >= max_c>0 l_c
    (argmax takes the first of equal values), i.e. iff b >= t = max_c>0 l_c - l0; else it is
    its best defect class d. Bin k of a pixel is the first offset >= t."""
    k_bins = len(offsets) + 1
    grid = torch.tensor(offsets, dtype=torch.float32)
    counts = torch.zeros(num_classes * num_classes * k_bins, dtype=torch.int64)
    for logits, masks in iter_logits(model, dataset, arch, dist=dist, **eval_options):
        target = masks.reshape(-1).long()
        keep = target != ignore_index
        if num_classes == 1:
            defect = torch.zeros_like(target)
            bins = torch.zeros_like(target)
        else:
            best, defect = logits[:, 1:].max(dim=1)
            defect = defect.reshape(-1) + 1
            bins = torch.searchsorted(grid, (best - logits[:, 0]).reshape(-1).contiguous())
        target, defect, bins = target[keep], defect[keep], bins[keep]
        if target.numel() and (target.min() < 0 or target.max() >= num_classes):
            bad = target[(target < 0) | (target >= num_classes)][0]
            raise ValueError(f"target holds label {int(bad)}, outside 0..{num_classes - 1} (and not ignore)")
        counts += torch.bincount((target * num_classes + defect) * k_bins + bins, minlength=counts.numel())
    if dist is not None and dist.distributed:
        counts = dist.all_reduce_sum(counts)
    return counts.reshape(num_classes, num_classes, k_bins).numpy()


def _matrices(counts: np.ndarray, n_offsets: int) -> np.ndarray:
    """Confusion matrices [K, C, C] for each offset j from `_threshold_counts`: pixels of bin
    k <= j are called background, the others their best defect class."""
    c = counts.shape[0]
    cumulative = np.cumsum(counts, axis=2)  # [C(target), C(defect), K+1]: bins 0..k
    total = cumulative[:, :, -1]
    out = np.zeros((n_offsets, c, c), dtype=np.int64)
    for j in range(n_offsets):
        background = cumulative[:, :, j]  # pixels with t <= offsets[j]
        out[j, :, 0] = background.sum(axis=1)
        out[j, :, 1:] += (total - background)[:, 1:]
    return out


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
