"""Sliding-window (tiled, overlapping) inference, so an image of any size runs in bounded memory.

    tiles = plan_tiles(517, 1283, tile=320, overlap=80)           # windows + keep regions
    logits = tiled_logits(model, image, tile=320)                  # [C, H, W] float32, CPU
    logits = predict_logits(model, image, tile=320, max_side=1024) # at the image's own size
    logits = predict_logits(model, image, tile=None, squash_hw=(320, 320))  # a squash-trained model

The network sees square-ish windows of at most `tile` pixels a side; each window's output is
used only on its `keep` region, which stops at the middle of the overlap with its neighbour, so
every pixel comes from the tile where it is furthest from a window border (the border has the
least context). Nothing is squashed to a square: thin 1-2 px cracks keep their width. A model
trained on images squashed to its input size (keep_aspect false) is the exception: it is
inferred the way it learnt, each image squashed to that size as one window.
The deployment bundle's ``infer.py`` re-implements the planner (it must not import this package).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from autonad_edge.data.cache import training_scale_hw

Box = tuple[int, int, int, int]  # (y0, x0, y1, x1), end-exclusive
Forward = Callable[[Tensor], Tensor]
MIN_TILE = 8


@dataclass(frozen=True)
class Tile:
    """One network input: `window` is the region the network sees, `keep` the region of the
    image whose output this tile supplies (inside `window`; the keeps of a plan partition the
    image)."""

    window: Box
    keep: Box

    @property
    def window_hw(self) -> tuple[int, int]:
        y0, x0, y1, x1 = self.window
        return y1 - y0, x1 - x0


def _axis_spans(length: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(window start, window end, keep start, keep end) along one axis: windows of
    min(tile, length), stride tile - overlap, the last flush with the end; keeps cut at the
    middle of each overlap."""
    if length <= tile:
        return [(0, length, 0, length)]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride)) + [length - tile]
    cuts = [(nxt + prev + tile) // 2 for prev, nxt in zip(starts, starts[1:])]
    keep_starts, keep_ends = [0, *cuts], [*cuts, length]
    return [(s, s + tile, k0, k1) for s, k0, k1 in zip(starts, keep_starts, keep_ends)]


def resolve_overlap(tile: int, overlap: int | None) -> int:
    """`overlap` checked against `tile` (None: a quarter of the tile, enough context at the
    keep border for the decoder's receptive field). Raises ValueError for a bad pair, so a
    run fails before its first image rather than at its first large one."""
    if tile < MIN_TILE:
        raise ValueError(f"tile must be at least {MIN_TILE} pixels, got {tile}")
    overlap = tile // 4 if overlap is None else int(overlap)
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in 0..tile-1 ({tile - 1}), got {overlap}")
    return overlap


def plan_tiles(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """The tiles (row-major) covering a `height` x `width` image: windows of side
    min(tile, dim), overlapping by at least `overlap`; their keep regions partition the image.
    An image that fits is one tile, the whole image."""
    if height < 1 or width < 1:
        raise ValueError(f"the image must be at least 1x1, got {height}x{width}")
    overlap = resolve_overlap(int(tile), overlap)
    rows = _axis_spans(int(height), int(tile), int(overlap))
    cols = _axis_spans(int(width), int(tile), int(overlap))
    return [Tile((wy0, wx0, wy1, wx1), (ky0, kx0, ky1, kx1))
            for wy0, wy1, ky0, ky1 in rows for wx0, wx1, kx0, kx1 in cols]


def _as_chw(image: Tensor) -> Tensor:
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 3:
        raise ValueError(f"expected an image [3,H,W] or [1,3,H,W], got shape {tuple(image.shape)}")
    return image


def _batches(tiles: list[Tile], batch_size: int) -> list[list[Tile]]:
    """Tiles grouped by window size (a batch must stack), at most `batch_size` per group."""
    by_size: dict[tuple[int, int], list[Tile]] = {}
    for t in tiles:
        by_size.setdefault(t.window_hw, []).append(t)
    return [group[i:i + batch_size] for group in by_size.values()
            for i in range(0, len(group), batch_size)]


@torch.no_grad()
def forward_at_tile(forward: Forward, x: Tensor, tile: int) -> Tensor:
    """`forward` of a batch [B,3,h,w] whose sides may be shorter than `tile`, as the exported
    network (a fixed tile-sized input) sees it: zero-padded at the bottom and right (zero is the
    normalised mean colour), the output cropped back. The bundle's infer.py pads the same way,
    so what is evaluated here is what is deployed."""
    h, w = x.shape[-2:]
    if h >= tile and w >= tile:
        return forward(x)
    return forward(F.pad(x, (0, max(0, tile - w), 0, max(0, tile - h))))[..., :h, :w]


def tiled_logits(
    forward: Forward,
    image: Tensor,
    tile: int | None,
    overlap: int | None = None,
    batch_size: int = 8,
    *,
    device: torch.device | str | None = None,
) -> Tensor:
    """float32 [C, H, W] logits (CPU) of `image` ([3,H,W] or [1,3,H,W]) from `forward` (a batch
    [B,3,h,w] -> logits [B,C,h,w]) run over overlapping tiles. tile=None: one forward of the
    whole image. overlap: default tile // 4. device: where the tiles run (default: the
    image's). Memory: the output plus one batch of tiles."""
    image = _as_chw(image)
    device = torch.device(device) if device is not None else image.device
    height, width = image.shape[-2:]
    if tile is None:
        return forward(image[None].to(device))[0].float().cpu()
    tiles = plan_tiles(height, width, tile, resolve_overlap(tile, overlap))
    out: Tensor | None = None
    for batch in _batches(tiles, max(1, int(batch_size))):
        x = torch.stack([image[:, y0:y1, x0:x1] for y0, x0, y1, x1 in (t.window for t in batch)])
        logits = forward_at_tile(forward, x.to(device), tile).float().cpu()
        if out is None:
            out = torch.empty(logits.shape[1], height, width, dtype=torch.float32)
        for t, tile_logits in zip(batch, logits):
            (wy0, wx0, _, _), (ky0, kx0, ky1, kx1) = t.window, t.keep
            out[:, ky0:ky1, kx0:kx1] = tile_logits[:, ky0 - wy0:ky1 - wy0, kx0 - wx0:kx1 - wx0]
    assert out is not None  # a plan has at least one tile
    return out


def scale_for_inference(image_hw: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """The (height, width) an image of `image_hw` is inferred at: its training scale (long side
    down to `max_side`, aspect kept; None = native)."""
    return training_scale_hw(int(image_hw[0]), int(image_hw[1]), max_side)


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of [C,H,W]; antialiased when shrinking, as PIL scales the training data."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=shrink)[0]


@torch.no_grad()
def predict_logits(
    forward: Forward,
    image: Tensor,
    *,
    tile: int | None,
    overlap: int | None = None,
    max_side: int | None = None,
    squash_hw: tuple[int, int] | None = None,
    batch_size: int = 8,
    device: torch.device | str | None = None,
) -> Tensor:
    """float32 [C, H, W] logits (CPU) of a normalised `image` [3,H,W] at its ORIGINAL size:
    scaled to the training scale (`max_side`), tiled (`tiled_logits`), resized back bilinearly.
    squash_hw: the model was trained on images squashed to this (height, width); the image is
    resized to exactly that and run as one window (`tile`, `overlap` and `max_side` unused)."""
    logits, size = _logits_at_scale(forward, image, tile, overlap=overlap, max_side=max_side, squash_hw=squash_hw,
                                    batch_size=batch_size, device=device)
    # Back to the image's size; antialiased where that shrinks (a squashed image smaller than
    # the model's input), as the bundle's infer.py resizes with PIL.
    return _resize(logits, size)


@torch.no_grad()
def predict_classes(forward: Forward, image: Tensor, *, tile: int | None, **options: Any) -> Tensor:
    """int64 [H, W] class of each pixel of `image` at its ORIGINAL size: the argmax of
    `predict_logits` (the same `tile` and options: overlap, max_side, squash_hw, batch_size,
    device), with the logits resized back one class at a time, so an image scaled down for
    inference holds two float planes and the class map of its own size, not a plane a class
    (by arithmetic, a 50-Mpx image with six classes: 0.8 GB against 1.6 GB with the argmax's
    indices), as the bundle's infer.py does."""
    logits, size = _logits_at_scale(forward, image, tile, **options)
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits.argmax(dim=0)
    best = _resize(logits[:1], size)[0]
    classes = torch.zeros(size, dtype=torch.int64)
    for c in range(1, logits.shape[0]):  # the bilinear resize is per channel: the argmax is unchanged
        plane = _resize(logits[c:c + 1], size)[0]
        higher = plane > best  # ties keep the lower class, as argmax does
        classes[higher] = c
        best = torch.where(higher, plane, best)
    return classes


def _logits_at_scale(forward, image, tile, *, overlap=None, max_side=None, squash_hw=None, batch_size=8,
                     device=None):
    """The logits [C, h, w] at the scale the network learnt, and the image's own (H, W)."""
    image = _as_chw(image)
    size = tuple(image.shape[-2:])
    if squash_hw is not None:
        # The scale the network learnt: every image resized to its input, aspect not kept.
        squashed = _resize(image, (int(squash_hw[0]), int(squash_hw[1])))
        return tiled_logits(forward, squashed, None, device=device), size
    scaled = _resize(image, scale_for_inference(size, max_side))
    return tiled_logits(forward, scaled, tile, overlap, batch_size, device=device), size


__all__ = ["Tile", "forward_at_tile", "plan_tiles", "predict_classes", "predict_logits", "resolve_overlap",
           "scale_for_inference", "tiled_logits"]
