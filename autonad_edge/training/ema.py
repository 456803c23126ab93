"""An exponential moving average of a model's weights (the model that is evaluated and saved).

Short runs end with the learning rate near zero but the last steps still noisy; averaging the
weights of the last few hundred steps gives a steadier model for free. The effective decay
ramps up as ``min(decay, (1 + n) / (10 + n))`` after n updates, so a run of a few hundred
steps is not dominated by its random initialisation. Buffers are copied, not averaged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        self.updates += 1
        # One multi-tensor call instead of one small op per tensor (a small network has ~150).
        torch._foreach_lerp_(list(self.module.parameters()), [p.detach() for p in model.parameters()], 1.0 - d)
        for avg, new in zip(self.module.buffers(), model.buffers()):
            avg.copy_(new)


__all__ = ["WeightAverage"]
