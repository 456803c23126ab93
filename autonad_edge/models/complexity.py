"""Parameter and FLOP counts of an architecture, without materialising weights.

Both build the static network on the ``meta`` device, so counting costs milliseconds and no
memory. FLOPs count convolutions and matrix products (2 per multiply-add, as torch's
FlopCounterMode does); norms, activations and the spatial shift are not counted.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from autonad_edge.models.network import SegmentationNet
from autonad_edge.space import Arch, SearchSpace


def _meta_net(arch: Arch, space: SearchSpace, num_classes: int) -> SegmentationNet:
    with torch.device("meta"):
        return SegmentationNet.from_arch(arch, space, num_classes)


def count_params(arch: Arch, space: SearchSpace, num_classes: int) -> int:
    return sum(p.numel() for p in _meta_net(arch, space, num_classes).parameters())


def stage_params(arch: Arch, space: SearchSpace, num_classes: int) -> dict[str, int]:
    """Parameters per backbone stage and for the decoder."""
    net = _meta_net(arch, space, num_classes)
    out = {f"stage{i + 1}": sum(p.numel() for p in s.parameters()) for i, s in enumerate(net.stages)}
    out["mfam"] = sum(p.numel() for p in net.decoder.parameters())
    return out


def count_flops(
    arch: Arch, space: SearchSpace, num_classes: int, image_size: tuple[int, int] = (320, 320)
) -> int:
    net = _meta_net(arch, space, num_classes).eval()
    x = torch.empty(1, space.in_chans, *image_size, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(x)
    return int(counter.get_total_flops())
