"""Normalisation and the settings of the paper's training augmentation (host side).

The augmentation (AutoNAD: random horizontal/vertical flip, random resize, random rotation,
random crop) is applied by `crops.CropDataset` as ONE affine map from crop to source pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class Normalizer:
    """Pixel values float [C, H, W] (C = 1 or 3), 0..255 minus `offset` -> normalised float32
    [3, H, W], i.e. ((pixels + offset) / 255 - mean) / std.

    One fused multiply-add; a greyscale channel is broadcast to 3 channels on the way.
    """

    def __init__(
        self,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        offset: float = 0.0,
    ) -> None:
        self.mean, self.std, self.offset = tuple(mean), tuple(std), offset
        self.scale = torch.tensor([1 / (255 * s) for s in std], dtype=torch.float32).view(3, 1, 1)
        self.neg_shift = torch.tensor(
            [(offset / 255 - m) / s for m, s in zip(mean, std)], dtype=torch.float32
        ).view(3, 1, 1)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.neg_shift, pixels, self.scale)


_DEFAULT_NORMALIZER: Normalizer | None = None


def pixels_to_float(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, C] -> float32 [C, H, W] with values 0..255 (a new tensor: the cache's
    arrays are read-only views, which torch will not wrap)."""
    return torch.tensor(pixels, dtype=torch.float32).permute(2, 0, 1)


def to_image_tensor(
    pixels: np.ndarray,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> torch.Tensor:
    """uint8 [H, W, C] (C = 1 or 3) -> normalised float32 [3, H, W]; greyscale is replicated."""
    global _DEFAULT_NORMALIZER
    if (tuple(mean), tuple(std)) == (IMAGENET_MEAN, IMAGENET_STD):
        if _DEFAULT_NORMALIZER is None:
            _DEFAULT_NORMALIZER = Normalizer()
        normalizer = _DEFAULT_NORMALIZER
    else:
        normalizer = Normalizer(mean, std)
    return normalizer(pixels_to_float(pixels))


def to_mask_tensor(mask: np.ndarray) -> torch.Tensor:
    """uint8 [H, W] -> int64 [H, W] (a copy: a mask read from a file may be read-only)."""
    return torch.from_numpy(np.asarray(mask).astype(np.int64))


@dataclass(frozen=True)
class AugmentationConfig:
    """Probabilities and ranges of the training augmentation (paper defaults, see module doc)."""

    hflip: float = 0.5  # probability of a horizontal flip
    vflip: float = 0.5  # probability of a vertical flip (defects have no "up")
    scale: tuple[float, float] = (0.75, 1.5)  # random resize factor, uniform
    rotation: float = 20.0  # max rotation in degrees, uniform in [-rotation, rotation]
