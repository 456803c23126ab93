"""Segmentation losses: cross-entropy over labelled pixels, optionally class-weighted.

Defect pixels are rare (on MT and the synthetic set 1-5 % of all pixels, thin scratches and
cracks far less), so a plain cross-entropy is minimised early by predicting background
everywhere; short CPU runs then never leave that floor. ``class_weighting="inverse_sqrt"``
weights class c by 1/sqrt(f_c), f_c its share of the train split's labelled pixels (the
damped inverse frequency of ENet / DeepLab practice: plain 1/f over-predicts rare classes).
Weights are scaled so the mean weight of a labelled pixel is 1, which keeps the loss on the
unweighted scale (learning rates carry over), and capped at ``MAX_WEIGHT_RATIO`` times the
smallest so one near-absent class cannot dominate.

Region losses (``RunConfig.loss`` in `LOSSES`) add a term that scores the overlap of a class's
predicted and true regions rather than single pixels, so a 40-pixel scratch weighs as much as
a large blotch: ``ce+dice`` (soft Dice over the defect classes) and ``ce+lovasz`` (Lovász-softmax,
a convex surrogate of the Jaccard index). `distillation_loss` is the in-place distillation of
BigNAS-style supernet training (the largest subnet teaches the sampled ones).

Every loss computes in float32: logits may be float16 under autocast, and sums over a whole
batch of pixels lose the rare classes' contributions in half precision.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from autonad_edge.training.config import CLASS_WEIGHTINGS, LOSSES

MAX_WEIGHT_RATIO = 50.0


def class_weights(frequencies: Sequence[float], method: str) -> np.ndarray | None:
    """Per-class loss weights from per-class pixel shares (summing to ~1), or None for "none".

    A class absent from the train split gets the largest weight of the present ones (it has no
    pixels to weigh; the value only matters if it appears in a later fine-tuning set)."""
    if method not in CLASS_WEIGHTINGS:
        raise ValueError(f"class_weighting must be one of {', '.join(CLASS_WEIGHTINGS)}, got {method!r}")
    if method == "none":
        return None
    freq = np.asarray(frequencies, dtype=np.float64)
    present = freq > 0
    if not present.any():
        return None
    weights = np.zeros_like(freq)
    weights[present] = 1.0 / np.sqrt(freq[present])
    weights[present] = np.minimum(weights[present], weights[present].min() * MAX_WEIGHT_RATIO)
    weights[present] /= float((weights[present] * freq[present]).sum() / freq[present].sum())
    weights[~present] = weights[present].max()
    return weights


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255,
                         weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy summed over labelled pixels (each times its class weight) divided by their
    count; 0 (not NaN) when a batch has none. Dividing by the count rather than by the summed
    weights (torch's "mean") keeps the scale of a batch independent of which classes it holds."""
    total = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=ignore_index, reduction="sum")
    count = (target != ignore_index).sum().clamp_min(1)
    return total / count




# ---- region losses ---------------------------------------------------------------------------

DICE_EPS = 1e-6


def _class_indices(classes: slice | Sequence[int] | None, num_classes: int) -> list[int]:
    """Class indices from a slice or sequence; None means the defect classes 1..C-1."""
    if classes is None:
        classes = slice(1, None)
    indices = list(range(num_classes))[classes] if isinstance(classes, slice) else [int(c) for c in classes]
    bad = [c for c in indices if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"classes {bad} out of range for {num_classes} classes")
    return indices


def _check_shapes(logits: Tensor, target: Tensor) -> None:
    if logits.dim() != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"expected logits [B,C,H,W] and target [B,H,W], got {tuple(logits.shape)} "
                         f"and {tuple(target.shape)}")


def soft_dice_loss(logits: Tensor, target: Tensor, ignore_index: int = 255,
                   classes: slice | Sequence[int] | None = None, eps: float = DICE_EPS) -> Tensor:
    """Soft Dice loss 1 - (2 sum(p g) + eps) / (sum(p) + sum(g) + eps) per class over the whole
    batch's labelled pixels (softmax probabilities p, one-hot target g), averaged over the
    `classes` (default: the defect classes 1..C-1) PRESENT in the batch's target.

    Why only present classes: a class absent from the target has sum(g) = 0, so its score is
    eps / (sum(p) + eps), ~1 for any non-zero probability mass however small; softmax mass is
    never exactly 0, so absent classes would add a near-constant ~1 that only pushes all their
    probabilities to 0. Their false positives are left to the cross-entropy this term is added
    to; a present class's false positives still count (through sum(p)). With a tiny `eps` an
    all-background prediction on a batch with a defect scores ~1 and a perfect one ~0; a batch
    with no labelled pixel (or no selected class present) gives 0, not NaN, with a graph."""
    _check_shapes(logits, target)
    num_classes = logits.shape[1]
    indices = _class_indices(classes, num_classes)
    labelled = target != ignore_index
    probs = torch.softmax(logits.float(), dim=1) * labelled.unsqueeze(1)
    onehot = F.one_hot(target.masked_fill(~labelled, 0), num_classes).permute(0, 3, 1, 2)
    onehot = onehot.float() * labelled.unsqueeze(1)
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)[indices]
    predicted, true = probs.sum(dims)[indices], onehot.sum(dims)[indices]
    dice = 1.0 - (2.0 * intersection + eps) / (predicted + true + eps)
    present = (true > 0).float()
    return (dice * present).sum() / present.sum().clamp_min(1.0)


