"""A textbook U-Net (Ronneberger et al., MICCAI 2015): the hand-designed baseline the searched
networks are compared with, trained, evaluated and exported the same way.

Encoder: `levels` + 1 double-conv blocks (3x3 conv + BatchNorm + ReLU, twice) of widths
``base_width * 2**k``, 2x2 max-pooling between them; the deepest block is the bottleneck.
Decoder: per level a 2x2 stride-2 transposed conv halving the width, concatenation with the
encoder's skip, a double conv; then a 1x1 conv to the class logits.

Upsampling is a transposed conv, as in the paper, rather than bilinear resize + 1x1 conv:
it is learnable, and it exports as one ConvTranspose whose output shape is exact, while
ONNX Resize has coordinate-transform and rounding modes that runtimes (and TensorRT
versions) implement differently. Convs are padded ("same"), unlike the paper's valid convs,
so the skips need no cropping and the logits keep the input's size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """(3x3 conv, BatchNorm, ReLU) x 2; the convs have no bias (BatchNorm's shift is one)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UpBlock(nn.Module):
    """2x2 transposed conv (width w_{k+1} -> w_k), concatenation with the skip, double conv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.conv = double_conv(2 * out_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNet(nn.Module):
    """U-Net with `levels` 2x down-samplings; logits [B, num_classes, H, W] for any H, W.

    The input is padded (replicate, bottom and right) to a multiple of ``2**levels`` and the
    logits are cropped back. Replicate rather than zero padding: a zero (mean-colour) band
    next to a bright or dark border is an edge the network may read as a defect. Shapes are
    Python ints at trace time, so a fixed-shape ONNX export holds one static Pad and Slice
    (none when the size is already a multiple)."""

    def __init__(self, num_classes: int, in_channels: int = 3, base_width: int = 16, levels: int = 4) -> None:
        super().__init__()
        if num_classes < 1 or in_channels < 1 or base_width < 1 or levels < 1:
            raise ValueError(f"num_classes, in_channels, base_width and levels must be >= 1, got "
                             f"{num_classes}, {in_channels}, {base_width}, {levels}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.base_width = base_width
        self.levels = levels
        self.widths = tuple(base_width * 2**k for k in range(levels + 1))
        ins = (in_channels, *self.widths[:-1])
        self.down = nn.ModuleList(double_conv(i, w) for i, w in zip(ins[:-1], self.widths[:-1]))
        self.bottleneck = double_conv(ins[-1], self.widths[-1])
        self.pool = nn.MaxPool2d(2)
        # Deepest first, the order forward uses them.
        self.up = nn.ModuleList(UpBlock(self.widths[k + 1], self.widths[k]) for k in reversed(range(levels)))
        self.classifier = nn.Conv2d(self.widths[0], num_classes, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        # He init for the ReLU convs; the classifier keeps PyTorch's default (see
        # `SegmentationNet.from_arch`: small-std logits learn rare defect classes slowly).
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m is not self.classifier:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def multiple(self) -> int:
        """Input sizes that need no padding are multiples of this."""
        return 2**self.levels

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % self.multiple, -w % self.multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for block, skip in zip(self.up, reversed(skips)):
            x = block(x, skip)
        logits = self.classifier(x)
        if pad_h or pad_w:
            logits = logits[..., :h, :w]
        return logits

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def describe(self) -> dict:
        """A JSON-able summary for run records and reports (a U-Net has no `Arch`; code that
        reads ``model.arch`` expects a searched network, so there is no such attribute)."""
        return {
            "model": "unet",
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "base_width": self.base_width,
            "levels": self.levels,
            "widths": list(self.widths),
            "params": self.num_params(),
            "input_multiple": self.multiple,
        }


__all__ = ["UNet", "UpBlock", "double_conv"]
