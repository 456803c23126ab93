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

``per_class=True`` then refines one offset per class by coordinate ascent on the same val pass
(the pixels whose decision some offset could change are kept; confident background is
counted once), from the best background offset and from a few below it, keeping the best
end. A single background offset must serve every class: on Magnetic-tile it trades
the weakly learned large classes (break, fray, uneven) away to clean up the others; per-class
offsets let each class keep its own threshold. A move must gain `MIN_CLASS_GAIN` of val mIoU,
so noise alone does not shift a class. Retraining's final calibration uses it; the search
scores candidates with the background offset alone (one pass, no refinement per candidate).

One offset per class is several parameters fitted to a small split, so the refinement must
also hold on images it was not chosen on (`check_holdout`): val's images alternate between two
halves, each half chooses its background offset and its class offsets, and the other half
scores both. Where the class offsets lose on average, the background offset alone is kept. On
the synthetic default run (36 val images) they lost test mIoU in all four runs checked (0.4-0.8
points below the background offset alone); on Magnetic-tile they gained 1.2 points (session 19).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
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
# Per-class refinement: each class's offset moves by these steps around its start (the
# background offset for class 0, 0 for the defect classes), in `CLASS_PASSES` rounds over
# the classes; a move must raise val mIoU by MIN_CLASS_GAIN (0.1 points).
CLASS_STEPS: tuple[float, ...] = tuple(float(v) for v in np.round(np.arange(-2.0, 2.01, 0.5), 2))
CLASS_PASSES = 2
MIN_CLASS_GAIN = 1e-3
# The refinement also starts this far below the best background offset, and keeps the best
# end: from the best single offset alone it can stay where that offset silenced a weakly
# learned class (Magnetic-tile, benchmarks/RESULTS.md session 11: from +4, 26.0 % val mIoU with
# fray at 0; the same search from +1.5 reached 26.7 % and kept fray).
START_STEPS_BELOW: tuple[float, ...] = (1.0, 2.0, 3.0)
# Logits kept for the refinement (float32 values, pixels x classes; 72 MB): beyond it pixels
# are thinned at random and the kept ones weighted up, so memory stays bounded on large val
# splits and many classes.
MAX_KEPT_VALUES = 18_000_000


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
    # The per-class refinement (`calibrate(per_class=True)`): one offset per class, class 0's
    # included, and the mIoU the background offset alone reached; () / NaN without it.
    class_offsets: tuple[float, ...] = ()
    miou_background_only: float = float("nan")
    # What the class offsets gained over the background offset alone on the val half they were
    # not chosen on (mean of both halves); <= 0 declines them. None: not checked.
    holdout_gain: float | None = None
    # Defect classes with no pixel in the split: not scored and their offsets left at 0 (`val_miou`).
    unscored_classes: tuple[int, ...] = ()

    @property
    def gain(self) -> float:
        return self.miou_after - self.miou_before

    def logit_offsets(self, num_classes: int) -> tuple[float, ...]:
        """What is added to each class's logit: the per-class offsets, or the background's alone."""
        if self.class_offsets:
            if len(self.class_offsets) != num_classes:
                raise ValueError(f"the calibration has {len(self.class_offsets)} class offsets, "
                                 f"the network {num_classes} classes")
            return self.class_offsets
        return (self.background_offset,) + (0.0,) * (num_classes - 1)

    @property
    def declined_class_offsets(self) -> bool:
        """The per-class refinement ran and did not hold on held-out val images."""
        return not self.class_offsets and self.holdout_gain is not None

    def summary(self) -> str:
        chosen = f"background logit {self.background_offset:+g}"
        if self.class_offsets:
            chosen = "class logits " + " ".join(f"{v:+g}" for v in self.class_offsets)
        declined = (f"; class offsets declined: {100 * self.holdout_gain:+.2f} points on held-out val images"
                    if self.declined_class_offsets else "")
        unscored = (f"; class {', '.join(str(c) for c in self.unscored_classes)} not in {self.split}: not calibrated"
                    if self.unscored_classes else "")
        return (f"{chosen} (chosen on {self.split}: mIoU {100 * self.miou_before:.2f}% -> "
                f"{100 * self.miou_after:.2f}%{declined}{unscored})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Calibration":
        return cls(float(d["background_offset"]), float(d["miou_before"]), float(d["miou_after"]), str(d["split"]),
                   tuple(float(v) for v in d["offsets"]), tuple(float(v) for v in d["miou_per_offset"]),
                   float(d.get("mf1_after", float("nan"))),
                   tuple(float(v) for v in d.get("class_offsets") or ()),
                   float(d.get("miou_background_only", float("nan"))),
                   None if d.get("holdout_gain") is None else float(d["holdout_gain"]),
                   tuple(int(c) for c in d.get("unscored_classes") or ()))


def val_miou(matrix: np.ndarray) -> float:
    """What calibration maximises: the mean IoU of the classes the split holds pixels of. A class
    absent from val has IoU 0 as soon as it is predicted anywhere and none (not counted) when it
    never is, so the usual mIoU gains by silencing it: the deployed network would never call a
    defect that val merely lacks (a rare class carved into train only). Its false alarms still
    cost the background's IoU."""
    metrics = metrics_from_matrix(matrix)
    held = metrics.matrix.sum(axis=1) > 0
    return float(metrics.iou[held].mean()) if held.any() else float(metrics.miou)


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
    per_class: bool = False,
    check_holdout: bool = True,
    **eval_options,
) -> Calibration:
    """Score every background offset in `offsets` on `dataset` in one pass and choose one;
    with `per_class`, then refine one offset per class on the same pass, kept only if it holds
    on held-out val images when `check_holdout` (module doc).
    eval_options: those of `evaluate` (batch_size, device, tile_size, tile_overlap, amp)."""
    offsets = tuple(sorted({float(o) for o in offsets} | {0.0}))
    num_classes = int(num_classes or getattr(getattr(model, "module", model), "num_classes"))
    # Under DDP each rank sees only its share of val: the background offset (all-reduced) alone.
    refine = per_class and num_classes > 1 and not (dist is not None and dist.distributed)
    # A background pixel whose threshold is below this never turns defect under any offsets
    # the refinement tries: it is counted, not kept.
    floor = min(offsets) + min(CLASS_STEPS) - max(CLASS_STEPS)
    kept = _KeptPixels(num_classes, floor) if refine else None
    counts = _threshold_counts(model, dataset, arch, offsets, num_classes, ignore_index, dist, eval_options, kept)
    stacked = _matrices(counts, len(offsets))
    scores = tuple(val_miou(m) for m in stacked)
    held = stacked[0].sum(axis=1) > 0
    unscored = tuple(c for c in range(1, num_classes) if not held[c]) if held.any() else ()
    if held.any() and not held[1:].any():
        # No defect pixel in val: the score is the background's IoU alone, which the largest
        # offset maximises by silencing every defect. Nothing to tune on: the network's own.
        zero = offsets.index(0.0)
        return Calibration(0.0, scores[zero], scores[zero], split, offsets, scores,
                           float(metrics_from_matrix(stacked[zero]).mf1), unscored_classes=unscored)
    chosen = choose_offset(offsets, scores)
    best = offsets.index(chosen)
    calibration = Calibration(chosen, scores[offsets.index(0.0)], scores[best], split, offsets, scores,
                              float(metrics_from_matrix(stacked[best]).mf1), unscored_classes=unscored)
    if kept is None:
        return calibration
    class_offsets, refined = _refine(kept, chosen, offsets)
    moved = class_offsets != tuple(round(v, 6) for v in (chosen,) + (0.0,) * (num_classes - 1))
    gain = _holdout_gain(kept, offsets) if check_holdout and moved else None
    if gain is not None and gain <= 0:
        return replace(calibration, miou_background_only=calibration.miou_after, holdout_gain=gain)
    return replace(calibration, miou_after=val_miou(refined.matrix), mf1_after=float(refined.mf1),
                   class_offsets=class_offsets, miou_background_only=calibration.miou_after, holdout_gain=gain)


