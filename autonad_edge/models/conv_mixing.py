"""Step II, convolution: ACmix-style shift-and-aggregate (AutoNAD Eq. 13-15).

The 3*heads head features of q, k and v are mixed by a light fully connected layer into k*k
feature groups, one per kernel position; a grouped k x k convolution then shifts each group
by its kernel offset and aggregates them. That convolution starts as the pure shift (ACmix's
initialisation) and is learned.

Channel layout (as everywhere in the block): channel ``j*head_dim + g`` is channel ``g`` of
head ``j``. The aggregation is grouped by ``g`` (``head_dim`` groups), so the head count can
change with the width while each stored weight keeps its meaning under slicing. A kernel-3
choice takes the centre 3x3 of the kernel-5 positions and taps (Eq. 28).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from autonad_edge.models.elastic import centre_crop


def shift_aggregate(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    head_dim: int,
    mix_weight: Tensor,
    mix_bias: Tensor,
    agg_weight: Tensor,
    agg_bias: Tensor,
) -> Tensor:
    """mix_weight: [k*k, 3*heads, 1, 1]; agg_weight: [head_dim*heads, k*k, k, k] (group-major)."""
    b, c, h, w = q.shape
    heads = c // head_dim
    positions = mix_weight.shape[0]
    kernel = agg_weight.shape[-1]
    f = torch.cat([q, k, v], dim=1).reshape(b, 3 * heads, head_dim * h, w)
    f = F.conv2d(f, mix_weight, mix_bias)  # B, k*k, head_dim*H, W
    f = f.reshape(b, positions, head_dim, h, w).transpose(1, 2).reshape(b, head_dim * positions, h, w)
    out = F.conv2d(f, agg_weight, agg_bias, padding=kernel // 2, groups=head_dim)
    # Group-major (g*heads + j) back to the block's head-major layout (j*head_dim + g).
    return out.reshape(b, head_dim, heads, h, w).transpose(1, 2).reshape(b, c, h, w)


class ConvMixing(nn.Module):
    def __init__(self, channels: int, head_dim: int, kernel: int) -> None:
        super().__init__()
        self.head_dim, self.kernel = head_dim, kernel
        heads = channels // head_dim
        self.mix = nn.Conv2d(3 * heads, kernel * kernel, 1)
        self.aggregate = nn.Conv2d(
            head_dim * kernel * kernel, channels, kernel, padding=kernel // 2, groups=head_dim
        )

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return shift_aggregate(
            q, k, v, self.head_dim,
            self.mix.weight, self.mix.bias, self.aggregate.weight, self.aggregate.bias,
        )

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}"


class ElasticConvMixing(nn.Module):
    def __init__(self, max_ch: int, head_dim: int, max_kernel: int) -> None:
        super().__init__()
        self.head_dim, self.max_kernel = head_dim, max_kernel
        max_heads = max_ch // head_dim
        kk = max_kernel
        # mix: [pos_y, pos_x, q|k|v, head]; aggregate: [group g, head j, pos_y, pos_x, tap_y, tap_x]
        self.mix_weight = nn.Parameter(torch.empty(kk, kk, 3, max_heads))
        self.mix_bias = nn.Parameter(torch.zeros(kk, kk))
        self.agg_weight = nn.Parameter(torch.zeros(head_dim, max_heads, kk, kk, kk, kk))
        self.agg_bias = nn.Parameter(torch.zeros(head_dim, max_heads))
        nn.init.trunc_normal_(self.mix_weight, std=0.02)
        with torch.no_grad():
            # Shift initialisation: position (py, px) reads its own tap, plus noise so heads differ.
            for py in range(kk):
                for px in range(kk):
                    self.agg_weight[:, :, py, px, py, px] = 1.0
            self.agg_weight.add_(torch.randn_like(self.agg_weight) * 0.02)

    def active(self, ch: int, kernel: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        heads = ch // self.head_dim
        mix_w = centre_crop(self.mix_weight[:, :, :, :heads], kernel, dims=(0, 1))
        mix_w = mix_w.reshape(kernel * kernel, 3 * heads, 1, 1)
        mix_b = centre_crop(self.mix_bias, kernel, dims=(0, 1)).reshape(kernel * kernel)
        agg_w = centre_crop(self.agg_weight[:, :heads], kernel, dims=(2, 3, 4, 5))
        agg_w = agg_w.reshape(self.head_dim * heads, kernel * kernel, kernel, kernel)
        agg_b = self.agg_bias[:, :heads].reshape(self.head_dim * heads)
        return mix_w, mix_b, agg_w, agg_b

    def forward(self, q: Tensor, k: Tensor, v: Tensor, kernel: int | None = None) -> Tensor:
        return shift_aggregate(q, k, v, self.head_dim, *self.active(q.shape[1], kernel or self.max_kernel))

    def extract(self, ch: int, kernel: int | None = None) -> ConvMixing:
        kernel = kernel or self.max_kernel
        mix_w, mix_b, agg_w, agg_b = self.active(ch, kernel)
        static = ConvMixing(ch, self.head_dim, kernel).to(mix_w.device, mix_w.dtype)
        with torch.no_grad():
            static.mix.weight.copy_(mix_w)
            static.mix.bias.copy_(mix_b)
            static.aggregate.weight.copy_(agg_w)
            static.aggregate.bias.copy_(agg_b)
        return static
