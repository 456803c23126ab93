"""Run configurations: plain dataclasses stored (as dicts) in every checkpoint.

`SupernetConfig` (AutoNAD Sec. V-B: AdamW, lr 5e-4, per-step cosine decay, one uniformly
sampled subnet per step, optional sandwich rule) and `RetrainConfig` (Adam, lr 1e-4, poly
decay with power 0.9, from scratch or from inherited supernet weights) share `RunConfig`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

# Settings that may differ when a run is resumed: they do not change what is computed (or
# only where it runs). Everything else must match the checkpoint's config.
CLASS_WEIGHTINGS = ("none", "inverse_sqrt")  # RunConfig.class_weighting; see training.losses
# RunConfig.loss: cross-entropy alone, or plus a region loss over the defect classes (training.losses)
LOSSES = ("ce", "ce+dice", "ce+lovasz")
# A pipeline's retraining evaluates on val this many times (every epochs // RETRAIN_EVALS
# epochs) and after its last epoch, keeping the best: enough to catch a late dip, cheap next
# to training (search.budget plans with it).
RETRAIN_EVALS = 10
# A pipeline's supernet evaluates its largest and smallest subnets on val about this many
# times: progress information only (the search scores subnets itself).
SUPERNET_EVALS = 10


def eval_every_for(epochs: int, evals: int) -> int:
    """Every how many epochs a run of `epochs` evaluates on val to do so about `evals` times
    (every epoch when it has fewer)."""
    return max(1, int(epochs) // int(evals))


def val_passes(epochs: int, eval_every: int) -> int:
    """Val evaluations of a run of `epochs` that evaluates every `eval_every` epochs and after its
    last (`Trainer`); 0 never."""
    if eval_every <= 0 or epochs <= 0:
        return 0
    return epochs // eval_every + (1 if epochs % eval_every else 0)

RESUMABLE_OVERRIDES = frozenset({"device", "workers", "eval_every", "eval_batch_size", "data", "amp", "threads",
                                 "channels_last"})


@dataclass
class RunConfig:
    # data (recorded for reproducibility; the trainer receives the loaded data)
    data: str | None = None  # dataset root; None = the embedded synthetic generator
    format: str = "synthetic"
    image_size: int = 320
    synthetic_count: int = 240
    augment: bool = True
    # the defect-aware recipe (data.crops, training.losses), shared by supernet and retraining
    keep_aspect: bool = True  # False: squash every image to image_size (the paper's resize)
    max_side: int | None = 1024  # training scale: long side scaled down to this; None = native
    crop_size: int | None = None  # training crops (square); None = image_size (the network input)
    defect_crop_share: float = 0.5  # share of crops centred on a defect pixel, classes balanced
    loss: str = "ce+dice"  # one of LOSSES
    class_weighting: str = "none"  # none | inverse_sqrt (see training.losses): for rare defect pixels
    ema_decay: float | None = None  # evaluate (and save) an exponential moving average of the weights
    # optimisation
    epochs: int = 100
    batch_size: int = 8
    seed: int = 0
    schedule: str = "cosine"  # cosine | poly, per step, after `warmup_epochs` of linear warm-up
    warmup_epochs: float = 0.0  # linear warm-up length, in epochs (fractions allowed)
    min_lr_factor: float = 0.0  # the schedule ends at lr * min_lr_factor
    grad_clip: float | None = None  # max gradient L2 norm, None = no clipping
    max_steps_per_epoch: int | None = None  # cap the steps of every epoch (smoke runs, budgets)
    # execution
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # float16 autocast + GradScaler, on CUDA only
    workers: int = 0  # DataLoader worker processes
    threads: int | None = None  # torch CPU threads (None: torch's default); 1 is often fastest on a busy CPU
    # Weights and batches in channels-last memory layout: the same arithmetic, and the convolution
    # kernels skip their layout conversions (steps measured in benchmarks/RESULTS.md, session 15).
    channels_last: bool = True
    eval_every: int = 1  # evaluate on val every N epochs (and after the last); 0 = never
    eval_batch_size: int = 8

    @property
    def crop_hw(self) -> tuple[int, int]:
        side = int(self.crop_size or self.image_size)
        return side, side

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    # (field, lowest value, integer, None allowed); checked by `check`
    _BOUNDS: tuple[tuple[str, float, bool, bool], ...] = (
        ("epochs", 1, True, False), ("batch_size", 1, True, False), ("eval_batch_size", 1, True, False),
        ("seed", 0, True, False), ("workers", 0, True, False), ("eval_every", 0, True, False),
        ("threads", 1, True, True), ("max_steps_per_epoch", 1, True, True), ("image_size", 8, True, False),
        ("max_side", 8, True, True), ("crop_size", 8, True, True), ("warmup_epochs", 0, False, False),
        ("lr", 0, False, False), ("weight_decay", 0, False, False), ("grad_clip", 0, False, True),
    )
    _SHARES = ("defect_crop_share", "min_lr_factor")  # in [0, 1]

    def check(self) -> None:
        """Refuse a value no run can use, in one line naming its option (ValueError): a batch of
        0 divides by zero deep in the engine, a negative one trains 0 steps and reports success."""
        choices = {"loss": LOSSES, "class_weighting": CLASS_WEIGHTINGS, "schedule": SCHEDULES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{_option(name)}: unknown value {getattr(self, name)!r}; choose one of "
                                 f"{', '.join(allowed)}")
        for name, low, integer, optional in self._BOUNDS:
            value = getattr(self, name)
            if value is None and optional:
                continue
            # image_size may be (height, width): each side is checked
            for part in value if name == "image_size" and isinstance(value, (list, tuple)) else [value]:
                number = isinstance(part, int) if integer else isinstance(part, (int, float))
                if isinstance(part, bool) or not number or not math.isfinite(part) or part < low:
                    kind = "a whole number" if integer else "a number"
                    raise ValueError(f"{_option(name)} must be {kind} >= {low:g}, got {value!r}")
        if self.lr == 0:
            raise ValueError(f"{_option('lr')} must be above 0, got {self.lr!r}")
        for name in self._SHARES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{_option(name)} must be a share in [0, 1], got {value!r}")
        if self.ema_decay is not None and not (isinstance(self.ema_decay, (int, float)) and 0 <= self.ema_decay < 1):
            raise ValueError(f"{_option('ema_decay')} must be in [0, 1), got {self.ema_decay!r}")


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass
class SupernetConfig(RunConfig):
    space: str = "default"  # a preset name or a space JSON path (the checkpoint stores the JSON)
    sharing: str = "cross"  # cross | entangled | classical
    lr: float = 5e-4
    weight_decay: float = 0.05
    sandwich: bool = False  # largest + smallest + `sandwich_random` random subnets per step
    sandwich_random: int = 2
    # In-place distillation (BigNAS) under the sandwich rule: every subnet but the largest
    # learns (1 - w) * loss(labels) + w * KL(largest's predictions || its own).
    distill_weight: float = 0.5

    def check(self) -> None:
        super().check()
        if isinstance(self.sandwich_random, bool) or not isinstance(self.sandwich_random, int) \
                or self.sandwich_random < 0:
            raise ValueError(f"--sandwich-random must be a whole number >= 0, got {self.sandwich_random!r}")
        if not isinstance(self.distill_weight, (int, float)) or not 0 <= self.distill_weight <= 1:
            raise ValueError(f"--distill-weight must be a share in [0, 1], got {self.distill_weight!r}")


@dataclass
class RetrainConfig(RunConfig):
    lr: float = 1e-4
    weight_decay: float = 0.0
    schedule: str = "poly"  # the paper's retraining schedule
    poly_power: float = 0.9
    init: str = "scratch"  # scratch | inherited
    supernet: str | None = None  # the supernet checkpoint for init="inherited"
    # After training, the background logit offset with the best val mIoU (then, with
    # calibrate_per_class, one offset per class, if they hold on held-out val images) is folded
    # into the kept network (training.calibration): the recipe's crops and weights over-predict defects.
    calibrate: bool = True
    calibrate_per_class: bool = True

    def check(self) -> None:
        super().check()
        if not isinstance(self.poly_power, (int, float)) or not self.poly_power > 0:
            raise ValueError(f"--poly-power must be above 0, got {self.poly_power!r}")
        if self.init not in ("scratch", "inherited"):
            raise ValueError(f"--init: unknown value {self.init!r}; choose one of scratch, inherited")


def config_conflicts(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys (outside RESUMABLE_OVERRIDES) whose values differ between two config dicts."""
    keys = (set(saved) | set(current)) - RESUMABLE_OVERRIDES
    return sorted(k for k in keys if saved.get(k) != current.get(k))


SCHEDULES = ("cosine", "poly")

__all__ = ["CLASS_WEIGHTINGS", "LOSSES", "RETRAIN_EVALS", "RESUMABLE_OVERRIDES", "SCHEDULES", "SUPERNET_EVALS",
           "RetrainConfig", "RunConfig", "SupernetConfig", "config_conflicts", "eval_every_for", "val_passes"]