def _refine(kept: "_KeptPixels", background_offset: float, offsets: Sequence[float]):
    """The per-class offsets from the background offset and from the starts below it (the
    best end), and their metrics on `kept`."""
    class_offsets, matrix = _refine_per_class(kept, background_offset)
    refined = metrics_from_matrix(matrix)
    # Starts stay on the scored grid: `kept`'s floor assumes none below min(offsets).
    for start in (background_offset - step for step in START_STEPS_BELOW if background_offset - step >= min(offsets)):
        other_offsets, other = _refine_per_class(kept, start)
        other_metrics = metrics_from_matrix(other)
        if val_miou(other) > val_miou(refined.matrix) + MIN_CLASS_GAIN:  # gain as much as a move must
            class_offsets, refined = other_offsets, other_metrics
    return class_offsets, refined


def _holdout_gain(kept: "_KeptPixels", offsets: Sequence[float]) -> float | None:
    """Mean val mIoU the class offsets chosen on one half of val's images gain over the
    background offset chosen on that half, scored on the other half; None with one half empty."""
    halves = (kept.half(0), kept.half(1))
    if not (halves[0].size and halves[1].size):
        return None
    gains = []
    for fit, check in (halves, halves[::-1]):
        background = _best_background_offset(fit, offsets)
        class_offsets, _ = _refine(fit, background, offsets)
        single = (background,) + (0.0,) * (kept.num_classes - 1)
        gains.append(check.miou(class_offsets) - check.miou(single))
    return float(np.mean(gains))


