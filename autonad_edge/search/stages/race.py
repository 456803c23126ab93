"""Stage 4: when the search could not see accuracy, race a few candidates (`search.race`).

Each entrant is trained from scratch by the run's retraining recipe for the same short schedule
(on a time budget, the race's share of the time left, split by the entrants' own timed steps:
`planning.plan_race`) on the same seeded batches, in ``<out>/race/<hash>/`` (resumable, its result kept in
``race.json`` there); the best race score (training loss and latency) becomes the run's choice
(``best_arch.json``). With
``race_entrants`` below 2, or when the search's candidates were told apart by accuracy, the
stage passes the search's choice on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from autonad_edge.data.crops import CropConfig
from autonad_edge.io import atomic_write_json
from autonad_edge.search.evolution import Candidate, final_ms
from autonad_edge.search.planning import plan_race, race_epochs
from autonad_edge.search.race import RaceEntry, RaceRun, evidence, pick_entrants, race_winner, score_entries
from autonad_edge.search.stages.context import RunContext, read_run_json, unreadable
from autonad_edge.search.plots import plot_pareto
from autonad_edge.search.stages.search import SearchResult, pareto_title
from autonad_edge.search.stages.store import StageResult
from autonad_edge.training.engine import steps_per_epoch
from autonad_edge.training.retrain import retrain

RESULT_FILE = "race.json"
ENTRANTS_FILE = "entrants.json"


@dataclass(frozen=True)
class RaceResult(StageResult):
    winner: Candidate  # the run's choice: the race's winner, or the search's when no race ran
    entries: tuple[RaceEntry, ...]  # empty when no race ran
    epochs: int  # retraining epochs of each entrant
    steps: int  # optimiser steps of each entrant
    note: str  # why the race ran or not, and what it decided
    evidence: str | None  # the winner's training loss against the search's choice's (`race.evidence`)

    @classmethod
    def passed_on(cls, search: SearchResult, note: str) -> "RaceResult":
        return cls(winner=search.best, entries=(), epochs=0, steps=0, note=note, evidence=None)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RaceResult":
        return cls(winner=Candidate.from_dict(d["winner"]), entries=tuple(RaceEntry.from_dict(e) for e in d["entries"]),
                   epochs=d["epochs"], steps=d["steps"], note=d["note"], evidence=d.get("evidence"))

    def to_dict(self) -> dict[str, Any]:
        return {"winner": self.winner.to_dict(), "entries": [e.to_dict() for e in self.entries],
                "epochs": self.epochs, "steps": self.steps, "note": self.note, "evidence": self.evidence}

    def stage_note(self) -> str:
        return self.note


def race_stage(ctx: RunContext, search: SearchResult) -> RaceResult:
    cfg = ctx.cfg
    if cfg.race_entrants < 2:
        return _pass_on(ctx, search, "no race (race_entrants < 2): the search's choice")
    if not search.signal.latency_decided:
        return _pass_on(ctx, search, "no race: the search told its candidates apart by accuracy")
    saved = read_run_json(Path(search.search_json), "search again (and delete the search's stage in stages.json)")
    candidates = [Candidate.from_dict(d) for d in saved["candidates"]]
    if cfg.latency_budget_ms is not None:
        candidates = [c for c in candidates if final_ms(c) <= cfg.latency_budget_ms]
    entrants = pick_entrants(candidates, search.best, cfg.race_entrants)
    steps_per_epoch = _steps_per_epoch(ctx)
    planned = race_epochs(cfg, len(entrants)) * steps_per_epoch
    # Checked before any entrant is measured, at the plan's pace (on a time budget an estimate:
    # `plan_race` times the entrants themselves, and the check is made again on its epochs).
    if planned < cfg.race_min_steps:
        return _pass_on(ctx, search, f"no race: about {planned} steps an entrant, fewer than the "
                                     f"{cfg.race_min_steps} that tell learners apart")
    entrants = _measured_entrants(ctx, entrants)
    if cfg.latency_budget_ms is not None:  # estimated within the budget, measured over it
        entrants = [c for c in entrants if final_ms(c) <= cfg.latency_budget_ms or c.arch.hash == search.best.arch.hash]
    if len(entrants) < 2:
        return _pass_on(ctx, search, "no race: fewer than two candidates to race")
    # The share split among those left after the latency budget, by their own steps on a time budget.
    epochs = plan_race(ctx, [c.arch for c in entrants], steps_per_epoch)
    if epochs * steps_per_epoch < cfg.race_min_steps:
        return _pass_on(ctx, search, f"no race: {epochs * steps_per_epoch} steps an entrant in the "
                                     f"race's share of the time left, fewer than the {cfg.race_min_steps} "
                                     "that tell learners apart")
    ctx.log(f"[race] the search could not see accuracy: training {len(entrants)} candidates from scratch "
            f"for {epochs} epochs each")
    runs = []
    for i, c in enumerate(entrants, 1):
        runs.append(train_entrant(cfg, ctx.data, ctx.space, ctx.out / "race" / c.arch.hash, c, epochs))
        ctx.log(f"[race] {i}/{len(entrants)} {c.arch.summary()}: training loss {runs[-1].train_loss:.4f}, "
                f"val mIoU {100 * runs[-1].raced_miou:.1f} % (inherited {100 * c.miou:.1f} %), {final_ms(c):.2f} ms")
    entries = score_entries(runs, cfg.latency_weight, search.reference_ms)
    steps = max(r.steps for r in runs)
    best = race_winner(entries)
    winner = next(c for c in entrants if c.arch.hash == best.hash)
    by_hash = {r.candidate.arch.hash: r for r in runs}
    # Against the search's choice; when the winner is that one, against the runner-up.
    other = search.best.arch.hash if winner.arch.hash != search.best.arch.hash else \
        sorted(entries, key=lambda e: -e.score)[1].hash
    why = evidence(by_hash[winner.arch.hash], by_hash[other])
    atomic_write_json(ctx.out / "best_arch.json", winner.arch.to_dict())
    if winner.arch.hash != search.best.arch.hash:  # the search's plot starred its own choice
        plot_pareto([Candidate.from_dict(d) for d in saved["candidates"]], winner, search.pareto_png,
                    title=pareto_title(cfg), chosen_by="by the race")
    note = (f"raced {len(entries)} candidates for {steps} steps each, by training loss: "
            + ("kept the search's choice" if winner.arch.hash == search.best.arch.hash
               else f"chose {winner.arch.summary()} over the search's {search.best.arch.summary()}"))
    ctx.log(f"[race] {note}; {why}")
    return RaceResult(winner=winner, entries=tuple(entries), epochs=epochs, steps=steps, note=note, evidence=why)


def _pass_on(ctx: RunContext, search: SearchResult, note: str) -> RaceResult:
    """The search's choice, written back as the run's: a race an earlier process left may have
    written its winner to ``best_arch.json`` before the rerun decided not to race."""
    atomic_write_json(ctx.out / "best_arch.json", search.best.arch.to_dict())
    return RaceResult.passed_on(search, note)


def _measured_entrants(ctx: RunContext, entrants: list[Candidate]) -> list[Candidate]:
    """The entrants with their latencies measured together, afresh (the search measured some
    of them, minutes ago and among others), once: kept in ``race/entrants.json`` so a resumed
    race keeps its entrants and their epochs (a second measurement could drop one over a
    latency budget and re-split the epochs under the entrants already trained)."""
    path = ctx.out / "race" / ENTRANTS_FILE
    if path.exists():
        try:
            return [Candidate.from_dict(d) for d in json.loads(path.read_text(encoding="utf-8"))]
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise unreadable(path, "measure the entrants again", f"{type(exc).__name__}: {exc}") from None
    # New records, not the search's: its choice keeps the figure it was measured at in the
    # search (as a resumed run reads it back) when the race then passes on.
    measured = ctx.estimator.measure_together([c.arch for c in entrants])
    entrants = [replace(c, measured_ms=float(ms), extra=dict(c.extra)) for c, ms in zip(entrants, measured, strict=True)]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, [c.to_dict() for c in entrants])
    return entrants


def _steps_per_epoch(ctx: RunContext) -> int:
    """Optimiser steps of one retraining epoch (the crops of the train split, in batches)."""
    config = ctx.cfg.retrain_config("unused")
    crops = ctx.data.train_crops(config.seed, CropConfig(config.crop_hw, config.defect_crop_share))
    return steps_per_epoch(len(crops), config.batch_size, max_steps=config.max_steps_per_epoch)


def train_entrant(cfg, data, space, out: Path, candidate: Candidate, epochs: int) -> RaceRun:
    """Train one entrant from scratch in `out` for `epochs` of the run's (resolved `cfg`)
    retraining recipe: its mean training loss over the second half, and its calibrated val
    mIoU at the end. Resumable; the result is kept in ``out/race.json``."""
    done = out / RESULT_FILE
    if done.exists():
        saved = json.loads(done.read_text(encoding="utf-8"))
        return RaceRun(candidate, tuple(saved["epoch_losses"]), float(saved["raced_miou"]), int(saved.get("steps", 0)))
    config = replace(cfg, retrain_init="scratch").retrain_config("unused").replace(
        # From scratch: how fast the architecture learns, not how far the supernet got it
        # (inherited subnets start and stay alike: benchmarks/RESULTS.md, session 13).
        epochs=epochs, warmup_epochs=cfg.retrain_warmup_share * epochs,
        # Only the end counts: one val pass, and the cheap (background) calibration.
        eval_every=epochs, calibrate_per_class=False,
    )
    summary = retrain(config, data, out, space=space, arch=candidate.arch,
                      resume=(out / "last.pt").exists(), quiet=True)
    calibration = summary.get("calibration") or {}
    raced = float(calibration.get("miou_after", summary.get("best", {}).get("val_miou") or 0.0))
    by_epoch = {}  # the last record of each epoch (a resumed run may log one twice)
    for line in (out / "train_log.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line) if line.strip() else {}
        if "loss" in record:
            by_epoch[record["epoch"]] = record["loss"]
    losses = [by_epoch[e] for e in sorted(by_epoch)]
    run = RaceRun(candidate, tuple(losses[len(losses) // 2:]), raced, int(summary["steps"]))
    atomic_write_json(done, {"arch": candidate.arch.summary(), "epochs": epochs, "steps": run.steps,
                             "epoch_losses": run.epoch_losses, "train_loss": run.train_loss, "raced_miou": raced})
    return run


__all__ = ["RaceResult", "race_stage", "train_entrant"]
