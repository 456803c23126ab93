"""The training loop shared by supernet training and retraining.

`Trainer.fit()` runs epochs over the train split, evaluates on val, logs, checkpoints and
resumes. Subclasses say what the model is, how the optimiser and schedule are built, what one
step does and what goes into the checkpoint.

Determinism and resuming. Everything random is seeded from ``config.seed`` and checkpointed at
every epoch end: the subnet sampler (`random.Random`), the data order (a `torch.Generator`
drawing each epoch's permutation), the global torch RNG (and CUDA's), the optimiser, the LR
schedule and the AMP scaler. Augmentation depends only on (seed, epoch, index). So a run killed
at any point and restarted with ``resume=True`` continues from its last completed epoch and
ends bit-identical (on CPU) to a run that was never interrupted.

Distributed. Under torchrun every rank builds the same model from the same seed, samples the
same subnets and draws the same permutation, of which it takes its share
(``perm[rank::world]``, padded so all ranks run the same number of steps). The model is wrapped
in DistributedDataParallel; only rank 0 writes files and calls hooks.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import statistics
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from autonad_edge.errors import AutonadError
from autonad_edge.io import atomic_write_json
from autonad_edge.space import Arch, ArchError, SearchSpace
from autonad_edge.training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    python_rng_state,
    save_checkpoint,
    set_python_rng_state,
    set_torch_rng_states,
    torch_rng_states,
)
from autonad_edge.training.config import RunConfig, config_conflicts, val_passes
from autonad_edge.training.distributed import DistContext, parameter_digest
from autonad_edge.data.crops import CropConfig
from autonad_edge.data.transforms import AugmentationConfig
from autonad_edge.training.ema import WeightAverage
from autonad_edge.training.execution import memory_format, to_training_layout
from autonad_edge.training.losses import SegmentationLoss, class_weights, masked_cross_entropy
from autonad_edge.training.schedules import make_schedule, resize_schedule
from autonad_edge.io import json_safe as _json_safe
from autonad_edge.training.progress import JsonlLog, Progress

StepHook = Callable[[int, Arch], None]
EpochHook = Callable[[int, dict], None]

SPLITS_FILE = "splits.json"
LOG_FILE = "train_log.jsonl"
PREVIOUS_DIR = "previous"  # a previous run's checkpoints, moved aside by a fresh start


class ResumeError(AutonadError, ValueError):
    """A resume that would not continue the same run (different config, space, split or world size)."""


def _saved_space(saved: str | dict) -> SearchSpace | None:
    """The search space a checkpoint recorded (its JSON); None when it cannot be read back."""
    try:
        return SearchSpace.from_dict(saved) if isinstance(saved, dict) else SearchSpace.from_json(saved)
    except (ArchError, ValueError, TypeError, KeyError):
        return None


def epoch_batches(n: int, batch_size: int, generator: torch.Generator, rank: int = 0,
                  world_size: int = 1, max_steps: int | None = None) -> list[list[int]]:
    """This rank's batches of one epoch: a permutation drawn from `generator` (the same on every
    rank), padded to a multiple of `world_size` by repeating its head, then ``perm[rank::world]``
    cut into batches."""
    perm = torch.randperm(n, generator=generator).tolist()
    per_rank = math.ceil(n / world_size)
    perm += perm[: per_rank * world_size - n]
    mine = perm[rank::world_size]
    batches = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
    return batches[:max_steps] if max_steps else batches


def steps_per_epoch(n: int, batch_size: int, world_size: int = 1, max_steps: int | None = None) -> int:
    steps = math.ceil(math.ceil(n / world_size) / batch_size)
    return min(steps, max_steps) if max_steps else steps


def epochs_within(done: int, left_s: float, train_s: float, val_s: float, eval_every: int, cap: int) -> int:
    """The most epochs in all, up to `cap`, whose rest takes at most `left_s` (at least
    `done + 1`, however late): each further epoch trains for `train_s`, and those that evaluate
    on val (every `eval_every`-th and the last, `config.val_passes`; none when it is 0) take
    `val_s` more."""
    passes_done = done // eval_every if eval_every > 0 else 0  # `done` was not the last epoch

    def rest_s(epochs: int) -> float:
        return (epochs - done) * train_s + (val_passes(epochs, eval_every) - passes_done) * val_s

    epochs = done + 1
    while epochs < cap and rest_s(epochs + 1) <= left_s:
        epochs += 1
    return epochs


class Trainer:
    """Base class; see `SupernetTrainer` and `RetrainTrainer`."""

    kind = "subnet"
    checkpoint_name = "last.pt"
    title = "train"

    def __init__(self, config: RunConfig, data, out_dir: str | Path, *, space: SearchSpace,
                 resume: bool = False, quiet: bool = False, dist: DistContext | None = None,
                 time_limit_s: float | None = None) -> None:
        config.check()  # a value no run can use, in one line before any work (ValueError)
        self.config = config
        # Wall seconds the epochs may take in this process (epoch hooks not counted): when the
        # measured pace says the planned epochs would overrun (or, early on, end well inside
        # it), fewer (more) are run and the schedule ends with them (`_fit_to_time_limit`).
        # None: the configured epochs, however long they take.
        self.time_limit_s = time_limit_s
        self.epochs = int(config.epochs)  # the epochs this run ends at: config.epochs, or as the time limit set
        self._pace_from = (0, 0.0)  # (first epoch, loop start) of this process, for the pace
        # Seconds this process spent in epoch hooks: not the epochs' time. A background
        # profiler times blocks there, which a budget plans apart from the epochs.
        self._epoch_hooks_s = 0.0
        self.data = data
        self.out_dir = Path(out_dir)
        self.space = space
        self.resume = resume
        self.quiet = quiet
        self._dist = dist
        self._step_hooks: list[StepHook] = []
        self._epoch_hooks: list[EpochHook] = []
        self.ignore_index = int(getattr(data, "ignore_index", 255))
        self.history: list[dict[str, Any]] = []
        self.resuming = False  # set by fit(): resume asked and a checkpoint exists
        # Blocks still to time (a background profiler's backlog), shown next to the ETA.
        self.backlog: Callable[[], int] | None = None

    # ---- hooks ---------------------------------------------------------------------------
    def add_step_hook(self, hook: StepHook) -> None:
        """Call ``hook(step, arch)`` after every optimiser step, on rank 0, once per subnet
        trained in that step (one; with the sandwich rule the largest, the smallest, then the
        random ones). `step` counts optimiser steps from 1 over the whole run.

        The hook runs inside the training loop and MUST NOT BLOCK: hand the arch to a queue or
        a thread and return (see `BackgroundHook`). An exception raised by a hook stops the run
        (the last checkpoint stays valid)."""
        self._step_hooks.append(hook)

    def add_epoch_hook(self, hook: EpochHook) -> None:
        """Call ``hook(epoch, record)`` on rank 0 after each epoch's log record and checkpoint
        are written (`epoch` counts from 1; `record` is the `train_log.jsonl` entry)."""
        self._epoch_hooks.append(hook)

    # ---- subclass interface --------------------------------------------------------------
    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        raise NotImplementedError

    def build_scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int):
        cfg = self.config
        warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
        return make_schedule(optimizer, cfg.schedule, total_steps, warmup, cfg.min_lr_factor,
                             power=getattr(cfg, "poly_power", 0.9))

    def train_step(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[float, list[Arch]]:
        """Forward/backward (gradients accumulated into .grad), no optimiser step. Returns the
        mean loss and the subnets trained."""
        raise NotImplementedError

    def evaluate_val(self) -> dict[str, Any] | None:
        raise NotImplementedError

    def checkpoint_extra(self) -> dict[str, Any]:
        """Kind-specific checkpoint entries (model weights included)."""
        raise NotImplementedError

    def load_extra(self, ckpt: dict[str, Any]) -> None:
        """Restore kind-specific state (the model weights are loaded by the base class)."""

    def after_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        """Rank 0, at the end of an epoch, before its log record and resumable checkpoint are
        written (it may add entries to `record`)."""

    def finish(self) -> dict[str, Any]:
        """Called on every rank once training is done (also when a resumed run had no epochs
        left); returns summary entries. The base trainer has nothing to finish."""
        return {}

    def summary_extra(self) -> dict[str, Any]:
        return {}

    # ---- helpers for subclasses ------------------------------------------------------------
    @property
    def dist(self) -> DistContext:
        return self._dist

    @property
    def module(self) -> nn.Module:
        """The bare model (not the DDP wrapper)."""
        return self.model

    def autocast(self):
        if self.use_amp:
            return torch.autocast("cuda", dtype=torch.float16)
        return nullcontext()

    def loss(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(logits, masks)

    @property
    def eval_model(self) -> nn.Module:
        """The model evaluated and saved: the weight average when `ema_decay` is set."""
        return self.ema.module if self.ema is not None else self.model

    def evaluate_split(self, dataset, arch: Arch | None = None):
        """`evaluate` of the evaluated model on `dataset`: whole images at their training scale,
        in tiles of the network's input size."""
        from autonad_edge.training.evaluate import evaluate

        return evaluate(self.eval_model, dataset, arch, batch_size=self.config.eval_batch_size,
                        device=self.device, class_names=self.data.class_names,
                        ignore_index=self.ignore_index, amp=self.use_amp, dist=self.dist,
                        tile_size=int(self.config.image_size))

    def calibrate(self, model: nn.Module, arch: Arch | None = None, per_class: bool = False):
        """The val-chosen logit offsets of `model` (`training.calibration`: the background's,
        and with `per_class` one per class), scored as `evaluate_split` scores; folding them
        in is the caller's."""
        from autonad_edge.training.calibration import calibrate

        return calibrate(model, self.data.val, arch, batch_size=self.config.eval_batch_size, device=self.device,
                         num_classes=self.data.num_classes, ignore_index=self.ignore_index, amp=self.use_amp,
                         dist=self.dist, tile_size=int(self.config.image_size), per_class=per_class)

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of a (possibly AMP-scaled) loss; gradients accumulate into .grad."""
        self.scaler.scale(loss).backward()

    def no_sync(self, last: bool):
        """DDP gradient sync only on the last backward of a step (gradient accumulation)."""
        if self.dist.distributed and not last:
            return self.net.no_sync()
        return nullcontext()

    # ---- files -------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / self.checkpoint_name

    def _payload(self, epoch: int, step: int) -> dict[str, Any]:
        payload = {
            "kind": self.kind,
            "space": self.space.to_json(indent=None),
            "num_classes": int(self.data.num_classes),
            "class_names": list(self.data.class_names),
            "image_size": [int(v) for v in self.data.image_size],
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.use_amp else None,
            "rng": {
                "sampler": python_rng_state(self.sampler_rng),
                "data": self.data_gen.get_state(),
                **torch_rng_states(self.device),
            },
            "epoch": int(epoch),
            "epochs": int(self.epochs),
            "step": int(step),
            "world_size": int(self.dist.world_size),
            "config": self.config.to_dict(),
            "metrics": dict(self.history[-1]) if self.history else {},
            "splits": json.dumps(self.manifest),
        }
        payload.update(self.checkpoint_extra())
        if self.ema is not None:
            # "model" is what every loader reads: the evaluated (averaged) weights; the raw
            # training weights ride along for resuming.
            payload["train_model"] = payload["model"]
            payload["model"] = {k: v.detach().cpu() for k, v in self.ema.module.state_dict().items()}
            payload["ema_updates"] = int(self.ema.updates)
        return payload

    def run_checkpoints(self) -> list[Path]:
        """The checkpoints this run writes in `out_dir`: a fresh start must not inherit a previous
        run's (a retraining would adopt, calibrate and report another run's best.pt)."""
        return [self.checkpoint_path]

    def _write_run_files(self, fresh: bool) -> list[Path]:
        """Write the run's splits and config; on a fresh start, reset the log and move a previous
        run's checkpoints to ``previous/`` (kept, not lost: a forgotten --resume can be undone).
        Returns the moved files."""
        if not self.dist.is_main:
            return []
        self.out_dir.mkdir(parents=True, exist_ok=True)
        moved = []
        if fresh:
            stale = [path for path in self.run_checkpoints() if path.exists()]
            if stale:
                previous = self.out_dir / PREVIOUS_DIR
                previous.mkdir(exist_ok=True)
                for path in stale:
                    os.replace(path, previous / path.name)
                    moved.append(previous / path.name)
        atomic_write_json(self.out_dir / SPLITS_FILE, self.manifest)
        atomic_write_json(self.out_dir / "config.json", {"kind": self.kind, **self.config.to_dict()})
        if fresh:
            self.log.reset()
        return moved

    # ---- resume --------------------------------------------------------------------------
    def _try_resume(self) -> tuple[int, int]:
        if not self.resume or not self.checkpoint_path.exists():
            return 0, 0
        ckpt = load_checkpoint(self.checkpoint_path, map_location=self.device)
        if ckpt["kind"] != self.kind:
            raise ResumeError(f"{self.checkpoint_path}: a {ckpt['kind']} checkpoint, not a {self.kind} one")
        # Another space's weights may even have the same shapes: compared, not left to load_state_dict.
        if ckpt.get("space") is not None and _saved_space(ckpt["space"]) != self.space:
            raise ResumeError(f"{self.checkpoint_path}: trained in another search space; start it in a new --out")
        conflicts = config_conflicts(ckpt.get("config") or {}, self.config.to_dict())
        if conflicts:
            saved = ckpt["config"]
            detail = ", ".join(f"{k}={saved.get(k)!r} (now {self.config.to_dict().get(k)!r})" for k in conflicts)
            raise ResumeError(f"{self.checkpoint_path}: cannot resume with a different configuration: {detail}")
        if int(ckpt.get("world_size", 1)) != self.dist.world_size:
            raise ResumeError(
                f"{self.checkpoint_path}: the run used {ckpt.get('world_size')} processes, not "
                f"{self.dist.world_size} (the data order and schedule depend on it)"
            )
        saved_splits = json.loads(ckpt["splits"]) if ckpt.get("splits") else None
        if saved_splits is not None and saved_splits.get("splits") != self.manifest.get("splits"):
            raise ResumeError(
                f"{self.checkpoint_path}: the data split differs from the checkpoint's; load the data "
                f"with the run's {SPLITS_FILE}"
            )
        self.load_extra(ckpt)
        try:
            if self.ema is not None and "train_model" in ckpt:
                self.module.load_state_dict(ckpt["train_model"])
                self.ema.module.load_state_dict(ckpt["model"])
                self.ema.updates = int(ckpt.get("ema_updates", 0))
            else:
                self.module.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])  # a shortened schedule stays shortened
        except (RuntimeError, ValueError, KeyError) as exc:  # load_state_dict's are many lines long
            first = " ".join(str(exc).split())[:200]
            raise ResumeError(f"{self.checkpoint_path}: its state does not fit this network ({first}); "
                              "start it in a new --out") from None
        self.epochs = int(ckpt.get("epochs", self.config.epochs))
        if self.use_amp and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        rng = ckpt["rng"]
        set_python_rng_state(self.sampler_rng, rng["sampler"])
        self.data_gen.set_state(rng["data"].cpu())
        set_torch_rng_states(rng, self.device)
        epoch, step = int(ckpt["epoch"]), int(ckpt["step"])
        if self.dist.is_main:
            self.log.truncate_after(epoch)
            self.history = [r for r in self.log.read() if int(r.get("epoch", 0)) <= epoch]
        return epoch, step

    # ---- the loop ------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.config
        if self._dist is None:
            self._dist = DistContext.from_env(cfg.device)
        self.device = self.dist.device
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        self.use_amp = bool(cfg.amp) and self.device.type == "cuda"
        self.manifest = self.data.manifest()
        self.log = JsonlLog(self.out_dir / LOG_FILE, enabled=self.dist.is_main)
        self.resuming = bool(self.resume) and self.checkpoint_path.exists()
        torch.manual_seed(cfg.seed)
        self.sampler_rng = random.Random(cfg.seed)
        self.data_gen = torch.Generator().manual_seed(cfg.seed)
        self.memory_format = memory_format(cfg.channels_last)
        self.model = to_training_layout(self.build_model(), self.device, cfg.channels_last)
        weights = class_weights(self.data.class_frequencies("train"), cfg.class_weighting)
        self.class_weight = None if weights is None else torch.tensor(weights, dtype=torch.float32, device=self.device)
        self.loss_fn = SegmentationLoss(cfg.loss, self.ignore_index, self.class_weight)
        self.ema = WeightAverage(self.model, cfg.ema_decay) if cfg.ema_decay else None
        crops = CropConfig(cfg.crop_hw, cfg.defect_crop_share)
        self.train_set = self.data.train_crops(cfg.seed, crops, AugmentationConfig() if cfg.augment else None)
        if len(self.train_set) == 0:
            raise ValueError("the train split is empty")
        self.steps_per_epoch = steps_per_epoch(len(self.train_set), cfg.batch_size,
                                               self.dist.world_size, cfg.max_steps_per_epoch)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.optimizer = self.build_optimizer(self.model)
        self.scheduler = self.build_scheduler(self.optimizer, self.total_steps, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.params = [p for p in self.model.parameters() if p.requires_grad]

    def _wrap(self) -> None:
        self.net: nn.Module = self.model
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DDP(self.model, device_ids=ids, find_unused_parameters=self.find_unused_parameters)

    find_unused_parameters = False

    def _optimizer_step(self) -> None:
        if self.config.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)

    def _check_ranks_agree(self, what: str, value: Any) -> None:
        values = self.dist.all_gather_object(value)
        if len(set(values)) > 1:
            raise RuntimeError(f"ranks disagree on {what}: {values}")

    def fit(self) -> dict[str, Any]:
        """Train to ``config.epochs`` (resuming first if asked); returns the run summary."""
        try:
            self._setup()
            return self._fit()
        finally:
            if self._dist is not None:
                self._dist.close()

    def _fit(self) -> dict[str, Any]:
        cfg = self.config
        start_epoch, step = self._try_resume()
        self._wrap()
        moved = self._write_run_files(fresh=start_epoch == 0)
        run_start = time.perf_counter()
        progress = Progress(self.epochs, self.steps_per_epoch, quiet=self.quiet,
                            enabled=self.dist.is_main, title=self.title, start_step=step, backlog=self.backlog)
        with progress:
            if start_epoch:
                progress.message(f"resumed {self.checkpoint_path} at epoch {start_epoch}, step {step}")
            elif moved:
                progress.message(f"starting afresh: the previous run's {', '.join(p.name for p in moved)} moved to "
                                 f"{moved[0].parent} (--resume continues a run)")
            self._pace_from = (start_epoch, run_start)
            epoch = start_epoch
            while epoch < self.epochs:
                step = self._run_epoch(epoch, step, progress)
                epoch += 1
        digests = self.dist.all_gather_object(parameter_digest(self.module))
        if len(set(digests)) > 1:
            raise RuntimeError(f"ranks ended with different parameters: {digests}")
        finished = self.finish()
        summary = {
            "kind": self.kind,
            "epochs": self.epochs,
            "planned_epochs": cfg.epochs,
            "steps": step,
            "world_size": self.dist.world_size,
            "device": str(self.device),
            "checkpoint": str(self.checkpoint_path),
            "rank_param_digests": digests,
            "time": time.perf_counter() - run_start,
            "last": self.history[-1] if self.history else None,
            **self.summary_extra(),
            **finished,
        }
        if self.dist.is_main:
            atomic_write_json(self.out_dir / "summary.json", _json_safe(summary))
        return summary

    # Epochs whose median training time is the first judgement's pace (a val pass costs the
    # mean of the last ones run); none are judged before.
    PACE_EPOCHS = 3
    # A run the pace shows would end early is lengthened once, at its first judgement, while its
    # schedule has barely begun (so the longer decay changes the rates to come, not those
    # already used), by at most half its planned epochs.
    EXTEND_WITHIN = 0.25
    MAX_EXTENSION = 1.5
    # Later judgements pace the run by the median of this process's last `PACE_WINDOW` epochs and
    # change it only when it ends more than `PACE_BAND` of the epochs left (at least one) off the
    # limit; epochs a cut took are given back, up to the plan's, before the decay's last quarter
    # (`RESTORE_WITHIN`). The last three epochs' pace, cutting whenever one epoch did not fit,
    # only ever cut: a slow spell took a 60-minute Magnetic-tile retraining from 457 epochs to
    # 397, the host then ran faster, and it ended 6 minutes inside its budget (session 25);
    # giving epochs back on that pace resized a run's schedule 90 times in 214 epochs (session
    # 26). Replayed through eight runs' logged epoch times (`benchmarks/time_limit_rules.py`):
    # 1-14 resizes and 2-86 s of the limit left, where the old rule left 42-403 s.
    PACE_WINDOW = 50
    PACE_BAND = 0.05
    RESTORE_WITHIN = 0.75

    def _fit_to_time_limit(self, done: int, progress: Progress) -> None:
        """After epoch `done` (before its checkpoint, which keeps the decision): if the epochs
        left would overrun `time_limit_s` at the recent pace by more than one epoch (the
        budget's margin absorbs one), end the run at the epochs that fit (at least one more,
        which evaluates) and shorten the schedule to match, so the rate still decays to its end.
        If instead they would end more than one epoch early and this is the first judgement of
        an early epoch, run the epochs that fit, less one (`EXTEND_WITHIN`, `MAX_EXTENSION`).
        Later judgements take a longer pace and a band (`PACE_WINDOW`, `PACE_BAND`), and give
        back epochs an earlier one cut (`RESTORE_WITHIN`).

        A plan's epochs come from a step measured before the stage (`search.budget`), and the
        host's pace moves: on the 2-core VM a default run's epochs went from 2.1 to 2.6 s
        halfway through and the run ended 18 s past its 10 minutes (session 18); another's ran
        at 2.0 s where ten probe steps said 2.3, and it ended 45 s early (session 19)."""
        start_epoch, run_start = self._pace_from
        if self.time_limit_s is None or done >= self.epochs:
            return
        # A resumed run is judged from its first epoch here, also on the pace its log holds:
        # waiting for this process's own first epochs let every resume overrun a spent limit
        # by them. Rank 0 alone reads the log: every rank follows its answer.
        own_epochs = done - start_epoch
        early = own_epochs < self.PACE_EPOCHS
        if early and start_epoch > 0:
            early = not self.dist.broadcast_object(len(self.history) >= self.PACE_EPOCHS)
        if early:
            return
        # Training and val passes paced apart: the passes land on every eval_every-th epoch, so
        # a window of whole epochs holds them unevenly (every other epoch: one or two in three,
        # and the supernet's limit swung 26 -> 31 -> 28 -> 26 epochs on Magnetic-tile).
        # The recent passes of this process (settings may change on resume), else earlier ones;
        # before the first, none are priced: a later judgement cuts what they overrun.
        # The median of the recent epochs: one epoch slowed by a passing load (18 s among 5 s
        # ones on a shared host) no longer cuts the run for good (a mean took it to 35 of 60).
        later = own_epochs > self.PACE_EPOCHS
        window = min(own_epochs, self.PACE_WINDOW) if later else self.PACE_EPOCHS
        train_s = statistics.median(float(r["train_time"]) for r in self.history[-window:])
        if own_epochs < self.PACE_EPOCHS:
            # Not yet a pace of its own: the faster of the log's and this process's, so a slow
            # spell before the stop (or another device now) does not cut what cannot be undone.
            train_s = min(train_s, statistics.median(float(r["train_time"]) for r in self.history[-own_epochs:]))
        passes = [r for r in self.history if "val_miou" in r]
        passes = ([r for r in passes if r["epoch"] > start_epoch] or passes)[-self.PACE_EPOCHS:]
        val_s = sum(float(r["time"]) - float(r["train_time"]) for r in passes) / max(len(passes), 1)
        left = self.time_limit_s - (time.perf_counter() - run_start - self._epoch_hooks_s)
        cap = max(self.epochs, int(self.config.epochs * self.MAX_EXTENSION)) + 2
        fits = epochs_within(done, left, train_s, val_s, int(self.config.eval_every or 0), cap)
        fits = int(self.dist.broadcast_object(fits))  # every rank stops where rank 0 says
        pace = train_s + val_s * val_passes(fits, int(self.config.eval_every or 0)) / max(fits, 1)
        band = max(1, math.ceil(self.PACE_BAND * (self.epochs - done))) if later else 1
        if fits < self.epochs - band:
            epochs, why = fits, f"{self.epochs} epochs would overrun the time limit"
        elif (fits > self.epochs + 1 and done - start_epoch == self.PACE_EPOCHS
              and done <= self.EXTEND_WITHIN * self.epochs):
            epochs = min(fits - 1, int(self.config.epochs * self.MAX_EXTENSION))
            why = f"{self.epochs} epochs would end {(fits - self.epochs) * pace:.0f} s inside the time limit"
            if epochs <= self.epochs:
                return
        elif (later and fits > self.epochs + band and self.epochs < self.config.epochs
              and done <= self.RESTORE_WITHIN * self.epochs):
            epochs = min(fits - 1, int(self.config.epochs))
            why = f"the cut to {self.epochs} epochs is no longer needed"
        else:
            return
        resize_schedule(self.scheduler, epochs * self.steps_per_epoch)
        if self.dist.is_main:
            progress.message(f"{self.title}: {why} at {pace:.1f} s an epoch; running {epochs}")
        # The epoch's log record keeps the decision (a quiet run prints none).
        self.history[-1].update(epochs_set=epochs, epochs_why=f"{why} at {pace:.1f} s an epoch")
        self.epochs = epochs
        progress.set_total_epochs(epochs)

    def _run_epoch(self, epoch: int, step: int, progress: Progress) -> int:
        cfg = self.config
        epoch_start = time.perf_counter()
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)
        if self.dist.distributed:
            state = repr(self.sampler_rng.getstate()).encode()
            self._check_ranks_agree("the subnet sampler state", hashlib.sha256(state).hexdigest()[:16])
        batches = epoch_batches(len(self.train_set), cfg.batch_size, self.data_gen,
                                self.dist.rank, self.dist.world_size, cfg.max_steps_per_epoch)
        loader = DataLoader(self.train_set, batch_sampler=batches, num_workers=cfg.workers,
                            pin_memory=self.device.type == "cuda")
        self.model.train()
        progress.start_epoch(epoch, len(batches))
        loss_sum, images_seen, speed = 0.0, 0, 0.0
        for images, masks in loader:
            t0 = time.perf_counter()
            images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
            masks = masks.to(self.device, non_blocking=True)
            self.optimizer.zero_grad(set_to_none=True)
            loss, archs = self.train_step(images, masks)
            self._optimizer_step()
            step += 1
            loss_sum += loss
            images_seen += images.shape[0]
            if self.dist.is_main:
                for arch in archs:
                    for hook in self._step_hooks:
                        hook(step, arch)
            now = time.perf_counter()
            rate = images.shape[0] * self.dist.world_size / max(now - t0, 1e-9)
            speed = rate if speed == 0 else 0.9 * speed + 0.1 * rate
            progress.step(loss, self.optimizer.param_groups[0]["lr"], speed)
        train_time = time.perf_counter() - epoch_start
        totals = self.dist.all_reduce_sum(torch.tensor([loss_sum, float(len(batches)), float(images_seen)],
                                                       dtype=torch.float64))
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": step,
            "loss": float(totals[0] / max(totals[1], 1)),
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "images_per_s": float(totals[2] / max(train_time, 1e-9)),
            "train_time": train_time,
        }
        last = epoch + 1 == self.epochs
        if cfg.eval_every and ((epoch + 1) % cfg.eval_every == 0 or last) and len(self.data.val):
            record.update(self.evaluate_val() or {})
        record["time"] = time.perf_counter() - epoch_start
        self.history.append(record)
        self._fit_to_time_limit(epoch + 1, progress)
        if self.dist.is_main:
            self.after_epoch(epoch + 1, record)
            self.log.write(record)
            save_checkpoint(self.checkpoint_path, self._payload(epoch + 1, step))
            progress.end_epoch(record, self.epochs - epoch - 1)
            hooks_start = time.perf_counter()
            for hook in self._epoch_hooks:
                hook(epoch + 1, record)
            self._epoch_hooks_s += time.perf_counter() - hooks_start
        self.dist.barrier()
        return step


__all__ = [
    "CheckpointError",
    "EpochHook",
    "LOG_FILE",
    "ResumeError",
    "SPLITS_FILE",
    "StepHook",
    "Trainer",
    "epoch_batches",
    "epochs_within",
    "masked_cross_entropy",
    "steps_per_epoch",
]
