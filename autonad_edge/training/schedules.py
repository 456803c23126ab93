"""Per-step learning-rate schedules as `LambdaLR` factors with plain-data state.

The factor objects hold only numbers, so ``scheduler.state_dict()`` is plain data (it stores
each factor's ``__dict__``) and a resumed run continues the exact same schedule.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class CosineFactor:
    """Linear warm-up from ``warmup_start`` to 1 over `warmup_steps`, then cosine from 1 down to
    ``min_factor`` at `total_steps` (AutoNAD Sec. V-B: cosine decay for the supernet)."""

    def __init__(self, total_steps: int, warmup_steps: int = 0, min_factor: float = 0.0,
                 warmup_start: float = 0.01) -> None:
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = max(int(warmup_steps), 0)
        self.min_factor = float(min_factor)
        self.warmup_start = float(warmup_start)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_start + (1.0 - self.warmup_start) * step / self.warmup_steps
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min(max(step - self.warmup_steps, 0) / span, 1.0)
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class PolyFactor:
    """Linear warm-up over `warmup_steps`, then ``(1 - progress) ** power`` (the retraining
    schedule, power 0.9), floored at ``min_factor``."""

    def __init__(self, total_steps: int, power: float = 0.9, min_factor: float = 0.0,
                 warmup_steps: int = 0, warmup_start: float = 0.01) -> None:
        self.total_steps = max(int(total_steps), 1)
        self.power = float(power)
        self.min_factor = float(min_factor)
        self.warmup_steps = max(int(warmup_steps), 0)
        self.warmup_start = float(warmup_start)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_start + (1.0 - self.warmup_start) * step / self.warmup_steps
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min(max(step - self.warmup_steps, 0) / span, 1.0)
        return max((1.0 - progress) ** self.power, self.min_factor)


def cosine_schedule(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0,
                    min_factor: float = 0.0) -> LambdaLR:
    return LambdaLR(optimizer, CosineFactor(total_steps, warmup_steps, min_factor))


def poly_schedule(optimizer: Optimizer, total_steps: int, power: float = 0.9,
                  min_factor: float = 0.0, warmup_steps: int = 0) -> LambdaLR:
    return LambdaLR(optimizer, PolyFactor(total_steps, power, min_factor, warmup_steps))


def resize_schedule(scheduler: LambdaLR, total_steps: int) -> None:
    """End `scheduler`'s decay at `total_steps` instead (a run cut short to keep its time
    budget still anneals to its final rate; one lengthened to use it decays more slowly); the
    step count so far is kept, so the rate moves to where the new schedule is at this step.
    Stored in the scheduler's state: a resumed run continues the resized schedule."""
    for factor in {id(f): f for f in scheduler.lr_lambdas}.values():
        factor.total_steps = max(int(total_steps), factor.warmup_steps + 1, 1)
    # The next step already takes the resized schedule's rate (LambdaLR sets it only on step()).
    rates = [base * factor(scheduler.last_epoch) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, rate in zip(scheduler.optimizer.param_groups, rates):
        group["lr"] = rate
    scheduler._last_lr = rates


def make_schedule(optimizer: Optimizer, name: str, total_steps: int, warmup_steps: int = 0,
                  min_factor: float = 0.0, power: float = 0.9) -> LambdaLR:
    """The per-step schedule `name` ("cosine" or "poly") with a linear warm-up."""
    if name == "cosine":
        return cosine_schedule(optimizer, total_steps, warmup_steps, min_factor)
    if name == "poly":
        return poly_schedule(optimizer, total_steps, power, min_factor, warmup_steps)
    raise ValueError(f"unknown schedule {name!r}; choose cosine or poly")


__all__ = ["CosineFactor", "PolyFactor", "cosine_schedule", "make_schedule", "poly_schedule", "resize_schedule"]
