"""Step II, MLP: spatial shift on two branches, identity on the third, split attention (ViP /
S2-MLPv2) over the three, then a linear layer (AutoNAD Eq. 16-20).

q is shifted with pattern 1, k with pattern 2, v passes unchanged. The split attention pools
their sum, maps it through a bottleneck (channels/4) to one weight per branch and channel, and
softmaxes over the branches. Its output layout is interleaved (``channel*3 + branch``) so a
narrower width takes a leading slice of the stored weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from autonad_edge.models.spatial_shift import spatial_shift


def split_attention_mix(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    fc1_weight: Tensor,
    fc1_bias: Tensor,
    fc2_weight: Tensor,
    fc2_bias: Tensor,
) -> Tensor:
    b, c = q.shape[:2]
    x1 = spatial_shift(q, 1)
    x2 = spatial_shift(k, 2)
    x3 = v
    a = (x1 + x2 + x3).mean(dim=(2, 3))
    a = F.linear(F.gelu(F.linear(a, fc1_weight, fc1_bias)), fc2_weight, fc2_bias)
    a = torch.softmax(a.reshape(b, c, 3), dim=-1).reshape(b, c, 3, 1, 1)
    return x1 * a[:, :, 0] + x2 * a[:, :, 1] + x3 * a[:, :, 2]


def _hidden(ch: int) -> int:
    return max(1, ch // 4)


class ShiftMLP(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, _hidden(channels))
        self.fc2 = nn.Linear(_hidden(channels), 3 * channels)
        self.linear = nn.Conv2d(channels, channels, 1)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        mixed = split_attention_mix(
            q, k, v, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias
        )
        return self.linear(mixed)


class ElasticShiftMLP(nn.Module):
    def __init__(self, max_ch: int) -> None:
        super().__init__()
        hid = _hidden(max_ch)
        self.fc1_weight = nn.Parameter(torch.empty(hid, max_ch))
        self.fc1_bias = nn.Parameter(torch.zeros(hid))
        self.fc2_weight = nn.Parameter(torch.empty(3 * max_ch, hid))
        self.fc2_bias = nn.Parameter(torch.zeros(3 * max_ch))
        self.linear_weight = nn.Parameter(torch.empty(max_ch, max_ch, 1, 1))
        self.linear_bias = nn.Parameter(torch.zeros(max_ch))
        for w in (self.fc1_weight, self.fc2_weight, self.linear_weight):
            nn.init.trunc_normal_(w, std=0.02)

    def active(self, ch: int) -> dict[str, Tensor]:
        hid = _hidden(ch)
        return {
            "fc1.weight": self.fc1_weight[:hid, :ch],
            "fc1.bias": self.fc1_bias[:hid],
            "fc2.weight": self.fc2_weight[: 3 * ch, :hid],
            "fc2.bias": self.fc2_bias[: 3 * ch],
            "linear.weight": self.linear_weight[:ch, :ch],
            "linear.bias": self.linear_bias[:ch],
        }

    def forward(self, q: Tensor, k: Tensor, v: Tensor, kernel: int | None = None) -> Tensor:
        p = self.active(q.shape[1])
        mixed = split_attention_mix(
            q, k, v, p["fc1.weight"], p["fc1.bias"], p["fc2.weight"], p["fc2.bias"]
        )
        return F.conv2d(mixed, p["linear.weight"], p["linear.bias"])

    def extract(self, ch: int, kernel: int | None = None) -> ShiftMLP:
        static = ShiftMLP(ch).to(self.fc1_weight.device, self.fc1_weight.dtype)
        static.load_state_dict({k: v.detach().clone() for k, v in self.active(ch).items()})
        return static
