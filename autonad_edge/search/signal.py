"""Can the search see accuracy? The noise of a validation score against the candidates' spread.

A search ranks candidates by val mIoU; on a small val split (59 images on Magnetic-tile) two
scores a point apart may be the same network. The noise is estimated by a bootstrap over val
images (resampling images with replacement; the mIoU of each resample from summed per-image
confusion matrices), the spread is the standard deviation of the candidates' val mIoU. When
the spread is within twice the noise, the ranking by accuracy is mostly noise and the choice
was made by latency; the report and the console say so::

    from autonad_edge.training.evaluate import image_matrices

    matrices = image_matrices(supernet, data.val, arch, background_offset=calibration.background_offset)
    signal = SearchSignal.measure(matrices, [c.miou for c in candidates], chosen.miou)
    signal.summary()     # "val mIoU noise ±1.9 points, candidates spread 0.8 points: ..."
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from autonad_edge.metrics import metrics_from_matrix

SEPARATION = 2.0  # a spread above this many noise standard deviations is a ranking by accuracy


def bootstrap_std(matrices: np.ndarray, draws: int = 200, seed: int = 0) -> float:
    """Standard deviation of the split's mIoU over `draws` bootstrap resamples of its images
    (deterministic for a seed). 0 for fewer than two images."""
    matrices = np.asarray(matrices, dtype=np.int64)
    n = len(matrices)
    if n < 2:
        return 0.0
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(draws):
        picks = np.bincount(rng.integers(0, n, n), minlength=n)
        scores.append(metrics_from_matrix(np.tensordot(picks, matrices, axes=1)).miou)
    scores = np.asarray(scores, dtype=np.float64)
    scores = scores[~np.isnan(scores)]
    return float(scores.std()) if scores.size else 0.0


@dataclass(frozen=True)
class SearchSignal:
    noise: float  # bootstrap std of one subnet's val mIoU
    spread: float  # std of the candidates' val mIoU
    best_gap: float  # val mIoU of the most accurate candidate minus the chosen one's
    candidates: int
    images: int

    @classmethod
    def measure(cls, matrices: np.ndarray, candidate_mious: Sequence[float], chosen_miou: float,
                draws: int = 200, seed: int = 0) -> "SearchSignal":
        mious = [m for m in candidate_mious if m is not None and not math.isnan(m)]
        spread = float(np.std(mious)) if len(mious) > 1 else 0.0
        best_gap = (max(mious) - chosen_miou) if mious else 0.0
        return cls(bootstrap_std(matrices, draws, seed), spread, float(best_gap), len(mious), len(matrices))

    @property
    def latency_decided(self) -> bool:
        """The candidates' accuracies differ by no more than the noise (or the noise cannot be
        told from fewer than two val images): the ranking by accuracy is not to be trusted."""
        return self.images < 2 or self.spread <= SEPARATION * self.noise

    def summary(self) -> str:
        if self.candidates < 2:
            return f"{self.candidates} candidate scored on val: nothing to compare"
        if self.images < 2:
            return (f"val holds {self.images} image: the noise of its mIoU cannot be estimated, so the "
                    f"search's ranking by accuracy is not trusted")
        head = (f"val mIoU noise ±{100 * self.noise:.1f} points ({self.images} images, bootstrap), "
                f"spread of {self.candidates} candidates {100 * self.spread:.1f} points")
        if self.latency_decided:
            return head + ": within the noise, so the choice was made on latency"
        return head + (f": the search saw accuracy (the most accurate candidate scored "
                       f"{100 * self.best_gap:.1f} points above the chosen one)")

    def to_dict(self) -> dict:
        return {**asdict(self), "latency_decided": self.latency_decided, "summary": self.summary()}

    @classmethod
    def from_dict(cls, d: dict) -> "SearchSignal":
        """The record `to_dict` wrote (its verdict and summary are derived, not read back)."""
        return cls(float(d["noise"]), float(d["spread"]), float(d["best_gap"]), int(d["candidates"]), int(d["images"]))


__all__ = ["SEPARATION", "SearchSignal", "bootstrap_std"]
