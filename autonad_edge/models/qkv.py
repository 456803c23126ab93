"""Step I of the unified block: three 1x1 projections q, k, v (Sec. IV-A).

With cross weight sharing one `ElasticQKV` serves the transformer, convolution and MLP
operators of a block alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class QKV(nn.Module):
    """Static step I: the three projections fused into one 1x1 convolution (one kernel launch)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.proj = nn.Conv2d(channels, 3 * channels, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = self.proj(x).chunk(3, dim=1)
        return q, k, v


class ElasticQKV(nn.Module):
    """q, k and v stored separately at the largest width, so each slices on its own."""

    def __init__(self, max_ch: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(3, max_ch, max_ch))
        self.bias = nn.Parameter(torch.zeros(3, max_ch))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def active(self, ch: int) -> tuple[Tensor, Tensor]:
        w = self.weight[:, :ch, :ch].reshape(3 * ch, ch, 1, 1)
        return w, self.bias[:, :ch].reshape(3 * ch)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        w, b = self.active(x.shape[1])
        q, k, v = F.conv2d(x, w, b).chunk(3, dim=1)
        return q, k, v

    def extract(self, ch: int) -> QKV:
        w, b = self.active(ch)
        static = QKV(ch).to(w.device, w.dtype)
        with torch.no_grad():
            static.proj.weight.copy_(w)
            static.proj.bias.copy_(b)
        return static
