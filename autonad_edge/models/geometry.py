"""The network's shapes, without torch: patch-embedding geometry, stage feature sizes and the
MixFFN width. `network` and `mix_ffn` build with these; `latency.blocks` (torch-free, imported
by agent-side tooling) splits a network into measurable units with them."""

from __future__ import annotations

from typing import Sequence

# Overlapping patch embeddings: 7x7 stride 4 into stage 1, 3x3 stride 2 into the others.
EMBED_KERNELS = (7, 3, 3, 3)
EMBED_STRIDES = (4, 2, 2, 2)


def conv_out(size: int, kernel: int, stride: int) -> int:
    """Output length of a convolution with padding kernel // 2 (the patch embeddings)."""
    pad = kernel // 2
    return (size + 2 * pad - kernel) // stride + 1


def image_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = (int(v) for v in image_size)
    return (h, w)


def feature_sizes(image_size: int | Sequence[int]) -> list[tuple[int, int]]:
    """(H, W) of the four backbone stages' outputs for an input of `image_size`."""
    h, w = image_hw(image_size)
    sizes = []
    for k, s in zip(EMBED_KERNELS, EMBED_STRIDES):
        h, w = conv_out(h, k, s), conv_out(w, k, s)
        sizes.append((h, w))
    return sizes


def ffn_hidden(channels: int, ratio: float) -> int:
    """The MixFFN's hidden width for `channels` at expansion `ratio`."""
    return max(1, int(round(channels * ratio)))
