"""Segmentation losses: cross-entropy over labelled pixels, optionally class-weighted.

Defect pixels are rare (on MT and the synthetic set 1-5 % of all pixels, thin scratches and
cracks far less), so a plain cross-entropy is minimised early by predicting background
everywhere; short CPU runs then never leave that floor. ``class_weighting="inverse_sqrt"``
weights class c by 1/sqrt(f_c), f_c its share of the train split's labelled pixels (the
damped inverse frequency of ENet / DeepLab practice: plain 1/f over-predicts rare classes).
Weights are scaled so the mean weight of a labelled pixel is 1, which keeps the loss on the
unweighted scale (learning rates carry over), and capped at ``MAX_WEIGHT_RATIO`` times the
smallest so one near-absent class cannot dominate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from autonad_edge.training.config import CLASS_WEIGHTINGS

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


__all__ = ["CLASS_WEIGHTINGS", "MAX_WEIGHT_RATIO", "class_weights", "masked_cross_entropy"]
