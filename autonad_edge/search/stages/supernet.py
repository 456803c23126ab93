"""Stage 1: train the weight-sharing supernet; sampled subnets' unmeasured blocks are measured
on the target's agents in the background meanwhile."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autonad_edge.io import json_safe
from autonad_edge.latency.background import BackgroundProfiler, BackgroundStats
from autonad_edge.search.planning import supernet_time_limit
from autonad_edge.search.stages.context import RunContext
from autonad_edge.search.stages.retrain import epochs_note
from autonad_edge.search.stages.store import StageResult
from autonad_edge.training.supernet_trainer import train_supernet


@dataclass(frozen=True)
class SupernetResult(StageResult):
    checkpoint: str
    summary: dict[str, Any]  # the trainer's summary (epochs, val figures)
    background_latency: BackgroundStats  # what block timing cost during the stage

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SupernetResult":
        return cls(checkpoint=d["checkpoint"], summary=d["summary"],
                   background_latency=BackgroundStats.from_dict(d["background_latency"]))

    @property
    def epochs(self) -> int | None:
        """The epochs the supernet trained (its time limit may cut or extend the plan's)."""
        return self.summary.get("epochs")

    @property
    def planned_epochs(self) -> int | None:
        return self.summary.get("planned_epochs")

    def stage_note(self) -> str:
        return "; ".join(n for n in (epochs_note(self.epochs, self.planned_epochs),
                                     self.background_latency.summary()) if n)


def supernet_stage(ctx: RunContext) -> SupernetResult:
    out_dir = ctx.out / "supernet"
    resume = (out_dir / "supernet.pt").exists()
    with BackgroundProfiler(ctx.pool, ctx.table, ctx.space, ctx.image_hw, ctx.data.num_classes,
                            policy=ctx.policy) as bg:
        summary = train_supernet(
            ctx.cfg.supernet_config(), ctx.data, out_dir, space=ctx.space, resume=resume, quiet=ctx.cfg.quiet,
            step_hooks=[bg], epoch_hooks=[bg.epoch_hook], backlog=bg.backlog, time_limit_s=supernet_time_limit(ctx),
        )
    # Read once closed (a round of exports ahead still in flight has finished); units still
    # queued are measured by the latency stage, with its progress bar.
    stats = bg.stats
    return SupernetResult(checkpoint=str(out_dir / "supernet.pt"), summary=json_safe(summary),
                          background_latency=stats)
