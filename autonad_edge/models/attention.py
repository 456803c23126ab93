"""Step II, transformer: multi-head self-attention with PVT-style spatial reduction.

Keys and values are reduced by a strided depthwise convolution (kernel = stride = the
stage's `sr_ratio`) after step I rather than before it: the projections are shared with the
other operators, and a 1x1 projection commutes with the reduction up to the learned weights.
The reduction starts as average pooling. Inputs not divisible by the ratio are zero-padded
at the bottom/right so no row or column is dropped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def reduce_tokens(x: Tensor, weight: Tensor, bias: Tensor, ratio: int) -> Tensor:
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % ratio, (-w) % ratio
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    return F.conv2d(x, weight, bias, stride=ratio, groups=x.shape[1])


def multi_head_attention(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """Attention of NCHW queries over NCHW keys/values (which may be spatially smaller)."""
    b, c, h, w = q.shape
    d = c // heads
    q = q.reshape(b, heads, d, h * w).transpose(-1, -2)  # B, heads, N, d
    k = k.reshape(b, heads, d, -1)  # B, heads, d, M
    v = v.reshape(b, heads, d, -1).transpose(-1, -2)  # B, heads, M, d
    attn = torch.softmax(torch.matmul(q, k) * d**-0.5, dim=-1)
    out = torch.matmul(attn, v)  # B, heads, N, d
    return out.transpose(-1, -2).reshape(b, c, h, w)


class Attention(nn.Module):
    def __init__(self, channels: int, head_dim: int, sr_ratio: int) -> None:
        super().__init__()
        self.heads = channels // head_dim
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.reduce_k = nn.Conv2d(channels, channels, sr_ratio, sr_ratio, groups=channels)
            self.reduce_v = nn.Conv2d(channels, channels, sr_ratio, sr_ratio, groups=channels)
            with torch.no_grad():
                for conv in (self.reduce_k, self.reduce_v):
                    conv.weight.fill_(1.0 / sr_ratio**2)
                    conv.bias.zero_()

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if self.sr_ratio > 1:
            k = reduce_tokens(k, self.reduce_k.weight, self.reduce_k.bias, self.sr_ratio)
            v = reduce_tokens(v, self.reduce_v.weight, self.reduce_v.bias, self.sr_ratio)
        return multi_head_attention(q, k, v, self.heads)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, sr_ratio={self.sr_ratio}"


class _Reduction(nn.Module):
    """Depthwise reduction weights at the largest width; starts as average pooling."""

    def __init__(self, max_ch: int, ratio: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((max_ch, 1, ratio, ratio), 1.0 / ratio**2))
        self.bias = nn.Parameter(torch.zeros(max_ch))


class ElasticAttention(nn.Module):
    def __init__(self, max_ch: int, head_dim: int, sr_ratio: int) -> None:
        super().__init__()
        self.head_dim, self.sr_ratio = head_dim, sr_ratio
        if sr_ratio > 1:
            self.reduce_k = _Reduction(max_ch, sr_ratio)
            self.reduce_v = _Reduction(max_ch, sr_ratio)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, kernel: int | None = None) -> Tensor:
        c = q.shape[1]
        if self.sr_ratio > 1:
            k = reduce_tokens(k, self.reduce_k.weight[:c], self.reduce_k.bias[:c], self.sr_ratio)
            v = reduce_tokens(v, self.reduce_v.weight[:c], self.reduce_v.bias[:c], self.sr_ratio)
        return multi_head_attention(q, k, v, c // self.head_dim)

    def extract(self, ch: int, kernel: int | None = None) -> Attention:
        static = Attention(ch, self.head_dim, self.sr_ratio)
        if self.sr_ratio > 1:
            static = static.to(self.reduce_k.weight.device, self.reduce_k.weight.dtype)
            with torch.no_grad():
                for name in ("reduce_k", "reduce_v"):
                    src, dst = getattr(self, name), getattr(static, name)
                    dst.weight.copy_(src.weight[:ch])
                    dst.bias.copy_(src.bias[:ch])
        return static
