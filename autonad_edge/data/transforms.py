"""Normalisation and the paper's training augmentation, as cheap torch ops (host side).

The augmentation (AutoNAD: random horizontal/vertical flip, random resize, random rotation,
random crop back to size) is composed into ONE affine map and applied with one `grid_sample`
per tensor: bilinear for the image, nearest for the mask, with the same sampling grid so the
two stay aligned. Pixels that come from outside the source image become 0 in the normalised
image (the mean colour) and `ignore_index` in the mask, so the loss never learns from padding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

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
    """uint8 [H, W, C] -> float32 [C, H, W] with values 0..255."""
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float()


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
    """uint8 [H, W] -> int64 [H, W]."""
    return torch.from_numpy(np.ascontiguousarray(mask)).long()


@dataclass(frozen=True)
class AugmentationConfig:
    """Probabilities and ranges of the training augmentation (paper defaults, see module doc)."""

    hflip: float = 0.5  # probability of a horizontal flip
    vflip: float = 0.5  # probability of a vertical flip (defects have no "up")
    scale: tuple[float, float] = (0.75, 1.5)  # random resize factor, uniform
    rotation: float = 20.0  # max rotation in degrees, uniform in [-rotation, rotation]


@dataclass(frozen=True)
class AffineParams:
    flip_x: bool
    flip_y: bool
    scale: float
    angle: float  # radians
    shift_x: float  # crop offset, in output pixels, from the centred position
    shift_y: float


class Augmentation:
    """Random flip + resize + rotation + crop-to-size of an (image, mask) pair.

    Works on any float image [C, H, W]; regions from outside the source are 0 in the image (pass
    a normalised image, or one centred on grey, so that 0 is a neutral colour) and
    `ignore_index` in the mask. Deterministic given the torch Generator passed to `__call__`.
    """

    def __init__(self, config: AugmentationConfig | None = None, ignore_index: int = 255) -> None:
        self.config = config or AugmentationConfig()
        self.ignore_index = ignore_index
        self._base_grids: dict[tuple[int, int], torch.Tensor] = {}
        low, high = self.config.scale
        if not 0 < low <= high:
            raise ValueError(f"scale range must satisfy 0 < low <= high, got {self.config.scale}")

    def sample(self, height: int, width: int, generator: torch.Generator) -> AffineParams:
        u = torch.rand(6, generator=generator, dtype=torch.float64).tolist()
        cfg = self.config
        scale = cfg.scale[0] + (cfg.scale[1] - cfg.scale[0]) * u[2]
        angle = math.radians(cfg.rotation * (2 * u[3] - 1))
        # The scaled image is scale*W wide: the crop window (W) slides over it when zoomed in,
        # the shrunken image slides inside the window when zoomed out.
        shift_x = (2 * u[4] - 1) * abs(scale - 1) * width / 2
        shift_y = (2 * u[5] - 1) * abs(scale - 1) * height / 2
        return AffineParams(u[0] < cfg.hflip, u[1] < cfg.vflip, scale, angle, shift_x, shift_y)

    @staticmethod
    def theta(params: AffineParams, height: int, width: int) -> torch.Tensor:
        """The 2x3 `affine_grid` matrix (output -> input, normalised coordinates).

        In centred pixel coordinates the forward map is q_out = s R F q_in - c (flip F, scale s,
        rotation R, crop shift c), so q_in = F R^T (q_out + c) / s. Conjugating with
        D = diag(W/2, H/2) converts it to normalised coordinates without distorting
        rotations of non-square images.
        """
        cos, sin = math.cos(params.angle), math.sin(params.angle)
        fx = -1.0 if params.flip_x else 1.0
        fy = -1.0 if params.flip_y else 1.0
        # A = F R^T / s
        a = np.array([[fx * cos, fx * sin], [-fy * sin, fy * cos]]) / params.scale
        d = np.diag([width / 2, height / 2])
        d_inv = np.diag([2 / width, 2 / height])
        linear = d_inv @ a @ d
        offset = d_inv @ a @ np.array([params.shift_x, params.shift_y])
        return torch.tensor(np.concatenate([linear, offset[:, None]], axis=1), dtype=torch.float32)

    def grid(self, params: AffineParams, height: int, width: int) -> torch.Tensor:
        """The sampling grid [1, H, W, 2], as `F.affine_grid` would make it (but a cached base
        grid and one matmul are several times faster on CPU)."""
        key = (height, width)
        base = self._base_grids.get(key)
        if base is None:
            xs = (torch.arange(width, dtype=torch.float32) * 2 + 1) / width - 1
            ys = (torch.arange(height, dtype=torch.float32) * 2 + 1) / height - 1
            columns = xs.expand(height, width)
            rows = ys[:, None].expand(height, width)
            base = torch.stack([columns, rows, torch.ones(height, width)], dim=-1).reshape(-1, 3)
            self._base_grids[key] = base
        theta = self.theta(params, height, width)
        return (base @ theta.T).view(1, height, width, 2)

    def apply(
        self, image: torch.Tensor, mask: torch.Tensor, params: AffineParams
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Warp image [C,H,W] (float, padded with 0) and mask [H,W] (padded with ignore)."""
        height, width = mask.shape[-2:]
        grid = self.grid(params, height, width)
        warped = F.grid_sample(
            image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )[0]
        # Shift labels by one so that zero padding marks "outside", then map it to ignore.
        shifted = (mask.to(torch.float32) + 1)[None, None]
        labels = F.grid_sample(
            shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False
        )[0, 0].long() - 1
        labels[labels < 0] = self.ignore_index
        return warped, labels

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        params = self.sample(mask.shape[-2], mask.shape[-1], generator)
        return self.apply(image, mask, params)
