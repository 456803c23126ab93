"""A run's epochs and search size, kept in ``<out>/plan.json``.

On a time budget they are planned from costs measured on this machine before any training
(`search.budget`), and retraining is re-planned once, at the retrain stage, with the time the
earlier stages actually took; without one, the preset's epochs are scaled to the data set's
size. Values given on the command line always win. A rerun reads the plan back, so a resumed
run keeps its schedule. The supernet's and the retraining's epochs also get a time limit
(`supernet_time_limit`, `retrain_time_limit`): steps slower than the probe's end them early
rather than the run late (or take the retraining's time), and first epochs faster than the
probe lengthen them rather than leave the budget unused.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from autonad_edge.io import atomic_write_json
from autonad_edge.latency import export_pool
from autonad_edge.latency.blocks import space_units
from autonad_edge.latency.profiler import measure_units, missing_units, target_key
from autonad_edge.search.budget import (
    REPLAN_MARGIN, BudgetError, StageCosts, measure_costs, measure_export_s, measure_retrain_step, plan_budget,
    retrain_epochs_left, retrain_time_limit_s, scale_epochs,
)
from autonad_edge.search.config import PipelineConfig, PipelineError
from autonad_edge.search.stages.context import RunContext, read_run_json
from autonad_edge.space import Arch
from autonad_edge.training.engine import LOG_FILE
from autonad_edge.training.progress import JsonlLog


def plan_run(ctx: RunContext) -> PipelineConfig:
    """The run's config with its planned epochs (measured here once, then read back from
    ``plan.json`` on a rerun)."""
    cfg, path = ctx.cfg, ctx.out / "plan.json"
    if path.exists():
        saved = read_run_json(path, "plan the run again")
        ctx.clock.add_earlier(saved.get("plan_s", 0.0))
        # Values given on this command line win over the plan here too (e.g. more generations
        # for a search a rerun extends), as config.json and the report record them.
        return replace(cfg, **{k: v for k, v in saved["epochs"].items() if k not in ctx.given})
    if cfg.time_budget:  # 0 turns a preset's budget off
        epochs, record = _budget_plan(ctx)
    else:
        epochs = {}
        if cfg.reference_images:
            for name in ("supernet_epochs", "retrain_epochs"):
                epochs[name] = scale_epochs(getattr(cfg, name), len(ctx.data.train), cfg.reference_images)
        record = {"epochs": {}, "plan": None, "scaled_for_images": len(ctx.data.train)}
    # Values given on the command line win over the plan.
    record["epochs"] = {k: v for k, v in epochs.items() if k not in ctx.given}
    record["plan_s"] = ctx.clock.elapsed_s()  # data loading and the probes: the run's first costs
    atomic_write_json(path, record)
    return replace(cfg, **record["epochs"])


def _budget_plan(ctx: RunContext) -> tuple[dict[str, int], dict[str, Any]]:
    """Epochs and search size that fit ``cfg.time_budget``, from a few timed blocks and steps."""
    cfg = ctx.cfg
    key = target_key(ctx.pool)
    units = missing_units(space_units(ctx.space, ctx.data.num_classes, ctx.image_hw), ctx.table, key)
    ctx.log(f"[plan] timing {len(units)} blocks and a few training steps to plan {cfg.time_budget:g} min")
    # A few of the run's own blocks, timed as the run will (the table keeps them): as
    # many as keep the export workers busy three times, once the workers are up, drawn
    # across the space (its first units, the high-resolution stage, cost the most).
    workers = export_pool.start(key.flavor) if units else 0
    probe = random.Random(cfg.seed).sample(units, min(len(units), max(3, 3 * workers)))
    start = time.perf_counter()
    if probe:
        measure_units(ctx.pool, ctx.table, probe, key=key, policy=ctx.policy)
    unit_s = (time.perf_counter() - start) / max(len(probe), 1)
    costs = measure_costs(cfg.supernet_config(), cfg.retrain_config("probe"), ctx.space, ctx.data,
                          units_to_time=max(len(units) - len(probe), 0), unit_timing_s=unit_s,
                          subnets_to_time=cfg.calibration_archs + cfg.finalists, seed=cfg.seed)
    try:
        plan = plan_budget(costs, 60 * cfg.time_budget, population=cfg.population,
                           generations=cfg.generations, parents=cfg.parents, supernet_share=cfg.supernet_share)
    except BudgetError as exc:
        raise PipelineError(f"time budget: {exc}") from None
    ctx.log(f"[plan] {plan.summary()}")
    if cfg.race_entrants >= 2:
        each = race_epochs(replace(cfg, retrain_epochs=plan.retrain_epochs), cfg.race_entrants)
        ctx.log(f"[plan] of the retraining's time, a race of up to {cfg.race_entrants} x {each} epochs "
                "when the search cannot see accuracy")
    epochs = {"supernet_epochs": plan.supernet_epochs, "retrain_epochs": plan.retrain_epochs,
              "population": plan.population, "generations": plan.generations}
    return epochs, {"epochs": {}, "plan": plan.to_dict(), "costs": asdict(costs)}


def replan_retrain(ctx: RunContext, arch: Arch) -> PipelineConfig:
    """On a time budget, give retraining all the time the earlier stages left (their costs
    were estimates when the plan was made), once: the figure is kept in ``plan.json`` so a
    resumed retrain keeps its schedule. Returns the run's config with those epochs."""
    cfg, path, record = ctx.cfg, ctx.out / "plan.json", _saved_plan(ctx)
    if not record.get("plan") or "retrain_epochs" in ctx.given:
        return cfg
    if "replanned" not in record:
        # Ten steps (about a second): this one figure sets the delivered network's epochs, and
        # three steps measured 79 ms where the retraining then took 100 ms a step (session 15).
        step_s = measure_retrain_step(cfg.retrain_config("probe"), ctx.space, ctx.data, arch, steps=10,
                                      seed=cfg.seed)
        planned = StageCosts.from_dict(record["costs"])
        export_s = measure_export_s(arch, ctx.space, ctx.data.num_classes, ctx.image_hw)
        if ctx.backend == "tensorrt":
            # The device also builds two engines (measurement, deployment): not timed in advance.
            export_s += planned.export_s
        costs = replace(planned, retrain_step_s=step_s, export_s=export_s)
        elapsed = ctx.clock.elapsed_s()
        epochs = retrain_epochs_left(costs, record["plan"]["budget_s"], elapsed, margin=REPLAN_MARGIN)
        record["replanned"] = {"elapsed_s": elapsed, "retrain_step_s": step_s, "export_s": export_s,
                               "planned_retrain_epochs": record["epochs"].get("retrain_epochs"),
                               "retrain_epochs": epochs}
        record["epochs"]["retrain_epochs"] = epochs
        atomic_write_json(path, record)
        ctx.log(f"[retrain] {elapsed / 60:.1f} of {round(record['plan']['budget_s'] / 60, 1):g} min spent: "
                f"retraining {epochs} epochs (planned {record['replanned']['planned_retrain_epochs']}; "
                f"export ~{export_s:.0f} s)")
    return replace(cfg, retrain_epochs=record["epochs"]["retrain_epochs"])


