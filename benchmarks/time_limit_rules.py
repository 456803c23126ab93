"""Replays the epoch times a run logged through the trainer's time-limit judgement.

A retraining on a time budget decides after each epoch, from the pace so far, how many epochs
fit its limit (`Trainer._fit_to_time_limit`). Whether a rule uses the limit and how often it
resizes the learning-rate schedule depends on how the host's pace moves, which no unit test
reproduces; the runs' logs do. For each run directory given (a finished `autonad-edge search`
on a time budget), this takes the retraining's logged epoch times (``retrain/train_log.jsonl``:
training and val pass apart), its planned epochs and its time limit (``plan.json``, as the
retrain stage computes it), and runs the real judgement on a clock that advances by the logged
times, epoch after epoch, until the epochs it settles on are done (a replay longer than the log
starts the log again). It reports the epochs run, the schedule's resizes and the seconds of the
limit left (negative: overrun), for the code's rule and for the rule before session 26 (the
last three epochs' pace, cuts only: ``PACE_WINDOW=3, PACE_BAND=0, RESTORE_WITHIN=0``).

    python benchmarks/time_limit_rules.py RUN_DIR [RUN_DIR ...] [--json out.json]

Nothing is trained: it runs in a second.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from dataclasses import replace
from pathlib import Path

import autonad_edge.training.engine as engine
from autonad_edge.search.budget import REPLAN_MARGIN, StageCosts, retrain_time_limit_s
from autonad_edge.training.distributed import DistContext
from autonad_edge.training.retrain import RetrainTrainer

RULES = {
    "current": {},
    "before session 26": {"PACE_WINDOW": 3, "PACE_BAND": 0.0, "RESTORE_WITHIN": 0.0},
}


def load(run: Path) -> tuple[list[dict], int, int, float]:
    """(logged epochs, planned epochs, eval_every, time limit in s) of a run's retraining."""
    log = [json.loads(line) for line in (run / "retrain" / "train_log.jsonl").read_text().splitlines() if line.strip()]
    plan = json.loads((run / "plan.json").read_text())
    config = json.loads((run / "retrain" / "config.json").read_text())
    replanned = plan["replanned"]
    # The limit the retrain stage gave its epochs when it started (`planning.retrain_time_limit`).
    costs = replace(StageCosts.from_dict(plan["costs"]), export_s=replanned["export_s"])
    limit = retrain_time_limit_s(costs, plan["plan"]["budget_s"], replanned["elapsed_s"], margin=REPLAN_MARGIN)
    return log, int(replanned["retrain_epochs"]), int(config.get("eval_every") or 0), limit


def replay(log: list[dict], planned: int, eval_every: int, limit_s: float, rule: dict) -> dict:
    clock = [0.0]
    saved_time, saved_resize = engine.time, engine.resize_schedule
    engine.time = types.SimpleNamespace(perf_counter=lambda: clock[0])
    engine.resize_schedule = lambda scheduler, steps: None
    trainer_cls = type("Replayed", (RetrainTrainer,), rule)
    trainer = object.__new__(trainer_cls)
    trainer.config = types.SimpleNamespace(epochs=planned, eval_every=eval_every)
    trainer._dist, trainer.steps_per_epoch, trainer.scheduler, trainer.title = DistContext(), 1, None, "retrain"
    trainer.epochs, trainer._epoch_hooks_s, trainer.time_limit_s = planned, 0.0, limit_s
    trainer.history, trainer._pace_from = [], (0, 0.0)
    val_s = [float(r["time"]) - float(r["train_time"]) for r in log if "val_miou" in r] or [0.0]
    quiet = types.SimpleNamespace(message=lambda text: None, set_total_epochs=lambda n: None)
    resizes, done = 0, 0
    try:
        while done < trainer.epochs:
            train_s = float(log[done % len(log)]["train_time"])
            record = {"epoch": done + 1, "train_time": train_s, "time": train_s}
            done += 1
            if eval_every and (done % eval_every == 0 or done == trainer.epochs):
                record.update(val_miou=0.0, time=train_s + val_s[(done // eval_every) % len(val_s)])
            clock[0] += record["time"]
            trainer.history.append(record)
            before = trainer.epochs
            trainer._fit_to_time_limit(done, quiet)
            resizes += trainer.epochs != before
    finally:
        engine.time, engine.resize_schedule = saved_time, saved_resize
    return {"epochs": done, "resizes": resizes, "left_s": round(limit_s - clock[0], 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    rows = []
    for run in args.runs:
        log, planned, eval_every, limit = load(run)
        for name, rule in RULES.items():
            row = {"run": str(run), "logged_epochs": len(log), "planned": planned, "limit_s": round(limit, 1),
                   "rule": name, **replay(log, planned, eval_every, limit, rule)}
            rows.append(row)
            print(f"{run}: {len(log)} epochs logged, {planned} planned, limit {limit:.0f} s; {name}: "
                  f"{row['epochs']} epochs, {row['resizes']} resizes, {row['left_s']:.1f} s left")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
