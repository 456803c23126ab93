"""Time-budgeted runs: plan supernet and retrain epochs (and the search's size) so that a whole
`autonad-edge search --time-budget MINUTES` ends within the budget on this machine.

The pipeline measures its own costs first (`StageCosts`: a few timed supernet and retraining
steps, a timed validation pass) and `plan_budget` turns them into a `BudgetPlan` by plain
arithmetic, which the report prints. The split of the time follows what buys accuracy:
after the fixed costs (block timing, latency calibration, export, a safety margin) the search
gets a capped share, and the rest goes to supernet training and retraining in the ratio
`supernet_share`. A budget too small for the minimum epochs is refused with the figure that
would fit.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import time
from dataclasses import asdict, dataclass, fields

import torch
from torch.utils.data import Subset

from autonad_edge.data.crops import CropConfig
from autonad_edge.data.transforms import AugmentationConfig
from autonad_edge.errors import AutonadError
from autonad_edge.inference import plan_tiles, resolve_overlap
from autonad_edge.models.network import SegmentationNet
from autonad_edge.models.supernet import HybridSupernet
from autonad_edge.search.evolution import breeding_parents
from autonad_edge.training.calibration import calibrate
from autonad_edge.training.config import RETRAIN_EVALS, SUPERNET_EVALS, eval_every_for, val_passes
from autonad_edge.training.distributed import resolve_device
from autonad_edge.training.ema import WeightAverage
from autonad_edge.training.engine import steps_per_epoch
from autonad_edge.training.evaluate import evaluate
from autonad_edge.training.execution import build_adam, memory_format, to_training_layout
from autonad_edge.training.losses import SegmentationLoss


class BudgetError(AutonadError, ValueError):
    """A budget that cannot hold even the smallest run."""


@dataclass(frozen=True)
class StageCosts:
    """Seconds per unit of work, measured on this machine before the run (or given, in tests)."""

    supernet_step_s: float  # one supernet optimiser step (all sandwich subnets)
    retrain_step_s: float  # one retraining step of a typical subnet
    val_eval_s: float  # evaluating one subnet on the whole val split
    supernet_steps_per_epoch: int
    retrain_steps_per_epoch: int
    latency_s: float  # block timing + end-to-end calibration (estimated)
    export_s: float = 30.0  # ONNX export, end-to-end measurement, bundle, report
    # One val pass of the supernet's progress evaluation (its largest and smallest subnets;
    # `SUPERNET_EVALS` of them a run). None (plans saved before it was measured): two subnets'.
    supernet_val_s: float | None = None
    # Val passes of a whole retraining, whatever its length (`RETRAIN_EVALS` and the last
    # epoch's): evaluating every epoch of a 136-epoch budgeted run spent 60 % of its time on
    # val and left 40 % to training (the MT 60-minute plan, session 6).
    retrain_evals: int = RETRAIN_EVALS + 1

    @classmethod
    def from_dict(cls, d: dict) -> "StageCosts":
        """From a saved plan; fields an older plan.json had and this one has not are dropped."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class BudgetPlan:
    budget_s: float
    supernet_epochs: int
    retrain_epochs: int
    population: int
    generations: int
    supernet_s: float
    search_s: float
    retrain_s: float
    fixed_s: float  # latency + export + margin

    @property
    def total_s(self) -> float:
        return self.supernet_s + self.search_s + self.retrain_s + self.fixed_s

    def to_dict(self) -> dict:
        return {**asdict(self), "total_s": self.total_s}

    def summary(self) -> str:
        return (f"plan for {round(self.budget_s / 60, 1):g} min: supernet {self.supernet_epochs} epochs "
                f"(~{self.supernet_s / 60:.1f} min), search {self.population} x {self.generations} "
                f"(~{self.search_s / 60:.1f} min), retrain {self.retrain_epochs} epochs "
                f"(~{self.retrain_s / 60:.1f} min), fixed ~{self.fixed_s / 60:.1f} min")


def evaluations(population: int, generations: int, parents: int) -> int:
    """Subnets the evolutionary search evaluates: the first population (its first generation),
    then the children of each later one (a default run's 16 x 5 with 5 parents: 60, not 71)."""
    return population + max(generations - 1, 0) * max(population - breeding_parents(population, parents), 0)