def _lovasz_grad(fg_sorted: Tensor) -> Tensor:
    """Gradient of the Lovász extension of the Jaccard loss at errors sorted descending
    (`fg_sorted`: 1 for the class's true pixels, in that order): the increments
    J(i) - J(i-1) of the Jaccard loss of the i largest errors, via cumulative sums."""
    total = fg_sorted.sum()
    intersection = total - fg_sorted.cumsum(0)
    union = total + (1.0 - fg_sorted).cumsum(0)  # >= 1 everywhere: never divides by 0
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def lovasz_softmax_loss(logits: Tensor, target: Tensor, ignore_index: int = 255,
                        classes: str | Sequence[int] = "present") -> Tensor:
    """Lovász-softmax loss (Berman et al., CVPR 2018) over the flattened batch's labelled pixels.

    For each class c the pixel errors |g_c - p_c| are sorted descending and dotted with the
    gradient of the Lovász extension of the Jaccard loss, a tight convex surrogate of 1 - IoU_c;
    the result is averaged over `classes`: "present" (default, as in the paper: every class,
    background included, that occurs in the labelled target; an absent class has no IoU to
    optimise), "all", or a sequence of indices. Computed over the batch, not per image, so an
    image without defects does not score its (undefined) defect IoU. 0 for a batch with no
    labelled pixel."""
    _check_shapes(logits, target)
    num_classes = logits.shape[1]
    labelled = target != ignore_index
    probs = torch.softmax(logits.float(), dim=1).permute(0, 2, 3, 1)[labelled]  # [N, C]
    labels = target[labelled]
    if classes == "present":
        indices = labels.unique().tolist()
    elif classes == "all":
        indices = list(range(num_classes))
    elif isinstance(classes, str):
        raise ValueError(f"classes must be 'present', 'all' or a sequence of indices, got {classes!r}")
    else:
        indices = _class_indices(classes, num_classes)
    if labels.numel() == 0 or not indices:
        return logits.float().sum() * 0.0
    losses = []
    for c in indices:
        fg = (labels == c).float()
        errors = (fg - probs[:, c]).abs()
        errors_sorted, order = errors.sort(descending=True)
        # A sum of products, not torch.dot: autocast would run a dot product in float16.
        losses.append((errors_sorted * _lovasz_grad(fg[order])).sum())
    return torch.stack(losses).mean()


class SegmentationLoss(nn.Module):
    """The training loss named by ``RunConfig.loss``: `masked_cross_entropy` (class-weighted
    with `class_weight`) plus `region_weight` times soft Dice over the defect classes
    ("ce+dice") or Lovász-softmax over the present classes ("ce+lovasz"). The class weights
    only weigh the cross-entropy: both region terms already average over classes."""

    def __init__(self, name: str = "ce", ignore_index: int = 255, class_weight: Tensor | None = None,
                 region_weight: float = 1.0) -> None:
        super().__init__()
        if name not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {name!r}")
        if region_weight < 0:
            raise ValueError(f"region_weight must be >= 0, got {region_weight}")
        self.name = name
        self.ignore_index = ignore_index
        self.region_weight = float(region_weight)
        self.region = name.partition("+")[2] or None
        # A buffer follows the module's .to(device); kept out of state dicts (runs record it).
        weight = None if class_weight is None else torch.as_tensor(class_weight, dtype=torch.float32)
        self.register_buffer("class_weight", weight, persistent=False)

    def terms(self, logits: Tensor, target: Tensor) -> dict[str, Tensor]:
        """The unweighted terms by name ("ce", and "dice" or "lovasz"), for logging."""
        weight = self.class_weight
        if weight is not None and weight.device != logits.device:
            weight = weight.to(logits.device)
        out = {"ce": masked_cross_entropy(logits, target, self.ignore_index, weight)}
        if self.region == "dice":
            out["dice"] = soft_dice_loss(logits, target, self.ignore_index)
        elif self.region == "lovasz":
            out["lovasz"] = lovasz_softmax_loss(logits, target, self.ignore_index)
        return out

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        terms = self.terms(logits, target)
        loss = terms["ce"]
        if self.region is not None:
            loss = loss + self.region_weight * terms[self.region]
        return loss

    def extra_repr(self) -> str:
        return f"name={self.name!r}, region_weight={self.region_weight}, ignore_index={self.ignore_index}"


# ---- distillation ----------------------------------------------------------------------------


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, target: Tensor | None = None,
                      ignore_index: int = 255, temperature: float = 1.0) -> Tensor:
    """Per-pixel KL(teacher || student) of the softmax at `temperature`, times temperature^2
    (Hinton et al.: keeps the gradient scale independent of the temperature), for in-place
    distillation. The teacher is detached: in-place distillation trains the teacher (the largest
    subnet) on the ground truth only, so no gradient may reach it through this term. Averaged
    over the pixels whose `target` is not `ignore_index` (padding carries no image to agree on)
    when a target is given, else over all pixels; 0 for a batch with no labelled pixel."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits differ in shape: {tuple(student_logits.shape)} "
                         f"vs {tuple(teacher_logits.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_p = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_q = F.log_softmax(teacher_logits.detach().float() / temperature, dim=1)
    kl = F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(1)  # [B, H, W]
    if target is None:
        return kl.mean() * temperature**2
    _check_shapes(student_logits, target)
    labelled = target != ignore_index
    return (kl * labelled).sum() / labelled.sum().clamp_min(1) * temperature**2


__all__ = ["CLASS_WEIGHTINGS", "DICE_EPS", "LOSSES", "MAX_WEIGHT_RATIO", "SegmentationLoss", "class_weights",
           "distillation_loss", "lovasz_softmax_loss", "masked_cross_entropy", "soft_dice_loss"]