def _best_background_offset(kept: "_KeptPixels", offsets: Sequence[float]) -> float:
    rest = (0.0,) * (kept.num_classes - 1)
    return choose_offset(offsets, [kept.miou((float(b),) + rest) for b in offsets])


class _KeptPixels:
    """The val pixels whose decision an offset could change, their logits and weights (1, or
    more once thinned to stay within MAX_KEPT_VALUES), and the count of the rest: background
    pixels that stay background. `limit`: pixels (default MAX_KEPT_VALUES // num_classes)."""

    def __init__(self, num_classes: int, floor: float, limit: int | None = None) -> None:
        self.num_classes, self.floor = num_classes, floor
        self.limit = int(limit) if limit is not None else MAX_KEPT_VALUES // num_classes
        self.logits: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        self.size = 0
        self.rate = 1.0  # share of the eligible pixels kept (halved whenever the limit is hit)
        self.halves: list[torch.Tensor] = []  # each kept pixel's half of val (0/1, by image)
        # Weight of the confident background pixels (always right), per half of val.
        self.half_background = [0.0, 0.0]
        self.generator = torch.Generator().manual_seed(0)

    def add(self, logits: torch.Tensor, target: torch.Tensor, threshold: torch.Tensor,
            half: torch.Tensor | None = None) -> None:
        """logits [N, C], target [N] (labelled pixels only), threshold [N] = max defect - background,
        half [N]: the half of val each pixel's image is in (default 0)."""
        half = torch.zeros_like(target, dtype=torch.uint8) if half is None else half.to(torch.uint8)
        confident = (target == 0) & (threshold < self.floor)
        for k in (0, 1):
            self.half_background[k] += float((confident & (half == k)).sum())
        logits, target, half = logits[~confident], target[~confident], half[~confident]
        if self.rate < 1.0:
            pick = torch.rand(target.numel(), generator=self.generator) < self.rate
            logits, target, half = logits[pick], target[pick], half[pick]
        self.logits.append(logits.float().contiguous())
        self.targets.append(target)
        self.halves.append(half)
        self.size += target.numel()
        while self.size > self.limit:  # thin everything kept so far by half
            self.rate /= 2
            picks = [torch.rand(t.numel(), generator=self.generator) < 0.5 for t in self.targets]
            self.logits = [lg[p] for lg, p in zip(self.logits, picks)]
            self.targets = [t[p] for t, p in zip(self.targets, picks)]
            self.halves = [h[p] for h, p in zip(self.halves, picks)]
            self.size = sum(t.numel() for t in self.targets)

    @property
    def background(self) -> float:
        return sum(self.half_background)

    def half(self, k: int) -> "_KeptPixels":
        """The pixels of val's images in half `k` (same weights), in one chunk."""
        part = _KeptPixels(self.num_classes, self.floor, self.limit)
        part.rate = self.rate
        part.half_background[k] = self.half_background[k]
        logits, target = self.pixels()
        mask = torch.cat(self.halves) == k if self.halves else torch.zeros(0, dtype=torch.bool)
        part.logits, part.targets = [logits[mask]], [target[mask]]
        part.halves = [torch.full((int(mask.sum()),), k, dtype=torch.uint8)]
        part.size = int(mask.sum())
        return part

    def pixels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All kept pixels' logits [N, C] and targets [N] (no copy when they are one chunk)."""
        if len(self.logits) == 1:
            return self.logits[0], self.targets[0]
        c = self.num_classes
        logits = torch.cat(self.logits) if self.logits else torch.zeros(0, c)
        target = torch.cat(self.targets) if self.targets else torch.zeros(0, dtype=torch.long)
        return logits, target

    def miou(self, shift: Sequence[float]) -> float:
        """Val mIoU of deciding with `shift` added to the logits."""
        logits, target = self.pixels()
        return val_miou(self.matrix(logits, target, torch.tensor(shift, dtype=torch.float32)))

    def matrix(self, logits: torch.Tensor, target: torch.Tensor, shift: torch.Tensor) -> np.ndarray:
        """The (weighted) confusion matrix of deciding with `shift` added to the logits."""
        c = self.num_classes
        prediction = (logits + shift).argmax(dim=1)
        counts = torch.bincount(target * c + prediction, minlength=c * c).double() / self.rate
        counts[0] += self.background
        return counts.reshape(c, c).numpy()


