"""The network's measurable units as modules: what `latency.blocks.Unit.build()` times.

Each unit kind is built from the network's own classes and functions, so a timed unit computes
exactly what the network does there: patch embedding (a stage with no blocks), a hybrid
block's token-mixing step and its FFN step, MFAM edge, one pyramid-pooling branch and the
pyramid pooling's fuse, top-down merge, head.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from autonad_edge.models.hybrid_block import build_operator, ffn_step, mixing_step
from autonad_edge.models.layers import LayerNorm2d, init_weights
from autonad_edge.models.mfam import (
    DecoderEdge,
    DetailBranch,
    fuse_block,
    fuse_context,
    head,
    pooled_context,
    ppm_branch,
    ppm_fuse,
    top_down_merge,
)
from autonad_edge.models.mix_ffn import MixFFN
from autonad_edge.models.network import Stage
from autonad_edge.models.qkv import QKV


class TokenMixer(nn.Module):
    """A hybrid block's first step, ``x + proj(op(qkv(norm1 x)))``, as in `HybridBlock.forward`."""

    def __init__(self, channels: int, op: str, kernel: int | None, head_dim: int, sr_ratio: int) -> None:
        super().__init__()
        self.norm1, self.qkv = LayerNorm2d(channels), QKV(channels)
        self.operator = build_operator(channels, op, kernel, head_dim, sr_ratio)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return mixing_step(x, self.norm1, self.qkv, self.operator, self.proj)


class FeedForward(nn.Module):
    """A hybrid block's second step, ``x + ffn(norm2 x)``, as in `HybridBlock.forward`."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.norm2, self.ffn = LayerNorm2d(channels), MixFFN(channels, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return ffn_step(x, self.norm2, self.ffn)


class PoolBranch(nn.Module):
    """One pyramid-pooling branch at one pool size, as in `PyramidPooling.forward`."""

    def __init__(self, in_ch: int, branch_ch: int, pool_size: int) -> None:
        super().__init__()
        self.branch, self.pool_size = ppm_branch(in_ch, branch_ch), pool_size

    def forward(self, x: Tensor) -> Tensor:
        return pooled_context(self.branch, x, self.pool_size)


class PoolFuse(nn.Module):
    """The pyramid pooling's fuse of the input and its branches, as in `PyramidPooling.forward`."""

    def __init__(self, in_ch: int, branch_ch: int, branches: int, out_ch: int) -> None:
        super().__init__()
        self.fuse = ppm_fuse(in_ch, branch_ch, branches, out_ch)

    def forward(self, x: Tensor, *pooled: Tensor) -> Tensor:
        return fuse_context(self.fuse, x, list(pooled))


class TopDownMerge(nn.Module):
    """``lateral + resize(f, lateral size)``, as in `MFAM.forward`."""

    def forward(self, f: Tensor, lateral: Tensor) -> Tensor:
        return top_down_merge(f, lateral)


class Head(nn.Module):
    """Fuse (+ the detail path from the image, if any) + classifier + resize to the input size,
    as in `MFAM.forward`. With a detail path the image is a fifth input."""

    def __init__(self, channels: int, num_classes: int, out_size: tuple[int, int], detail_channels: int = 0,
                 in_chans: int = 3) -> None:
        super().__init__()
        self.fuse = fuse_block(channels)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.detail = DetailBranch(in_chans, channels, detail_channels) if detail_channels else None
        self.out_size = tuple(out_size)

    def forward(self, f4: Tensor, out3: Tensor, out2: Tensor, out1: Tensor, image: Tensor | None = None) -> Tensor:
        return head([f4, out3, out2, out1], self.fuse, self.classifier, self.out_size, self.detail, image)


def unit_module(kind: str, c: dict[str, Any]) -> nn.Module:
    """The module of a unit of `kind` with config `c` (`Unit.config`), eval mode, fresh weights."""
    if kind == "embed":
        k, s = c["kernel"], c["stride"]
        module = Stage(nn.Conv2d(c["in_ch"], c["out_ch"], k, s, k // 2), LayerNorm2d(c["out_ch"]), [],
                       LayerNorm2d(c["out_ch"]))
    elif kind == "mixer":
        module = TokenMixer(c["channels"], c["op"], c.get("kernel"), c.get("head_dim", 1), c.get("sr_ratio", 1))
    elif kind == "ffn":
        module = FeedForward(c["channels"], c["hidden"])
    elif kind == "edge":
        module = DecoderEdge(c["op"], c["in_ch"], c["out_ch"])
    elif kind == "pool_branch":
        module = PoolBranch(c["in_ch"], c["out_ch"], c["pool_size"])
    elif kind == "pool_fuse":
        module = PoolFuse(c["in_ch"], c["branch_ch"], c["branches"], c["out_ch"])
    elif kind == "merge":
        module = TopDownMerge()
    elif kind == "head":
        module = Head(c["channels"], c["num_classes"], (c["out_h"], c["out_w"]), c.get("detail_channels", 0),
                      c.get("in_chans", 3))
    else:
        raise ValueError(f"unknown unit kind {kind!r}")
    init_weights(module)
    return module.eval()
