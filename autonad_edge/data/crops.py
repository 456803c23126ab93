"""Defect-aware training crops: where each training sample is cut from, and the cut itself.

Defects are 0.03-6 % of an inspection image's pixels, so uniformly sampled whole images teach
a network that everything is background. Training therefore sees fixed-size crops of the
images at their training scale (aspect ratio kept, see `cache.training_scale_hw`):

- a share `defect_share` of the crops is centred (up to a small jitter) on a defect pixel.
  The class is drawn first, uniformly over the defect classes the split holds, then an image
  that contains it, then one of its pixels: a class on 20 images is seen as often as one on
  200;
- the other crops are placed uniformly at random in the item's own image, so every image is
  visited once per epoch and background texture is learnt too.

The crop and the augmentation (flip, scale, rotation: `transforms.AugmentationConfig`) are one
affine map from crop pixels to source pixels, applied with one `grid_sample`, so a crop costs
its own pixels, not the source image's. Source pixels outside the image become 0 in the
(grey-centred) image and `ignore_index` in the mask. Item `i` of epoch `e` depends only on
(seed, e, i).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from autonad_edge.data.transforms import AugmentationConfig, Normalizer, pixels_to_float, to_mask_tensor

# Sampling grey-centred pixels makes padding mid-grey, close to the mean colour, and lets a
# greyscale image be warped as 1 channel before it is normalised to 3.
GREY = 127.5


@dataclass(frozen=True)
class CropConfig:
    size: tuple[int, int]  # (height, width) of every crop: the network's training input
    defect_share: float = 0.5  # share of crops centred on a defect pixel (classes balanced)
    jitter: float = 0.25  # the defect pixel lies within +-jitter * size of the crop's centre

    def __post_init__(self) -> None:
        if not 0.0 <= self.defect_share <= 1.0:
            raise ValueError(f"defect_share must be in [0, 1], got {self.defect_share}")
        if min(self.size) < 8:
            raise ValueError(f"crop size must be at least 8x8, got {self.size}")


@dataclass(frozen=True)
class CropSpec:
    """One training crop: the image (row of the split) and the source pixel at its centre."""

    image: int
    centre_y: float
    centre_x: float
    defect_class: int | None  # the class it was centred on; None for a uniformly placed crop


class DefectIndex:
    """Per defect class: which images of a split contain it and where (flat pixel indices)."""

    def __init__(self, masks, num_classes: int) -> None:
        self.pixels: dict[int, list[tuple[int, np.ndarray]]] = {c: [] for c in range(1, num_classes)}
        for row, mask in enumerate(masks):
            flat = np.asarray(mask).ravel()
            present = np.unique(flat)
            for c in present:
                if 0 < c < num_classes:
                    self.pixels[int(c)].append((row, np.flatnonzero(flat == c).astype(np.int32)))
        self.classes = [c for c, images in self.pixels.items() if images]

    def sample(self, rng: np.random.Generator, width_of) -> tuple[int, int, int, int] | None:
        """(class, image row, y, x) of a class-balanced defect pixel; None without defects."""
        if not self.classes:
            return None
        c = self.classes[int(rng.integers(len(self.classes)))]
        images = self.pixels[c]
        row, flat = images[int(rng.integers(len(images)))]
        index = int(flat[int(rng.integers(len(flat)))])
        width = width_of(row)
        return c, row, index // width, index % width


class CropSampler:
    """Decides each training crop (deterministically from a numpy Generator)."""

    def __init__(self, masks, num_classes: int, config: CropConfig) -> None:
        self.masks = masks
        self.config = config
        self.index = DefectIndex(masks, num_classes)

    def __call__(self, item: int, rng: np.random.Generator) -> CropSpec:
        cfg = self.config
        if self.index.classes and rng.random() < cfg.defect_share:
            c, row, y, x = self.index.sample(rng, lambda r: self.masks[r].shape[1])
            jy, jx = (rng.uniform(-cfg.jitter, cfg.jitter, size=2) * np.asarray(cfg.size)).tolist()
            return CropSpec(row, y + 0.5 + jy, x + 0.5 + jx, c)
        height, width = self.masks[item].shape
        return CropSpec(item, rng.uniform(0, height), rng.uniform(0, width), None)


def _clamp_centre(centre: float, extent: float, size: int) -> float:
    """Keep a window of `extent` source pixels inside [0, size) when it fits; centre it when not."""
    if extent >= size:
        return size / 2
    return min(max(centre, extent / 2), size - extent / 2)


def crop_grid(spec: CropSpec, source_hw: tuple[int, int], crop_hw: tuple[int, int], *, scale: float = 1.0,
              angle: float = 0.0, flip_x: bool = False, flip_y: bool = False) -> torch.Tensor:
    """The `grid_sample` grid [1, h, w, 2] (align_corners=False) of a crop of `crop_hw` output
    pixels around `spec`'s centre, zoomed by `scale` (> 1 magnifies), rotated by `angle`
    radians and flipped. Output pixel q (centred coordinates) reads source pixel
    centre + F R^T q / scale."""
    (src_h, src_w), (h, w) = source_hw, crop_hw
    extent_y, extent_x = h / scale, w / scale
    cy = _clamp_centre(spec.centre_y, extent_y, src_h)
    cx = _clamp_centre(spec.centre_x, extent_x, src_w)
    cos, sin = math.cos(angle), math.sin(angle)
    fx = -1.0 if flip_x else 1.0
    fy = -1.0 if flip_y else 1.0
    qx = torch.arange(w, dtype=torch.float32) - (w - 1) / 2
    qy = torch.arange(h, dtype=torch.float32) - (h - 1) / 2
    qy, qx = torch.meshgrid(qy, qx, indexing="ij")
    # source offset = F R^T q / s, R^T = [[cos, sin], [-sin, cos]]
    sx = fx * (cos * qx + sin * qy) / scale
    sy = fy * (-sin * qx + cos * qy) / scale
    # pixel centre p (0-based) sits at p + 0.5; normalised = 2 * coord / size - 1
    gx = 2 * (cx + sx) / src_w - 1
    gy = 2 * (cy + sy) / src_h - 1
    return torch.stack([gx, gy], dim=-1)[None]


class CropDataset(Dataset):
    """The train split as defect-aware, augmented crops; call `set_epoch(e)` before each epoch."""

    def __init__(self, base, num_classes: int, config: CropConfig, seed: int,
                 augmentation: AugmentationConfig | None = None, ignore_index: int = 255) -> None:
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.base = base
        self.config = config
        self.seed = seed
        self.epoch = 0
        self.augmentation = augmentation
        self.ignore_index = ignore_index
        self.sampler = CropSampler([base.raw(i)[1] for i in range(len(base))], num_classes, config)
        self.normalizer = Normalizer(base.mean, base.std, offset=GREY)
        self._thin_masks: dict[int, tuple[np.ndarray, tuple[int, ...]]] = {}

    def _thin(self, image: int, mask: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
        """`thin_defects` of an image's mask and the classes it holds, found once per image
        (per loader worker)."""
        if image not in self._thin_masks:
            thin = thin_defects(mask, self.ignore_index)
            present = tuple(int(c) for c in np.flatnonzero(np.bincount(thin.ravel(), minlength=256)) if c)
            self._thin_masks[image] = thin, present
        return self._thin_masks[image]

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    @property
    def ids(self) -> list[str]:
        return self.base.ids

    def rng(self, index: int) -> np.random.Generator:
        # A hash of (seed, epoch, index): independent of the order a DataLoader asks in.
        return np.random.default_rng([self.seed, self.epoch, index % len(self)])

    def spec(self, index: int) -> CropSpec:
        return self.sampler(index % len(self), self.rng(index))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = self.rng(index)
        spec = self.sampler(index % len(self), rng)
        pixels, mask = self.base.raw(spec.image)
        warp = {}
        aug = self.augmentation
        if aug is not None:
            u = rng.random(4)
            warp = {
                "flip_x": bool(u[0] < aug.hflip), "flip_y": bool(u[1] < aug.vflip),
                "scale": aug.scale[0] + (aug.scale[1] - aug.scale[0]) * float(u[2]),
                "angle": math.radians(aug.rotation * (2 * float(u[3]) - 1)),
            }
        grid = crop_grid(spec, mask.shape, self.config.size, **warp)
        image = pixels_to_float(pixels).sub_(GREY)
        warped = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
        # Labels shifted by one so zero padding marks "outside", which becomes ignore.
        shifted = (to_mask_tensor(mask).to(torch.float32) + 1)[None, None]
        labels = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False)[0, 0].long() - 1
        labels[labels < 0] = self.ignore_index
        if warp.get("scale", 1.0) < 1.0:
            thin, present = self._thin(spec.image, mask)
            if present:  # most images of wide defects have none
                _keep_thin_defects(labels, thin, present, grid, self.ignore_index)
        return self.normalizer(warped), labels


# A zoomed-out crop samples the mask less than once a source pixel: nearest sampling drops a
# 1-px crack that falls between samples while the bilinear image still shows it. A line between
# samples 1.33 px apart (the default smallest scale, 0.75) weighs at least 1/3 at the nearer.
THIN_DEFECT_WEIGHT = 0.25


def thin_defects(mask: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """The parts of `mask`'s defect regions narrower than 2 px (what an opening by a 2x2 square
    removes), labelled with their class, 0 elsewhere: the parts a sparse sampling can miss.
    A wider region is sampled at least once across at any scale above 0.5, and its edges are
    left to nearest sampling (a weight threshold there would dilate every blob)."""
    from scipy import ndimage

    thin = np.zeros_like(mask)
    for label in np.flatnonzero(np.bincount(np.asarray(mask).ravel(), minlength=256)):
        if label == 0 or label == ignore_index:
            continue
        region = mask == label
        thin[region & ~ndimage.binary_opening(region, structure=np.ones((2, 2), bool))] = label
    return thin


def _keep_thin_defects(labels: torch.Tensor, thin: np.ndarray, present: Sequence[int], grid: torch.Tensor,
                       ignore_index: int) -> None:
    """Label each pixel of a zoomed-out crop with the thin defect class (`thin_defects`) whose
    bilinear weight there is largest and at least THIN_DEFECT_WEIGHT (in place; ignored pixels
    stay ignored): the labels show a thin defect wherever the image does, as
    `cache.downscale_mask` keeps it."""
    best = torch.zeros(labels.shape, dtype=torch.float32)
    for label in present:
        binary = torch.from_numpy((thin == label).astype(np.float32))[None, None]
        weight = F.grid_sample(binary, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0]
        wins = (weight >= THIN_DEFECT_WEIGHT) & (weight > best) & (labels != ignore_index)
        labels[wins] = label
        best = torch.where(wins, weight, best)


__all__ = ["CropConfig", "CropDataset", "CropSampler", "CropSpec", "DefectIndex", "GREY", "crop_grid",
           "thin_defects"]