def supernet_s(c: StageCosts, epochs: int) -> float:
    """Seconds of a supernet training of `epochs`: its steps and its progress evaluations
    (every epoch in a short run, about `SUPERNET_EVALS` in a long one; on Magnetic-tile they
    took 63 of 390 s where a fixed 0.2 an epoch planned 18, session 21)."""
    val_s = c.supernet_val_s if c.supernet_val_s is not None else 2 * c.val_eval_s
    passes = val_passes(epochs, eval_every_for(epochs, SUPERNET_EVALS))
    return epochs * c.supernet_steps_per_epoch * c.supernet_step_s + passes * val_s


def supernet_epochs_within(c: StageCosts, seconds: float, min_epochs: int) -> int:
    """The most supernet epochs whose `supernet_s` fits `seconds` (at least `min_epochs`). The
    evaluations' count is not monotone in the epochs (19 epochs evaluate 19 times, 20 ten), so
    every count up to the steps' bound is tried."""
    step_epoch = c.supernet_steps_per_epoch * c.supernet_step_s
    bound = int(seconds // step_epoch) if step_epoch > 0 else min_epochs
    for epochs in range(min(bound, 100_000), min_epochs, -1):
        if supernet_s(c, epochs) <= seconds:
            return epochs
    return min_epochs


def retrain_epoch_s(c: StageCosts) -> float:
    return c.retrain_steps_per_epoch * c.retrain_step_s


def retrain_evals_s(c: StageCosts) -> float:
    return c.retrain_evals * c.val_eval_s


# The longest budget a refusal searches for one that fits (in whole minutes, as given).
SUGGEST_MAX_MIN = 24 * 60


def plan_budget(costs: StageCosts, budget_s: float, *, population: int, generations: int, parents: int,
                supernet_share: float = 0.5, search_share: float = 0.15, margin: float = 0.07,
                min_epochs: int = 2, min_population: int = 8, min_generations: int = 2) -> BudgetPlan:
    """The epochs and search size that fit `budget_s` seconds.

    The search keeps the preset's population and generations when they fit in
    `search_share` of the budget, else shrinks (generations first, then population) down to
    the minimums. `margin` of the budget is held back for what the costs do not see (data
    loading, checkpoints, noise on a busy host). A budget too small is refused with the
    smallest whole number of minutes above it that this function accepts.
    """
    if budget_s <= 0:
        raise BudgetError(f"the time budget must be positive, got {budget_s / 60:.1f} min")
    sizes = dict(population=population, generations=generations, parents=parents, supernet_share=supernet_share,
                 search_share=search_share, margin=margin, min_epochs=min_epochs, min_population=min_population,
                 min_generations=min_generations)
    plan = _fitting_plan(costs, budget_s, **sizes)
    if plan is not None:
        return plan
    # Searched with the plan itself: the search's share and the margin grow with the budget,
    # so a figure worked out from the refused budget's was refused in turn (6 min, then 7).
    fits = next((m for m in range(math.floor(budget_s / 60) + 1, SUGGEST_MAX_MIN + 1)
                 if _fitting_plan(costs, 60.0 * m, **sizes) is not None), None)
    advice = (f"give at least {fits} min" if fits is not None
              else f"not even a {SUGGEST_MAX_MIN // 60} h budget would")
    raise BudgetError(
        f"a {budget_s / 60:.1f} min budget cannot hold {min_epochs} supernet and {min_epochs} retraining "
        f"epochs here (one epoch takes {supernet_s(costs, 1):.0f} s and {retrain_epoch_s(costs):.0f} s, "
        f"block timing ~{costs.latency_s:.0f} s); {advice}"
    )


def _fitting_plan(costs: StageCosts, budget_s: float, *, population: int, generations: int, parents: int,
                  supernet_share: float, search_share: float, margin: float, min_epochs: int, min_population: int,
                  min_generations: int) -> BudgetPlan | None:
    """`plan_budget`'s plan, or None where `budget_s` cannot hold the minimum epochs."""
    fixed = costs.latency_s + costs.export_s + margin * budget_s
    search_cap = search_share * budget_s
    pop, gens = population, generations
    # The search keeps at most population - 2 parents: shrunk below parents + 2, it would breed
    # from fewer parents than the preset sets.
    min_population = min(population, max(min_population, parents + 2))
    while evaluations(pop, gens, parents) * costs.val_eval_s > search_cap and gens > min_generations:
        gens -= 1
    while evaluations(pop, gens, parents) * costs.val_eval_s > search_cap and pop > min_population:
        pop = max(min_population, int(pop * 0.8))
    search = evaluations(pop, gens, parents) * costs.val_eval_s
    training = budget_s - fixed - search - retrain_evals_s(costs)
    re_epoch = retrain_epoch_s(costs)
    if training < supernet_s(costs, min_epochs) + min_epochs * re_epoch:
        return None
    # Within its share, and never into the retraining's minimum epochs: a share of slow
    # retraining steps could otherwise leave it fewer than the minimum it is then given anyway.
    sup_epochs = supernet_epochs_within(costs, min(supernet_share * training, training - min_epochs * re_epoch),
                                        min_epochs)
    sup_s = supernet_s(costs, sup_epochs)
    re_epochs = max(min_epochs, int((training - sup_s) // re_epoch))
    return BudgetPlan(
        budget_s=float(budget_s), supernet_epochs=sup_epochs, retrain_epochs=re_epochs,
        population=pop, generations=gens, supernet_s=sup_s, search_s=search,
        retrain_s=re_epochs * re_epoch + retrain_evals_s(costs), fixed_s=fixed,
    )


# Per end-to-end subnet: its export (in the export workers, two or more at once) and a
# quick-policy measurement; not probed, the subnets come later. Measured: 8 tiny-space subnets
# at 128 px in 37 s with the rest of the latency stage (benchmarks/RESULTS.md, session 4).
# Per block, the caller probes a few of the run's own blocks (`unit_timing_s`).
SUBNET_TIMING_S = 4.0


def _probe_batches(config, data, seed: int):
    """The run's training crops as the trainer draws them (augmented, in its layout): a function
    that assembles the next batch (images, masks), its loss, and the crops per epoch. Every probe
    step assembles a fresh batch, because cutting the crops is part of a small network's step
    (8 of 100 ms on a default run's subnet, session 15) and plans must count it."""
    augmentation = AugmentationConfig() if config.augment else None
    crops = data.train_crops(seed, CropConfig(config.crop_hw, config.defect_crop_share), augmentation)
    layout = memory_format(config.channels_last)
    drawn = itertools.count()

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        first = next(drawn) * config.batch_size
        items = [crops[(first + i) % len(crops)] for i in range(config.batch_size)]
        return torch.stack([b[0] for b in items]).contiguous(memory_format=layout), torch.stack([b[1] for b in items])

    return next_batch, SegmentationLoss(config.loss, data.ignore_index), len(crops)


def probe_device(config) -> torch.device:
    """Where a trainer with `config` trains (`config.device`: auto picks CUDA when there is
    one), so the plan prices the steps the run will take, not a CPU's."""
    return resolve_device(config.device)


def _autocast(device: torch.device, config):
    """The trainers' mixed precision (float16 autocast on CUDA when `config.amp`), or nothing."""
    if device.type == "cuda" and getattr(config, "amp", False):
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds_per_step(step, steps: int, device: torch.device = torch.device("cpu")) -> float:
    """Mean wall time of `steps` calls after one untimed warm-up call (a GPU's queued work
    included)."""
    step()
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _synchronize(device)
    return (time.perf_counter() - start) / steps


def _train_step_s(net, next_batch, loss_fn, steps: int, config) -> float:
    """A training step as `RetrainTrainer` takes it (a fresh batch, layout, optimiser kernel,
    weight average), in seconds."""
    device = probe_device(config)
    net = to_training_layout(net, device, config.channels_last).train()
    opt = build_adam(net.parameters(), lr=1e-6, device=device)
    average = WeightAverage(net, config.ema_decay) if config.ema_decay else None

    def step():
        images, masks = (t.to(device, non_blocking=True) for t in next_batch())
        opt.zero_grad(set_to_none=True)
        with _autocast(device, config):
            loss = loss_fn(net(images), masks)
        loss.backward()
        opt.step()
        if average is not None:
            average.update(net)

    return _seconds_per_step(step, steps, device)


def measure_train_step(net, config, data, *, steps: int = 3, seed: int = 0) -> float:
    """Seconds of one training step of the network `net` with `config`'s batch and crop size
    (a baseline's cost, to give it a budget in wall time)."""
    torch.manual_seed(seed)
    next_batch, loss_fn, _ = _probe_batches(config, data, seed)
    return _train_step_s(net, next_batch, loss_fn, steps, config)


def measure_retrain_step(retrain_config, space, data, arch, *, steps: int = 3, seed: int = 0) -> float:
    """Seconds of one retraining step of `arch` with the run's batch and crop size."""
    torch.manual_seed(seed)
    net = SegmentationNet.from_arch(arch, space, data.num_classes)
    return measure_train_step(net, retrain_config, data, steps=steps, seed=seed)


def val_probe(val, tile: int, count: int = 4) -> tuple[list[int], float]:
    """`count` images of the split `val` spread over its sizes (smallest first), and how many times their
    evaluation work the whole split's is: an evaluation runs the pixels of its tiles
    (`inference.plan_tiles` at the network's input side `tile`), and a real set's images
    differ (Magnetic-tile's from 2 to 19 x 10^4 pixels; at its training scale its val images
    run one to four 128-px tiles, its first four val images four each: 1.35 times the split's
    mean). An empty split: ([], 0.0)."""
    overlap = resolve_overlap(tile, None)
    work = []
    for i in range(len(val)):
        height, width = val.raw(i)[1].shape
        work.append(sum(h * w for h, w in (t.window_hw for t in plan_tiles(height, width, tile, overlap))))
    if not work:
        return [], 0.0
    order = sorted(range(len(work)), key=work.__getitem__)
    # The middles of `count` equal slices of the sizes, smallest to largest (all, if fewer).
    count = min(count, len(order))
    picks = [order[(2 * k + 1) * len(order) // (2 * count)] for k in range(count)]
    return picks, sum(work) / sum(work[i] for i in picks)


def measure_costs(supernet_config, retrain_config, space, data, *, units_to_time: int, subnets_to_time: int,
                  unit_timing_s: float, steps: int = 3, seed: int = 0) -> StageCosts:
    """Time `steps` supernet steps (as configured: sandwich or random subnets), `steps`
    retraining steps of a random subnet, a candidate's val score and the supernet's progress
    evaluation on a few val images of the split's sizes (`val_probe`), after one warm-up each,
    on this machine with the run's batch and crop size. The host's pace moves (Magnetic-tile's
    supernet epochs ran at 0.26 s a step and 5.3 s a val pass in session 21 where the probe
    said 0.18 and 3.3 s, and at 0.19 and 3.5 s in session 22 where it said 0.22 and 3.3 s), so
    the stages keep to their times by time limits (`planning.supernet_time_limit`)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    next_batch, loss_fn, n = _probe_batches(supernet_config, data, seed)
    supernet = HybridSupernet(space, data.num_classes, supernet_config.sharing)
    device = probe_device(supernet_config)
    supernet = to_training_layout(supernet, device, supernet_config.channels_last).train()
    sup_opt = build_adam(supernet.parameters(), lr=1e-6, decoupled=True, device=device)
    n_sub = 2 + supernet_config.sandwich_random if supernet_config.sandwich else 1

    def supernet_step():
        images, masks = (t.to(device, non_blocking=True) for t in next_batch())
        sup_opt.zero_grad(set_to_none=True)
        for _ in range(n_sub):
            supernet.set_active(space.sample(rng))
            with _autocast(device, supernet_config):
                loss = loss_fn(supernet(images), masks)
            loss.backward()
        sup_opt.step()

    sup_s = _seconds_per_step(supernet_step, steps, device)
    arch = space.sample(rng)
    retrain_batch, retrain_loss, _ = _probe_batches(retrain_config, data, seed)
    re_s = _train_step_s(SegmentationNet.from_arch(arch, space, data.num_classes), retrain_batch, retrain_loss, steps,
                         retrain_config)
    # A candidate's val score as the search computes it (calibrated), after an untimed first
    # call (lazy imports, allocator warm-up).
    tile = int(supernet_config.image_size)
    picks, val_scale = val_probe(data.val, tile)
    probe = Subset(data.val, picks)
    # The search scores its candidates on the CPU (`RunContext.supernet`), whatever the trainers
    # use: its val pass is timed there (and prices the retraining's evaluations too, cautiously).
    search_side = {"device": torch.device("cpu")}
    supernet.cpu()
    calibrate(supernet, Subset(data.val, picks[-1:]), arch, num_classes=data.num_classes, tile_size=tile,
              **search_side)
    start = time.perf_counter()
    calibrate(supernet, probe, arch, num_classes=data.num_classes, tile_size=tile, **search_side)
    val_eval_s = (time.perf_counter() - start) * val_scale
    # The supernet's progress evaluation, as `SupernetTrainer.evaluate_val` runs it (its device).
    supernet.to(device)
    on = {"device": device, "amp": device.type == "cuda" and supernet_config.amp}
    start = time.perf_counter()
    for subnet in (space.largest(), space.smallest()):
        evaluate(supernet, probe, subnet, num_classes=data.num_classes, tile_size=tile, **on)
    _synchronize(device)
    supernet_val_s = (time.perf_counter() - start) * val_scale
    return StageCosts(
        supernet_step_s=sup_s, retrain_step_s=re_s, val_eval_s=val_eval_s,
        supernet_val_s=supernet_val_s,
        # Capped as the trainers cap them (--max-steps-per-epoch): uncapped, a 336-image run
        # capped at 10 steps was priced at 42 an epoch and planned a quarter of its epochs.
        supernet_steps_per_epoch=steps_per_epoch(n, supernet_config.batch_size,
                                                 max_steps=supernet_config.max_steps_per_epoch),
        retrain_steps_per_epoch=steps_per_epoch(n, retrain_config.batch_size,
                                                max_steps=retrain_config.max_steps_per_epoch),
        latency_s=units_to_time * unit_timing_s + subnets_to_time * SUBNET_TIMING_S,
    )


def scale_epochs(epochs: int, train_images: int, reference_images: int, *, low: float = 0.5,
                 high: float = 4.0) -> int:
    """A preset's epochs for a data set of `train_images` images: the optimiser steps stay those
    the preset was tuned with on `reference_images` (a small set gets more epochs, a large one
    fewer), within [low, high] times the preset's epochs."""
    if train_images <= 0:
        return epochs
    factor = min(max(reference_images / train_images, low), high)
    return max(1, round(epochs * factor))


# Held back at the retrain stage's re-plan, of the budget: what is left to estimate then is the
# chosen subnet's step (ten timed steps) and the export; with the plan's 7 % and a 30-s export
# allowance, runs ended 42-54 s inside a 570-s budget (session 15) after an 8-s export.
REPLAN_MARGIN = 0.04
# Evaluations after the retraining's last epoch: the calibration's val pass, the val and test
# evaluations, the prediction pictures (each about a val pass).
AFTER_RETRAIN_EVALS = 4
# The deployed model's end-to-end measurement in the export stage: the agent's full policy
# (200 ms warm-up, 1 s timed, repeated up to twice when noisy) and loading the session.
FULL_MEASUREMENT_S = 4.5


def measure_export_s(arch, space, num_classes: int, image_hw, *, flavors: int = 2) -> float:
    """Seconds the export stage will take for `arch` here: one export of it timed (the first in
    this process, so it also carries the exporter's set-up, which the stage then skips),
    counted once for each of the `flavors`, plus the deployed model's full measurement."""
    from autonad_edge.export.onnx_export import export_arch

    start = time.perf_counter()
    export_arch(arch, space, num_classes, image_hw, "portable")
    return flavors * (time.perf_counter() - start) + FULL_MEASUREMENT_S


def retrain_epochs_left(costs: StageCosts, budget_s: float, elapsed_s: float, *, margin: float = 0.07,
                   min_epochs: int = 2) -> int:
    """Retraining epochs that fit what is left of the budget once the search has chosen.

    The plan's fixed costs are estimates made before any block was timed; by the retrain
    stage they are spent and known, so the time left (less export, report and the margin) all
    goes to the network that is delivered. `costs.retrain_step_s` should be the chosen subnet's
    and `costs.export_s` its export's (`measure_export_s`).
    """
    left = retrain_time_limit_s(costs, budget_s, elapsed_s, margin=margin) - retrain_evals_s(costs)
    return max(min_epochs, int(left // retrain_epoch_s(costs)))


def retrain_time_limit_s(costs: StageCosts, budget_s: float, elapsed_s: float, *, margin: float = 0.07) -> float:
    """Wall seconds the retraining's epochs (their val passes included) may still take: the
    time `retrain_epochs_left` plans them in, re-read when they start (or resume), so that a
    host slower than the probes cuts the epochs (`Trainer.time_limit_s`), not the budget (and a
    faster one gets more of them).
    Held back: the export, the margin, and the passes after the last epoch."""
    return budget_s - elapsed_s - costs.export_s - margin * budget_s - AFTER_RETRAIN_EVALS * costs.val_eval_s


__all__ = ["BudgetError", "BudgetPlan", "REPLAN_MARGIN", "StageCosts", "evaluations", "measure_costs",
           "measure_export_s", "measure_retrain_step", "measure_train_step", "plan_budget", "retrain_epochs_left",
           "retrain_time_limit_s", "scale_epochs", "supernet_epochs_within", "supernet_s"]
