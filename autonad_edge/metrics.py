"""Segmentation metrics from a confusion matrix (numpy only; torch tensors are accepted).

Conventions (the AutoNAD paper's):

* mIoU and mF1 average over ALL classes, background included.
* Per class c with TP, FP, FN from the confusion matrix:
  IoU = TP / (TP + FP + FN),  F1 = 2 TP / (2 TP + FP + FN) (the Dice score),
  precision = TP / (TP + FP), recall = TP / (TP + FN).
* A class absent from both prediction and target (TP + FP + FN = 0) has no defined IoU/F1: it
  is reported as NaN and left out of the means (so a test split without, say, "fray" is not
  rewarded or punished for it). If every class is absent (no labelled pixel), means are NaN.
* Pixels whose target equals `ignore_index` are dropped before counting; predictions there do
  not matter.
* pixel accuracy = correctly labelled pixels / labelled pixels.

Rows of the matrix are target classes, columns predicted classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def _as_numpy(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor, without importing torch
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def _nan_to_none(values: Sequence[float]) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in values]


@dataclass(frozen=True)
class SegmentationMetrics:
    """The result of `ConfusionMatrix.compute()`. Per-class arrays are float64 [num_classes]."""

    miou: float
    mf1: float
    pixel_accuracy: float
    iou: np.ndarray
    f1: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    present: np.ndarray  # bool [num_classes]: class occurs in target or prediction
    matrix: np.ndarray  # int64 [num_classes, num_classes], rows = target

    def as_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-safe dict (NaN -> None). With class_names, per-class values are keyed by name."""
        count = len(self.iou)
        names = list(class_names) if class_names is not None else [str(i) for i in range(count)]
        if len(names) != count:
            raise ValueError(f"{len(names)} class names for {count} classes")

        def per_class(values: np.ndarray) -> dict[str, float | None]:
            return dict(zip(names, _nan_to_none(values.tolist())))

        scalar = _nan_to_none([self.miou, self.mf1, self.pixel_accuracy])
        return {
            "miou": scalar[0],
            "mf1": scalar[1],
            "pixel_accuracy": scalar[2],
            "iou": per_class(self.iou),
            "f1": per_class(self.f1),
            "precision": per_class(self.precision),
            "recall": per_class(self.recall),
        }


