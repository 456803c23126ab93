"""What the stages of one run share: its resolved config and the resources it has open."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import torch

from autonad_edge.data.dataset import SegmentationData
from autonad_edge.data.scale import TrainingScale
from autonad_edge.latency.estimator import LatencyEstimator
from autonad_edge.latency.table import LatencyTable
from autonad_edge.search.config import PipelineConfig, PipelineError
from autonad_edge.search.presets import measurement_policy
from autonad_edge.space import Arch, SearchSpace
from autonad_edge.training.checkpoint import load_supernet


def read_run_json(path: Path, redo: str, remedy: str | None = None) -> dict[str, Any]:
    """The JSON object a run keeps in `path`; a damaged one (a hand edit, a torn copy) is refused
    in one line saying how to get past it (`redo`: what deleting it does; `remedy`: what to do
    instead, where deleting it would be unsafe)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # a bad encoding is a ValueError too
        raise unreadable(path, redo, exc, remedy) from None
    if not isinstance(value, dict):
        raise unreadable(path, redo, f"a JSON {type(value).__name__}, not an object", remedy)
    return value


def unreadable(path: Path, redo: str, why: object, remedy: str | None = None) -> PipelineError:
    """The one-line error of a damaged run file `path`."""
    why = " ".join(str(why).split())
    return PipelineError(f"{path}: unreadable ({why}); {remedy or f'delete it to {redo}, or use another --out'}")


@dataclass
class RunClock:
    """The run's clock across resumes: this process's time plus what earlier ones spent (the
    plan, the finished stages, and the seconds an interrupted stage had run, `StageLog.run`)."""

    now: Callable[[], float] = time.perf_counter  # seconds, from any origin
    earlier_s: float = 0.0
    # Of `earlier_s`, what earlier processes spent in each stage (finished or interrupted).
    stage_earlier_s: dict[str, float] = field(default_factory=dict)
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.now()

    def elapsed_s(self) -> float:
        """Seconds this run has worked so far, in this process and the ones it resumes."""
        return self.earlier_s + self.now() - self.started

    def add_earlier(self, seconds: float, stage: str | None = None) -> None:
        self.earlier_s += seconds
        if stage is not None:
            self.stage_earlier_s[stage] = self.stage_earlier_s.get(stage, 0.0) + seconds


@dataclass
class RunContext:
    """The open resources of one run. ``cfg`` is the resolved config with the run's epochs
    (planned, then re-planned once at the retrain stage on a time budget)."""

    cfg: PipelineConfig
    given: frozenset[str]  # budgets set explicitly: a plan never overrides them
    out: Path
    space: SearchSpace
    data: SegmentationData
    table: LatencyTable
    pool: Any  # latency.pool.AgentPool of the target
    clock: RunClock
    log: Callable[[str], None] = print
    scale: TrainingScale | None = None  # the training scale, when chosen from the masks

    @property
    def image_hw(self) -> tuple[int, int]:
        return self.cfg.image_hw

    @property
    def policy(self):
        """How blocks and finalists are timed (the export's final figure uses the agent's full policy)."""
        return measurement_policy(self.cfg.timing)

    @cached_property
    def estimator(self) -> LatencyEstimator:
        return LatencyEstimator(
            self.table, self.space, self.image_hw, self.data.num_classes, pool=self.pool,
            corrections=self.out / "latency" / "corrections.json",
            policy=self.policy, end_to_end_policy=self.policy, stat=self.cfg.latency_stat,
        )

    @property
    def backend(self) -> str:
        return self.estimator.key.backend

    @cached_property
    def supernet(self):
        supernet, _ = load_supernet(self.out / "supernet" / "supernet.pt")
        # In the layout it trained in: the search's val passes ran 10 % faster channels-last
        # on this CPU (0.41 against 0.46 s a candidate, 72 images at 128 px; session 20).
        return supernet.to(memory_format=torch.channels_last)

    def best_arch(self) -> Arch:
        return Arch.from_dict(json.loads((self.out / "best_arch.json").read_text(encoding="utf-8")))
