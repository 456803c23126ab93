"""The network's measurable units as modules: what `latency.blocks.Unit.build()` times.

Each unit kind is built from the network's own classes and functions, so a timed unit computes
exactly what the network does there: patch embedding (a stage with no blocks), hybrid block,
MFAM edge, pyramid pooling, top-down merge, head.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from autonad_edge.models.hybrid_block import HybridBlock
from autonad_edge.models.layers import LayerNorm2d, init_weights
from autonad_edge.models.mfam import DecoderEdge, DetailBranch, PyramidPooling, fuse_block, head, top_down_merge
from autonad_edge.models.network import Stage
from autonad_edge.space import BlockArch


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
    elif kind == "block":
        ratio = c["hidden"] / c["channels"]
        block = BlockArch(c["op"], ratio, c.get("kernel"))
        module = HybridBlock.build(c["channels"], block, c.get("head_dim", 1), c.get("sr_ratio", 1))
    elif kind == "edge":
        module = DecoderEdge(c["op"], c["in_ch"], c["out_ch"])
    elif kind == "ppm":
        module = PyramidPooling(c["in_ch"], c["out_ch"], tuple(c["pool_sizes"]))
    elif kind == "merge":
        module = TopDownMerge()
    elif kind == "head":
        module = Head(c["channels"], c["num_classes"], (c["out_h"], c["out_w"]), c.get("detail_channels", 0),
                      c.get("in_chans", 3))
    else:
        raise ValueError(f"unknown unit kind {kind!r}")
    init_weights(module)
    return module.eval()
