"""Retraining a searched subnet as a plain `SegmentationNet`.

From scratch (``init="scratch"``, fresh initialisation) or fine-tuned from the supernet's
inherited weights (``init="inherited"`` with ``supernet=<supernet checkpoint>``). Adam, lr 1e-4,
per-step poly decay (power 0.9), cross-entropy with ignore index 255. After every evaluated
epoch the best-val-mIoU network is kept as ``<out>/best.pt``, and after the last one its
decision is calibrated on val (`training.calibration`, folded into its classifier);
``<out>/last.pt`` holds the full training state and resumes like supernet training. Both are
``kind="subnet"`` checkpoints that `load_model` reads.

    trainer = RetrainTrainer(RetrainConfig(epochs=50), data, "runs/retrain", space=space, arch=arch)
    trainer.fit()
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from autonad_edge.models.network import SegmentationNet
from autonad_edge.space import Arch, ArchError, SearchSpace
from autonad_edge.training.calibration import apply_offset
from autonad_edge.training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model,
    save_checkpoint,
    subnet_payload,
)
from autonad_edge.training.config import RetrainConfig
from autonad_edge.data.splits import load_manifest
from autonad_edge.training.engine import SPLITS_FILE, Trainer
from autonad_edge.training.execution import build_adam

BEST_FILE = "best.pt"
INITS = ("scratch", "inherited")


class RetrainTrainer(Trainer):
    kind = "subnet"
    checkpoint_name = "last.pt"
    title = "retrain"

    config: RetrainConfig

    def __init__(self, config: RetrainConfig, data, out_dir, *, space: SearchSpace, arch: Arch, **kwargs) -> None:
        super().__init__(config, data, out_dir, space=space, **kwargs)
        if config.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {config.init!r}")
        if config.init == "inherited" and not config.supernet:
            raise ValueError("init='inherited' needs the supernet checkpoint (supernet=...)")
        self.arch = space.validate(arch)
        self.best: dict[str, Any] = {"epoch": 0, "val_miou": None}

    def build_model(self) -> SegmentationNet:
        if self.config.init == "scratch" or self.resuming:
            # Resuming: the weights come from last.pt, the supernet is not needed.
            return SegmentationNet.from_arch(self.arch, self.space, self.data.num_classes)
        net, info = load_model(self.config.supernet, self.arch)
        if info.kind != "supernet":
            raise CheckpointError(f"{self.config.supernet}: init='inherited' needs a supernet checkpoint")
        if info.space != self.space:
            raise ArchError(f"{self.config.supernet}: the supernet's search space differs from the run's")
        if info.num_classes != self.data.num_classes or info.class_names != self.data.class_names:
            raise CheckpointError(
                f"{self.config.supernet}: the supernet was trained on classes {info.class_names}, "
                f"the data has {self.data.class_names}"
            )
        return net.train()

    def build_optimizer(self, model):
        return build_adam(model.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay,
                          device=self.device)

    def train_step(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[float, list[Arch]]:
        with self.autocast():
            logits = self.net(images)
        loss = self.loss(logits, masks)
        self.backward(loss)
        return float(loss.detach()), [self.arch]

    def evaluate_val(self) -> dict[str, Any]:
        result = self.evaluate_split(self.data.val)
        return {"val_miou": result.miou, "val_mf1": result.mf1, "val_miou_defects": result.defect_miou}

    def _subnet_payload(self, model=None, **extra) -> dict[str, Any]:
        """The evaluated model's subnet checkpoint (or `model`'s), with its training scale: an
        aspect-kept run's long-side cap, or ``squash`` for a run that squashed every image to
        image_size (inference must squash the same way to see the scale it was trained on)."""
        scale: dict[str, Any] = ({"max_side": self.config.max_side} if self.config.keep_aspect
                                 else {"max_side": None, "squash": True})
        return subnet_payload(model or self.eval_model, self.space, list(self.data.class_names),
                              tuple(self.data.image_size), **scale, **extra)

    def after_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        score = record.get("val_miou")
        if score is None or (isinstance(score, float) and math.isnan(score)):
            return
        if self.best["val_miou"] is None or score > self.best["val_miou"]:
            self.best = {"epoch": epoch, "val_miou": float(score), "val_mf1": record.get("val_mf1")}
            save_checkpoint(self.out_dir / BEST_FILE, self._subnet_payload(
                epoch=epoch, step=int(record["step"]), config=self.config.to_dict(),
                metrics=dict(record), splits=self._payload_splits(),
            ))
        record["best_val_miou"] = self.best["val_miou"]

    def _payload_splits(self) -> str:
        import json

        return json.dumps(self.manifest)

    def run_checkpoints(self) -> list[Path]:
        return [*super().run_checkpoints(), self.out_dir / BEST_FILE]

    def checkpoint_extra(self) -> dict[str, Any]:
        extra = self._subnet_payload(self.model)  # raw weights; the base class adds the average
        extra["best"] = dict(self.best)
        extra["init"] = self.config.init
        return extra

    def load_extra(self, ckpt: dict[str, Any]) -> None:
        if ckpt.get("arch") and Arch.from_json(ckpt["arch"]) != self.arch:
            raise ArchError(f"{self.checkpoint_path}: the run retrains another architecture")
        self.best = dict(ckpt.get("best") or self.best)
        self._adopt_a_later_best(int(ckpt.get("epoch") or 0))

    def _adopt_a_later_best(self, resumed_epoch: int) -> None:
        """``best.pt`` is written before ``last.pt``: a process stopped between the two leaves a
        best from an epoch the resume rolls back. Where training is not bit-exact (CUDA), the
        rerun of that epoch may score lower, and the kept weights would be ones no record
        describes; the record follows the file instead (later epochs must beat it)."""
        path = self.out_dir / BEST_FILE
        if not path.exists():
            return
        saved = load_checkpoint(path)
        score = (saved.get("metrics") or {}).get("val_miou")
        if int(saved.get("epoch") or 0) > resumed_epoch and score is not None and (
                self.best["val_miou"] is None or score > self.best["val_miou"]):
            self.best = {"epoch": int(saved["epoch"]), "val_miou": float(score),
                         "val_mf1": (saved.get("metrics") or {}).get("val_mf1")}

    def finish(self) -> dict[str, Any]:
        """Calibrate the kept network (``best.pt``) once: the val-chosen logit offsets are
        folded into its classifier and the checkpoint records it (a resumed run that finds it
        recorded does not shift it again)."""
        path = self.out_dir / BEST_FILE
        if not self.config.calibrate or not len(self.data.val) or not path.exists():
            return {}
        payload = load_checkpoint(path)
        if payload.get("calibration"):
            return {"calibration": payload["calibration"]}
        net, _ = load_model(path, device=self.device)
        calibration = self.calibrate(net, per_class=self.config.calibrate_per_class)
        apply_offset(net.classifier, calibration)
        # Beside val_miou, not over it: calibration scores only the classes val holds (its
        # objective), val_miou every class (as the epochs recorded it and a resume compares).
        metrics = dict(payload.get("metrics") or {}, val_miou_calibrated=calibration.miou_after)
        if self.dist.is_main:
            save_checkpoint(path, {**payload, **self._subnet_payload(net), "metrics": metrics,
                                   "calibration": calibration.to_dict()})
        self.best["val_miou_calibrated"] = calibration.miou_after
        return {"calibration": calibration.to_dict()}

    def summary_extra(self) -> dict[str, Any]:
        return {"arch_hash": self.arch.hash, "arch": self.arch.summary(), "best": dict(self.best),
                "best_checkpoint": str(self.out_dir / BEST_FILE) if self.best.get("val_miou") is not None else None}


def retrain_split(config: RetrainConfig, out_dir, *, splits=None, resume: bool = False,
                  supernet_checkpoint: dict[str, Any] | None = None,
                  image_size_given: bool = True) -> tuple[dict[str, Any] | None, RetrainConfig]:
    """The split manifest a retraining uses, and its config: `splits` (a manifest file) when
    given, else the resumed run's, else the supernet's when retraining on the same data (so
    val and test stay unseen by both), at the supernet's image size unless one was given.
    None: a fresh split of the data."""
    if splits is not None:
        return load_manifest(splits), config
    if resume and (Path(out_dir) / SPLITS_FILE).is_file():
        return load_manifest(Path(out_dir) / SPLITS_FILE), config
    if supernet_checkpoint is None or not supernet_checkpoint.get("splits"):
        return None, config
    saved = json.loads(supernet_checkpoint["splits"])
    if saved.get("format") != config.format or not _same_root(saved.get("root"), config.data):
        return None, config
    if not image_size_given and supernet_checkpoint.get("image_size"):
        config = config.replace(image_size=int(supernet_checkpoint["image_size"][0]))
    return saved, config


def _same_root(saved: str | None, given: str | None) -> bool:
    """Whether a manifest's data root (absolute, resolved when it was made) is the data given
    now: the path is compared resolved, as a relative one names the same directory."""
    if saved is None or given is None:
        return True
    return Path(given).expanduser().resolve() == Path(saved).expanduser().resolve()


def retrain(config: RetrainConfig, data, out_dir, *, space: SearchSpace, arch: Arch,
            resume: bool = False, quiet: bool = False, time_limit_s: float | None = None) -> dict[str, Any]:
    """Functional form of `RetrainTrainer(...).fit()`."""
    return RetrainTrainer(config, data, out_dir, space=space, arch=arch, resume=resume, quiet=quiet,
                          time_limit_s=time_limit_s).fit()


__all__ = ["BEST_FILE", "INITS", "RetrainTrainer", "retrain", "retrain_split"]