def _refine_per_class(kept: _KeptPixels, background_offset: float) -> tuple[tuple[float, ...], np.ndarray]:
    """Coordinate ascent on val mIoU over one offset per class, starting from the background
    offset alone; returns the offsets and their confusion matrix."""
    c = kept.num_classes
    logits, target = kept.pixels()
    start = [float(background_offset)] + [0.0] * (c - 1)
    current = list(start)

    def score(values: list[float]) -> tuple[float, np.ndarray]:
        matrix = kept.matrix(logits, target, torch.tensor(values, dtype=torch.float32))
        return val_miou(matrix), matrix

    best, best_matrix = score(current)
    # A defect class val has no pixel of keeps its offset: nothing here can tell its threshold.
    held = [cls for cls in range(c) if cls == 0 or bool((target == cls).any())]
    for _ in range(CLASS_PASSES):
        moved = False
        for cls in held:
            for step in CLASS_STEPS:
                trial = list(current)
                trial[cls] = float(start[cls] + step)
                if trial[cls] == current[cls]:
                    continue
                value, matrix = score(trial)
                if value > best + MIN_CLASS_GAIN:
                    best, best_matrix, current, moved = value, matrix, trial, True
        if not moved:
            break
    return tuple(round(v, 6) for v in current), best_matrix


def _threshold_counts(model, dataset, arch, offsets, num_classes, ignore_index, dist, eval_options,
                      kept: "_KeptPixels | None" = None) -> np.ndarray:
    """Pixel counts by (target class, best defect class, offset bin) [C, C, K+1], from which
    every offset's confusion matrix follows (`_matrices`), in one pass and one bincount a batch.

    With the background logit shifted by b a pixel is background iff l0 + b >= max_c>0 l_c
    (argmax takes the first of equal values), i.e. iff b >= t = max_c>0 l_c - l0; else it is
    its best defect class d. Bin k of a pixel is the first offset >= t. `kept`, if given,
    receives the labelled pixels for the per-class refinement."""
    k_bins = len(offsets) + 1
    grid = torch.tensor(offsets, dtype=torch.float32)
    counts = torch.zeros(num_classes * num_classes * k_bins, dtype=torch.int64)
    images = 0  # images seen so far: they alternate between the two halves of `kept`
    for logits, masks in iter_logits(model, dataset, arch, dist=dist, **eval_options):
        target = masks.reshape(-1).long()
        keep = target != ignore_index
        if num_classes == 1:
            defect = torch.zeros_like(target)
            bins = torch.zeros_like(target)
            threshold = None
        else:
            best, defect = logits[:, 1:].max(dim=1)
            defect = defect.reshape(-1) + 1
            threshold = (best - logits[:, 0]).reshape(-1).contiguous()
            bins = torch.searchsorted(grid, threshold)
        target, defect, bins = target[keep], defect[keep], bins[keep]
        if target.numel() and (target.min() < 0 or target.max() >= num_classes):
            bad = target[(target < 0) | (target >= num_classes)][0]
            raise ValueError(f"target holds label {int(bad)}, outside 0..{num_classes - 1} (and not ignore)")
        counts += torch.bincount((target * num_classes + defect) * k_bins + bins, minlength=counts.numel())
        if kept is not None and threshold is not None:
            batch = masks.shape[0]
            half = ((torch.arange(batch) + images) % 2).repeat_interleave(masks[0].numel())
            flat = logits.permute(0, 2, 3, 1).reshape(-1, num_classes)
            kept.add(flat[keep], target, threshold[keep], half[keep])
        images += masks.shape[0]
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
    """Add the calibration's logit offsets (a float: the background's) to `classifier`'s bias,
    in place. Exact for the networks here: the classifier is the last layer before a bilinear
    resize, whose weights sum to one, so a constant added before it is the same after it."""
    if classifier.bias is None:
        raise ValueError("the classifier has no bias to fold the offset into")
    if isinstance(calibration, Calibration):
        shift = calibration.logit_offsets(classifier.bias.numel())
        classifier.bias += torch.tensor(shift, dtype=classifier.bias.dtype, device=classifier.bias.device)
    else:
        classifier.bias[0] += float(calibration)


__all__ = ["CLASS_STEPS", "Calibration", "OFFSETS", "apply_offset", "calibrate", "choose_offset"]
