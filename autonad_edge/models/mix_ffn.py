"""MixFFN (SegFormer): 1x1 expansion, depthwise 3x3, GELU, 1x1 projection."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from autonad_edge.models.elastic import ElasticConv2d, ElasticDepthwiseConv2d
from autonad_edge.models.geometry import ffn_hidden  # noqa: F401  (re-exported: the modules' width rule)


class MixFFN(nn.Module):
    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.dwconv(self.fc1(x))))


class ElasticMixFFN(nn.Module):
    def __init__(self, max_ch: int, max_hidden: int) -> None:
        super().__init__()
        self.fc1 = ElasticConv2d(max_ch, max_hidden)
        self.dwconv = ElasticDepthwiseConv2d(max_hidden, 3)
        self.fc2 = ElasticConv2d(max_hidden, max_ch)

    def forward(self, x: Tensor, hidden: int) -> Tensor:
        return self.fc2(F.gelu(self.dwconv(self.fc1(x, hidden))), x.shape[1])

    def extract(self, ch: int, hidden: int) -> MixFFN:
        static = MixFFN(ch, hidden)
        static.fc1 = self.fc1.extract(ch, hidden)
        static.dwconv = self.dwconv.extract(hidden)
        static.fc2 = self.fc2.extract(hidden, ch)
        return static
