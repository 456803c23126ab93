"""Small layers shared by the supernet and the static networks."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def layer_norm_2d(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-6) -> Tensor:
    """LayerNorm over the channels of each pixel of an NCHW tensor.

    Per-pixel statistics (not batch statistics), so an inherited subnet evaluates correctly
    without recalibrating norms for its sampled widths.
    """
    x = x.permute(0, 2, 3, 1)
    x = F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
    return x.permute(0, 3, 1, 2)


class LayerNorm2d(nn.Module):
    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return layer_norm_2d(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}"


def decoder_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm of four channels a group: batch-independent, like every norm here. Where four
    does not divide `channels` (a pyramid-pooling branch's share of the decoder: 64 over 3
    branches is 21), the most groups of at least four channels that divide them."""
    groups = max(1, channels // 4)
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)


@functools.lru_cache(maxsize=256)
def _pool_rows(size_in: int, size_out: int) -> tuple[tuple[float, ...], ...]:
    """Row i averages the input window adaptive pooling assigns to output i."""
    rows = []
    for i in range(size_out):
        start = (i * size_in) // size_out
        stop = -((-(i + 1) * size_in) // size_out)  # ceil
        rows.append(tuple(1.0 / (stop - start) if start <= j < stop else 0.0 for j in range(size_in)))
    return tuple(rows)


def _pool_matrix(size_in: int, size_out: int, like: Tensor) -> Tensor:
    # Built from Python numbers, so an export sees one constant, not a traced loop of writes
    # (which made a pyramid-pooling block take 4 s to export instead of 1).
    return torch.tensor(_pool_rows(size_in, size_out), dtype=like.dtype, device=like.device)


def adaptive_avg_pool2d(x: Tensor, size: int) -> Tensor:
    """Adaptive average pooling written as two matrix products.

    Equal to `F.adaptive_avg_pool2d`, but exports to ONNX (MatMul with constant matrices) for
    any input size; ONNX has no adaptive pooling when the size does not divide evenly.
    """
    h, w = x.shape[-2:]
    ph = _pool_matrix(int(h), size, x)
    pw = _pool_matrix(int(w), size, x)
    return torch.matmul(torch.matmul(ph, x), pw.t())


def resize(x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def init_weights(module: nn.Module) -> None:
    """timm-style initialisation: truncated normal for 1x1 projections, He for spatial convs."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            if m.kernel_size == (1, 1) and m.groups == 1:
                nn.init.trunc_normal_(m.weight, std=0.02)
            else:
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
