"""How a training step executes on its device: memory layout and optimiser kernels.

Both change the speed of a step, not what it computes (to float rounding), and are shared by
the trainers and by the planner's step probes (`search.budget`), so that a plan is made with
the step the run will take. Measured on this project's small networks on a 2-core CPU
(benchmarks/RESULTS.md, session 15): channels-last layout and the fused Adam kernel together
make a retraining step 7-17 % faster.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


def memory_format(channels_last: bool) -> torch.memory_format:
    """Channels-last keeps the convolution kernels (oneDNN, cuDNN) from converting layouts."""
    return torch.channels_last if channels_last else torch.contiguous_format


def to_training_layout(module: nn.Module, device: torch.device | str, channels_last: bool) -> nn.Module:
    """`module` on `device`, its 4-d weights in the layout `memory_format(channels_last)`."""
    return module.to(device, memory_format=memory_format(channels_last))


def build_adam(params: Iterable[torch.Tensor], *, lr: float, weight_decay: float = 0.0, decoupled: bool = False,
               device: torch.device | str = "cpu") -> torch.optim.Optimizer:
    """Adam, or AdamW with `decoupled` weight decay, with torch's fused kernel where it has one
    (CPU and CUDA): one pass over all tensors a step instead of a dozen small ops per tensor."""
    optimizer = torch.optim.AdamW if decoupled else torch.optim.Adam
    fused = True if torch.device(device).type in ("cpu", "cuda") else None
    return optimizer(params, lr=lr, weight_decay=weight_decay, fused=fused)


__all__ = ["build_adam", "memory_format", "to_training_layout"]
