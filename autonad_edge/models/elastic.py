"""Elastic layers: each stores its largest weights and slices them to the active shape.

Channels take the leading slice of the stored tensors, kernels the centre crop (AutoNAD
Eq. 27, 28). Input channels are read off the input tensor; output channels and kernel sizes
are passed in. Every elastic layer has an `extract(...)` returning a plain module with copies
of the active weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from autonad_edge.models.layers import LayerNorm2d, layer_norm_2d


def centre_crop(weight: Tensor, kernel: int, dims: tuple[int, ...] = (-2, -1)) -> Tensor:
    """Centre `kernel` x `kernel` crop of the given (odd-sized) dims."""
    for d in dims:
        full = weight.shape[d]
        start = (full - kernel) // 2
        weight = weight.narrow(d, start, kernel)
    return weight


def _copy_into(module: nn.Module, **tensors: Tensor | None) -> nn.Module:
    with torch.no_grad():
        for name, value in tensors.items():
            if value is not None:
                getattr(module, name).copy_(value)
    return module


class ElasticConv2d(nn.Module):
    """A dense convolution of at most `max_in` -> `max_out` channels and a `max_kernel` kernel."""

    def __init__(self, max_in: int, max_out: int, max_kernel: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.max_in, self.max_out, self.max_kernel = max_in, max_out, max_kernel
        self.weight = nn.Parameter(torch.empty(max_out, max_in, max_kernel, max_kernel))
        self.bias = nn.Parameter(torch.zeros(max_out)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.max_kernel == 1:
            nn.init.trunc_normal_(self.weight, std=0.02)
        else:
            nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def active(self, in_ch: int, out_ch: int, kernel: int | None = None) -> tuple[Tensor, Tensor | None]:
        kernel = kernel or self.max_kernel
        w = centre_crop(self.weight[:out_ch, :in_ch], kernel)
        b = self.bias[:out_ch] if self.bias is not None else None
        return w, b

    def forward(
        self,
        x: Tensor,
        out_ch: int,
        kernel: int | None = None,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
    ) -> Tensor:
        w, b = self.active(x.shape[1], out_ch, kernel)
        k = w.shape[-1]
        pad = dilation * (k // 2) if padding is None else padding
        return F.conv2d(x, w, b, stride=stride, padding=pad, dilation=dilation)

    def extract(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int | None = None,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
    ) -> nn.Conv2d:
        w, b = self.active(in_ch, out_ch, kernel)
        k = w.shape[-1]
        pad = dilation * (k // 2) if padding is None else padding
        conv = nn.Conv2d(in_ch, out_ch, k, stride, pad, dilation, bias=b is not None)
        return _copy_into(conv.to(w.device, w.dtype), weight=w, bias=b)


class ElasticDepthwiseConv2d(nn.Module):
    """Depthwise convolution over at most `max_ch` channels."""

    def __init__(self, max_ch: int, kernel: int, bias: bool = True) -> None:
        super().__init__()
        self.max_ch, self.kernel = max_ch, kernel
        self.weight = nn.Parameter(torch.empty(max_ch, 1, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(max_ch)) if bias else None
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        b = self.bias[:c] if self.bias is not None else None
        return F.conv2d(x, self.weight[:c], b, padding=self.kernel // 2, groups=c)

    def extract(self, ch: int) -> nn.Conv2d:
        conv = nn.Conv2d(ch, ch, self.kernel, 1, self.kernel // 2, groups=ch, bias=self.bias is not None)
        b = self.bias[:ch] if self.bias is not None else None
        return _copy_into(conv.to(self.weight.device, self.weight.dtype), weight=self.weight[:ch], bias=b)


class ElasticLayerNorm2d(nn.Module):
    def __init__(self, max_ch: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(max_ch))
        self.bias = nn.Parameter(torch.zeros(max_ch))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        return layer_norm_2d(x, self.weight[:c], self.bias[:c], self.eps)

    def extract(self, ch: int) -> LayerNorm2d:
        norm = LayerNorm2d(ch, self.eps).to(self.weight.device, self.weight.dtype)
        return _copy_into(norm, weight=self.weight[:ch], bias=self.bias[:ch])
