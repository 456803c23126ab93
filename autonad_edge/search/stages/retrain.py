"""Stage 4: retrain the chosen subnet (on a time budget, with the epochs the earlier stages
left, `planning.replan_retrain`, and a time limit that cuts them if the host slows down (or extends them, early, if it is faster),
`planning.retrain_time_limit`), evaluate it on val and test, draw its predictions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autonad_edge.io import json_safe
from autonad_edge.search.planning import replan_retrain, retrain_time_limit
from autonad_edge.search.stages.context import RunContext
from autonad_edge.search.stages.store import StageResult
from autonad_edge.training.checkpoint import load_model
from autonad_edge.training.evaluate import evaluate
from autonad_edge.training.pictures import prediction_grid
from autonad_edge.training.retrain import BEST_FILE, retrain


@dataclass(frozen=True)
class RetrainResult(StageResult):
    checkpoint: str
    metrics: dict[str, dict[str, Any]]  # per split: training.evaluate.EvalResult.to_dict()
    calibration: dict[str, Any] | None  # the decision calibration (training.calibration)
    pictures: dict[str, Any] | None  # predictions.png: path, split, rows
    epochs: int | None = None  # the epochs it ran (None: a result from before they were recorded)
    planned_epochs: int | None = None  # the plan's; the time limit may have cut or extended them

    def stage_note(self) -> str:
        return epochs_note(self.epochs, self.planned_epochs)


def epochs_note(epochs: int | None, planned: int | None) -> str:
    """The epochs a trainer ran, and why when its time limit made them differ from the plan's."""
    if epochs is None:
        return ""
    if planned and planned > epochs:
        return f"{epochs} epochs: they ran slower than planned, and the time budget cut the plan's {planned}"
    if planned and planned < epochs:
        return f"{epochs} epochs: they ran faster than planned, and the time budget extended the plan's {planned}"
    return f"{epochs} epochs"


def retrain_stage(ctx: RunContext) -> RetrainResult:
    arch = ctx.best_arch()
    # The report gives the epochs retraining got, so the run's config takes the re-plan.
    ctx.cfg = cfg = replan_retrain(ctx, arch)
    out_dir = ctx.out / "retrain"
    config = cfg.retrain_config(ctx.out / "supernet" / "supernet.pt")
    resume = (out_dir / "last.pt").exists()
    summary = retrain(config, ctx.data, out_dir, space=ctx.space, arch=arch, resume=resume, quiet=cfg.quiet,
                      time_limit_s=retrain_time_limit(ctx))
    ckpt = out_dir / BEST_FILE if (out_dir / BEST_FILE).exists() else out_dir / "last.pt"
    model, _ = load_model(ckpt)
    results = {}
    for split in ("val", "test"):
        dataset = getattr(ctx.data, split)
        if len(dataset):
            r = evaluate(model, dataset, batch_size=cfg.batch_size, num_classes=ctx.data.num_classes,
                         class_names=ctx.data.class_names, tile_size=int(cfg.image_size))
            results[split] = r.to_dict()
    pictures = None
    split = "test" if len(ctx.data.test) else "val"
    if len(getattr(ctx.data, split)):
        rows = prediction_grid(model, getattr(ctx.data, split), ctx.out / "predictions.png",
                               class_names=ctx.data.class_names, tile_size=int(cfg.image_size))
        pictures = {"path": str(ctx.out / "predictions.png"), "split": split, "rows": rows}
    return RetrainResult(checkpoint=str(ckpt), metrics=json_safe(results), calibration=summary.get("calibration"),
                         pictures=pictures, epochs=int(summary["epochs"]),
                         planned_epochs=int(summary.get("planned_epochs") or summary["epochs"]))
