"""Supernet training (AutoNAD Sec. V-B, with the defect-aware recipe of `RunConfig`).

AdamW (lr 5e-4), per-step cosine decay with optional linear warm-up, the recipe's loss over
defect-aware crops. Each step trains one subnet drawn uniformly with ``space.sample(rng)`` from a
seeded `random.Random` (identical on every rank), or with ``sandwich=True`` the largest, the
smallest and `sandwich_random` random subnets, their gradients accumulated into one update;
then the smaller ones also distil the largest's predictions (BigNAS in-place distillation), so
that inherited subnets rank like retrained ones.

    trainer = SupernetTrainer(SupernetConfig(epochs=30), data, "runs/supernet", space=space)
    trainer.add_step_hook(lambda step, arch: queue.put_nowait(arch))   # must not block
    summary = trainer.fit()          # writes runs/supernet/supernet.pt, train_log.jsonl, ...
"""

from __future__ import annotations

from typing import Any

import torch

from autonad_edge.models.supernet import HybridSupernet
from autonad_edge.space import Arch
from autonad_edge.training.config import SupernetConfig
from autonad_edge.training.engine import Trainer
from autonad_edge.training.execution import build_adam
from autonad_edge.training.losses import distillation_loss


class SupernetTrainer(Trainer):
    kind = "supernet"
    checkpoint_name = "supernet.pt"
    title = "supernet"
    # Each step's subnet uses a subset of the supernet's weights.
    find_unused_parameters = True

    config: SupernetConfig

    def eval_archs(self) -> dict[str, Arch]:
        """The subnets evaluated on val during training: the largest and the smallest."""
        return {"largest": self.space.largest(), "smallest": self.space.smallest()}

    def build_model(self) -> HybridSupernet:
        return HybridSupernet(self.space, self.data.num_classes, self.config.sharing)

    def build_optimizer(self, model):
        return build_adam(model.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay,
                          decoupled=True, device=self.device)

    def step_archs(self) -> list[Arch]:
        """The subnets of the next step (consumes the sampler RNG)."""
        if not self.config.sandwich:
            return [self.space.sample(self.sampler_rng)]
        randoms = [self.space.sample(self.sampler_rng) for _ in range(self.config.sandwich_random)]
        return [self.space.largest(), self.space.smallest(), *randoms]

    def train_step(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[float, list[Arch]]:
        """One subnet, or the sandwich: the largest learns from the labels, and with
        `distill_weight` > 0 the others also from the largest's (detached) predictions."""
        archs = self.step_archs()
        distill = self.config.sandwich and self.config.distill_weight > 0
        weight = self.config.distill_weight
        teacher = None
        total = 0.0
        for i, arch in enumerate(archs):
            self.model.set_active(arch)
            with self.no_sync(last=i == len(archs) - 1):
                with self.autocast():
                    logits = self.net(images)
                loss = self.loss(logits, masks)
                if distill and teacher is not None:
                    loss = (1 - weight) * loss + weight * distillation_loss(logits, teacher, masks, self.ignore_index)
                self.backward(loss)
            if distill and i == 0:
                teacher = logits.detach()
            total += float(loss.detach())
        return total / len(archs), archs

    def evaluate_val(self) -> dict[str, Any]:
        record: dict[str, Any] = {}
        scores = []
        for name, arch in self.eval_archs().items():
            result = self.evaluate_split(self.data.val, arch)
            record[f"val_miou_{name}"] = result.miou
            record[f"val_mf1_{name}"] = result.mf1
            scores.append((result.miou, result.mf1))
        record["val_miou"] = sum(s[0] for s in scores) / len(scores)
        record["val_mf1"] = sum(s[1] for s in scores) / len(scores)
        return record

    def checkpoint_extra(self) -> dict[str, Any]:
        return {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "sharing": self.config.sharing,
        }


def train_supernet(config: SupernetConfig, data, out_dir, *, space, resume: bool = False,
                   quiet: bool = False, step_hooks=(), epoch_hooks=(), backlog=None,
                   time_limit_s: float | None = None) -> dict[str, Any]:
    """Functional form of `SupernetTrainer(...).fit()`; `backlog` (blocks still to time) is
    shown next to the ETA; `time_limit_s` as `Trainer`'s."""
    trainer = SupernetTrainer(config, data, out_dir, space=space, resume=resume, quiet=quiet,
                              time_limit_s=time_limit_s)
    trainer.backlog = backlog
    for hook in step_hooks:
        trainer.add_step_hook(hook)
    for hook in epoch_hooks:
        trainer.add_epoch_hook(hook)
    return trainer.fit()


__all__ = ["SupernetTrainer", "train_supernet"]