class ConfusionMatrix:
    """Accumulates a confusion matrix over batches; `compute()` gives mIoU, mF1 and friends."""

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} collides with a class index")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def reset(self) -> None:
        self.matrix[:] = 0

    def update(self, pred: Any, target: Any) -> None:
        """Add a batch. `pred`: class indices with the shape of `target`, or scores/logits with
        one extra class axis (axis 1 when target is batched [N,H,W], axis 0 for [H,W]), which
        are argmaxed. Accepts numpy arrays or torch tensors."""
        pred_np, target_np = _as_numpy(pred), _as_numpy(target)
        if pred_np.ndim == target_np.ndim + 1:
            pred_np = pred_np.argmax(axis=1 if target_np.ndim >= 3 else 0)
        if pred_np.shape != target_np.shape:
            raise ValueError(
                f"pred shape {pred_np.shape} does not match target shape {target_np.shape}"
            )
        for name, values in (("pred", pred_np), ("target", target_np)):
            if not (np.issubdtype(values.dtype, np.integer) or values.dtype == np.bool_):
                raise TypeError(f"{name} must hold integer class indices, got dtype {values.dtype}")
        target_flat = target_np.reshape(-1).astype(np.int64)
        pred_flat = pred_np.reshape(-1).astype(np.int64)
        if self.ignore_index is not None:
            keep = target_flat != self.ignore_index
            target_flat, pred_flat = target_flat[keep], pred_flat[keep]
        c = self.num_classes
        for name, values in (("target", target_flat), ("pred", pred_flat)):
            if values.size and (values.min() < 0 or values.max() >= c):
                bad = values[(values < 0) | (values >= c)][0]
                raise ValueError(f"{name} holds label {bad}, outside 0..{c - 1} (and not ignore)")
        self.matrix += np.bincount(target_flat * c + pred_flat, minlength=c * c).reshape(c, c)

    def merge(self, other: ConfusionMatrix) -> None:
        """Add another matrix's counts (e.g. from another worker)."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes} classes into {self.num_classes}")
        self.matrix += other.matrix

    def compute(self) -> SegmentationMetrics:
        return metrics_from_matrix(self.matrix)


MIN_REGION_OVERLAP = 0.1  # share of a region's pixels that must be matched for it to count as found


class RegionCounter:
    """Defect-level recall and precision: did the model find each defect at all?

    Per defect class (1..C-1) and image, the connected regions (8-connectivity,
    `scipy.ndimage.label`) of the ground truth and of the prediction are counted. A ground-truth
    region is *found* when at least `min_overlap` of its pixels are predicted as its class; a
    predicted region is *correct* when at least `min_overlap` of its pixels are that class in the
    ground truth. recall = found / ground-truth regions, precision = correct / predicted regions
    (NaN where there are none). Ignored pixels count as neither.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255,
                 min_overlap: float = MIN_REGION_OVERLAP) -> None:
        if not 0.0 < min_overlap <= 1.0:
            raise ValueError(f"min_overlap must be in (0, 1], got {min_overlap}")
        self.num_classes, self.ignore_index, self.min_overlap = num_classes, ignore_index, float(min_overlap)
        # per class: [ground-truth regions, found, predicted regions, correct]
        self.counts = np.zeros((num_classes, 4), dtype=np.int64)

    def update(self, pred: Any, target: Any) -> None:
        """One image: class indices [H, W] (or a batch [N, H, W], image by image)."""
        from scipy import ndimage

        pred_np, target_np = _as_numpy(pred), _as_numpy(target)
        if pred_np.shape != target_np.shape:
            raise ValueError(f"pred shape {pred_np.shape} does not match target shape {target_np.shape}")
        if target_np.ndim == 3:
            for p, t in zip(pred_np, target_np):
                self.update(p, t)
            return
        valid = np.ones(target_np.shape, bool) if self.ignore_index is None else target_np != self.ignore_index
        structure = np.ones((3, 3), dtype=bool)
        for c in range(1, self.num_classes):
            truth, guess = (target_np == c) & valid, (pred_np == c) & valid
            for mask, other, first in ((truth, guess, 0), (guess, truth, 2)):
                labels, n = ndimage.label(mask, structure=structure)
                if not n:
                    continue
                sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
                matched = np.bincount(labels[other], minlength=n + 1)[1:]
                self.counts[c, first] += n
                self.counts[c, first + 1] += int(np.sum(matched >= self.min_overlap * sizes))

    def as_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """{"min_overlap", "recall", "precision" (all defect classes pooled), "per_class": {name:
        {gt_regions, found, recall, predicted_regions, correct, precision}}}; NaN -> None."""
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]

        def ratio(a: int, b: int) -> float | None:
            return float(a / b) if b else None

        per_class = {}
        for c in range(1, self.num_classes):
            gt, found, predicted, correct = (int(v) for v in self.counts[c])
            per_class[names[c]] = {"gt_regions": gt, "found": found, "recall": ratio(found, gt),
                                   "predicted_regions": predicted, "correct": correct,
                                   "precision": ratio(correct, predicted)}
        total = self.counts[1:].sum(axis=0)
        return {"min_overlap": self.min_overlap, "recall": ratio(int(total[1]), int(total[0])),
                "precision": ratio(int(total[3]), int(total[2])), "per_class": per_class}


def metrics_from_matrix(matrix: np.ndarray) -> SegmentationMetrics:
    """Metrics of a confusion matrix [C, C] (rows target, columns prediction)."""
    matrix = np.asarray(matrix, dtype=np.int64)
    tp = np.diag(matrix).astype(np.float64)
    fp = matrix.sum(axis=0) - tp
    fn = matrix.sum(axis=1) - tp
    union = tp + fp + fn
    present = union > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(present, tp / union, np.nan)
        f1 = np.where(present, 2 * tp / (2 * tp + fp + fn), np.nan)
        precision = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
        recall = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
    total = matrix.sum()
    return SegmentationMetrics(
        miou=float(iou[present].mean()) if present.any() else math.nan,
        mf1=float(f1[present].mean()) if present.any() else math.nan,
        pixel_accuracy=float(tp.sum() / total) if total else math.nan,
        iou=iou,
        f1=f1,
        precision=precision,
        recall=recall,
        present=present,
        matrix=matrix.copy(),
    )


def segmentation_metrics(
    pred: Any, target: Any, num_classes: int, ignore_index: int | None = 255
) -> SegmentationMetrics:
    """One-shot metrics of a prediction against a target (see `ConfusionMatrix.update`)."""
    confusion = ConfusionMatrix(num_classes, ignore_index)
    confusion.update(pred, target)
    return confusion.compute()