def race_epochs(cfg, entrants: int) -> int:
    """Each entrant's epochs without a time budget: `race_share` of the retraining's, split
    evenly."""
    return max(1, round(cfg.race_share * cfg.retrain_epochs / max(entrants, 1)))


# Timed steps of each entrant before a race on a time budget (about a second each).
RACE_PROBE_STEPS = 10


@dataclass(frozen=True)
class RacePlan:
    """The race's schedule on a time budget (``plan.json``'s "race"): what `plan_race` measured
    and the epochs every entrant runs."""

    elapsed_s: float  # the run's clock when the race was planned
    time_s: float  # the race's share of the time left then
    step_s: tuple[float, ...]  # each entrant's timed retraining step
    epochs: int

    def to_dict(self) -> dict[str, Any]:
        return {"elapsed_s": self.elapsed_s, "time_s": self.time_s, "step_s": list(self.step_s), "epochs": self.epochs}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RacePlan":
        return cls(elapsed_s=float(d["elapsed_s"]), time_s=float(d["time_s"]),
                   step_s=tuple(float(s) for s in d["step_s"]), epochs=int(d["epochs"]))


def plan_race(ctx: RunContext, entrants: list[Arch], steps_per_epoch: int) -> int:
    """Each entrant's epochs. On a time budget: `race_share` of the time the race and the
    retraining have left now, split among the entrants by their own steps, timed here (every
    entrant runs the same epochs: the race compares them on one schedule). The plan's share of
    its retraining epochs counted entrants as fast as the subnet it probed: on Magnetic-tile
    the race then took 1,252 s of a 60-minute budget where it planned 868, each entrant's epoch
    4.1-5.0 s against 3.3 s (session 25). Kept in ``plan.json``, so a resumed race keeps its
    epochs; without a budget (or with retraining epochs given), `race_epochs`. A race begun by
    a version that kept no record keeps the epochs it began with."""
    cfg, path, record = ctx.cfg, ctx.out / "plan.json", _saved_plan(ctx)
    if not record.get("plan") or "retrain_epochs" in ctx.given:
        return race_epochs(cfg, len(entrants))
    if "race" not in record:
        if _race_begun(ctx.out / "race"):
            return race_epochs(cfg, len(entrants))
        costs = StageCosts.from_dict(record["costs"])
        step_s = tuple(measure_retrain_step(cfg.retrain_config("probe"), ctx.space, ctx.data, arch,
                                            steps=RACE_PROBE_STEPS, seed=cfg.seed) for arch in entrants)
        elapsed = ctx.clock.elapsed_s()
        race_s = cfg.race_share * retrain_time_limit_s(costs, record["plan"]["budget_s"], elapsed,
                                                       margin=REPLAN_MARGIN)
        # Each entrant ends with a val pass; the rest is epochs of every entrant's steps.
        epoch_s = steps_per_epoch * sum(step_s)
        epochs = max(1, int((race_s - len(entrants) * costs.val_eval_s) // epoch_s)) if epoch_s > 0 else 1
        record["race"] = RacePlan(elapsed_s=elapsed, time_s=race_s, step_s=step_s, epochs=epochs).to_dict()
        atomic_write_json(path, record)
    return RacePlan.from_dict(record["race"]).epochs


def _race_begun(race_dir: Path) -> bool:
    """Whether an entrant has trained in `race_dir` (a checkpoint or a finished result)."""
    return race_dir.is_dir() and any(
        (d / "last.pt").exists() or (d / "race.json").exists() for d in race_dir.iterdir() if d.is_dir())


def supernet_time_limit(ctx: RunContext) -> float | None:
    """On a time budget, the wall seconds the supernet's epochs may take from now: the time the
    plan gave them, less what epochs of an earlier process took (a resumed stage); None
    without a plan or with epochs the user gave. Its step is probed on a few random subnets
    before the run, and on Magnetic-tile the stage took 390 s of a planned 247 (session 21):
    with the limit the supernet keeps to its share and the retraining keeps its time."""
    record = _saved_plan(ctx)
    if not record.get("plan") or "supernet_epochs" in ctx.given:
        return None
    return float(record["plan"]["supernet_s"]) - _epochs_spent_s(ctx.out / "supernet", "supernet.pt")


def retrain_time_limit(ctx: RunContext) -> float | None:
    """On a time budget, the wall seconds the retraining's epochs may take from now; None
    without a re-planned budget or with epochs the user gave. The run's clock counts what
    earlier processes spent in the stages, unfinished ones included (`StageLog.run`); a
    retraining they left unfinished also logged its epochs' times (``retrain/train_log.jsonl``),
    and what of those the clock missed (a run directory from before it counted them, or epochs
    after the last write of the stage's seconds) is spent too."""
    record = _saved_plan(ctx)
    if not record.get("plan") or "replanned" not in record or "retrain_epochs" in ctx.given:
        return None
    costs = replace(StageCosts.from_dict(record["costs"]), export_s=record["replanned"]["export_s"])
    logged = _epochs_spent_s(ctx.out / "retrain", "last.pt")
    uncounted = max(0.0, logged - ctx.clock.stage_earlier_s.get("retrain", 0.0))
    return retrain_time_limit_s(costs, record["plan"]["budget_s"], ctx.clock.elapsed_s() + uncounted,
                                margin=REPLAN_MARGIN)


def _saved_plan(ctx: RunContext) -> dict[str, Any]:
    """The run's ``plan.json`` ({} before it is written)."""
    path = ctx.out / "plan.json"
    return read_run_json(path, "plan the run again") if path.exists() else {}


def _epochs_spent_s(stage_dir: Path, checkpoint: str) -> float:
    """Seconds the logged epochs of a training an earlier process left to resume took (0 when
    there is no `checkpoint` to resume in `stage_dir`)."""
    if not (stage_dir / checkpoint).exists():
        return 0.0
    return sum(float(r.get("time", 0.0)) for r in JsonlLog(stage_dir / LOG_FILE).read())
