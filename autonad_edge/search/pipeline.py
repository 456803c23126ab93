"""`autonad-edge search`: from images and a target to a searched, retrained, exported model.

Stages (one module each in `search.stages`), each recorded in ``<out>/stages.json`` when it
completes and skipped on a rerun (so a killed or interrupted run resumes where it stopped; the
training and search stages also resume from their own checkpoints part-way through):

1. ``supernet`` -- train the weight-sharing supernet; sampled subnets' unmeasured blocks are
   measured on the target's agents in the background meanwhile;
2. ``latency``  -- complete the block latency table, fit the estimator's correction from
   end-to-end measurements, build the latency-aware prior (+ heatmap);
3. ``search``   -- latency-aware evolutionary search, finalists measured end to end;
4. ``race``     -- when the search could not see accuracy, a few candidates spread over the
   latencies retrained briefly and chosen from again (`search.race`);
5. ``retrain``  -- retrain the chosen subnet, evaluate on the test split;
6. ``export``   -- ONNX (portable and TensorRT flavours), measured end to end on the target;
7. ``engine``   -- on a TensorRT target, the engine built by the agent, with its latency;
8. ``report``   -- ``report.md`` and ``report.json``.

Before any training the dataset is loaded (a broken one fails with what is wrong) and the
target is contacted (an unreachable one fails in seconds with the address tried).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

from autonad_edge.data import DatasetError, SegmentationData, load_dataset
from autonad_edge.data.scale import TrainingScale, training_scale
from autonad_edge.data.splits import load_manifest
from autonad_edge.io import atomic_write_json
from autonad_edge.latency import export_pool
from autonad_edge.latency.profiler import use_export_cache
from autonad_edge.latency.table import LatencyTable
from autonad_edge.latency.targets import TargetError, open_target
from autonad_edge.search.config import PipelineConfig, PipelineError
from autonad_edge.search.planning import plan_run
from autonad_edge.search.presets import PRESETS, Preset, measurement_policy
from autonad_edge.search.stages.context import RunClock, RunContext
from autonad_edge.search.stages.engine import DeployResult, engine_stage
from autonad_edge.search.stages.export import ExportResult, export_stage
from autonad_edge.search.stages.latency import LatencyResult, latency_stage
from autonad_edge.search.stages.race import RaceResult, race_stage
from autonad_edge.search.stages.report import RunResults, report_stage
from autonad_edge.search.stages.retrain import RetrainResult, retrain_stage
from autonad_edge.search.stages.search import SearchResult, search_stage
from autonad_edge.search.stages.store import StageLog
from autonad_edge.search.stages.supernet import SupernetResult, supernet_stage
from autonad_edge.space import ArchError, SearchSpace

STAGES = ("supernet", "latency", "search", "race", "retrain", "export", "engine", "report")
# Settings a rerun may change without making it another run.
VOLATILE = {"quiet", "device", "generations", "targets_path", "export_cache", "explicit"}

__all__ = ["PRESETS", "STAGES", "PipelineConfig", "PipelineError", "Preset", "SearchPipeline",
           "measurement_policy", "run_search"]


class SearchPipeline:
    def __init__(self, config: PipelineConfig, log: Callable[[str], None] = print) -> None:
        self.cfg = config.resolved()
        # The budgets set explicitly (not from the preset): a plan never overrides them.
        self.given = frozenset(self.cfg.explicit)
        self.out = Path(self.cfg.out)
        self.log = log
        self.clock = RunClock()
        self.scale: TrainingScale | None = None  # the training scale, when chosen from the masks

    def elapsed_s(self) -> float:
        """Seconds this run has worked so far, in this process and the ones it resumes."""
        return self.clock.elapsed_s()

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.clock = RunClock()
        self.out.mkdir(parents=True, exist_ok=True)
        # The training scale may be chosen from the data (`_load_data`): checked once known.
        _check_config_unchanged(self.out, cfg, write=False, unknown=frozenset({"max_side"}))
        if cfg.export_cache:
            use_export_cache(f"{cfg.table}.exports" if cfg.export_cache == "table" else cfg.export_cache)
        try:
            space = SearchSpace.resolve(cfg.space)
        except (ArchError, ValueError) as exc:
            raise PipelineError(f"search space {cfg.space}: {exc}") from None
        stages = StageLog.open(self.out / "stages.json")
        if not stages.done("latency"):
            export_pool.start(wait=False)  # workers warm up while the data loads
        data = self._load_data()
        cfg = self.cfg
        _check_config_unchanged(self.out, cfg)
        with contextlib.ExitStack() as stack:
            table = stack.enter_context(LatencyTable(cfg.table))
            try:
                pool = stack.enter_context(open_target(cfg.target, cfg.targets_path, table=table,
                                                       local_threads=cfg.local_threads))
            except TargetError as exc:
                raise PipelineError(str(exc)) from None
            ctx = RunContext(cfg, self.given, self.out, space, data, table, pool, self.clock, self.log,
                             scale=self.scale)
            ctx.cfg = plan_run(ctx)
            results = self._run_stages(ctx, stages)
            report = report_stage(ctx, results, stages, STAGES)
            self.cfg = ctx.cfg
        return report

    def _run_stages(self, ctx: RunContext, stages: StageLog) -> RunResults:
        def run(name, result_type, fn):
            return stages.run(name, result_type, fn, log=self.log, clock=self.clock)

        supernet = run("supernet", SupernetResult, lambda: supernet_stage(ctx))
        latency = run("latency", LatencyResult, lambda: latency_stage(ctx))
        search = run("search", SearchResult, lambda: search_stage(ctx))
        if stages.done("retrain") and not stages.done("race"):
            # A run directory from before the race: its retraining has chosen already.
            race = RaceResult.passed_on(search, "no race: the run was retrained before the race existed")
        else:
            race = run("race", RaceResult, lambda: race_stage(ctx, search))
        retrained = run("retrain", RetrainResult, lambda: retrain_stage(ctx))
        exported = run("export", ExportResult, lambda: export_stage(ctx, retrained))
        engine = run("engine", DeployResult, lambda: engine_stage(ctx, exported))
        return RunResults(supernet, latency, search, race, retrained, exported, engine)

    def _load_data(self) -> SegmentationData:
        cfg, splits = self.cfg, self.out / "splits.json"
        manifest = _saved_split(splits) if splits.exists() else None
        rule = self._scale_rule()
        # The rule measures the masks at the preset's cap, whatever a loaded config recorded.
        max_side = PRESETS[cfg.preset].max_side if rule else cfg.max_side
        data = self._load(manifest, max_side)
        if len(data.train) == 0 or len(data.val) == 0:
            raise PipelineError("dataset: the train and val splits need at least one image each")
        if manifest is None:
            data.save_manifest(splits)
        if rule:
            self.scale = training_scale(data.train, data.num_classes, min_width=cfg.min_defect_width,
                                        floor=max(cfg.image_hw), class_names=data.class_names)
            self.log(f"[data] training scale: {self.scale.summary()}")
            self.cfg = replace(cfg, max_side=self.scale.max_side or max_side)
            if self.scale.max_side is not None:
                data = self._load(data.manifest(), self.scale.max_side)
        return data

    def _load(self, manifest: dict[str, Any] | None, max_side: int | None) -> SegmentationData:
        cfg = self.cfg
        try:
            return load_dataset(cfg.data, cfg.format, image_size=cfg.image_size, seed=cfg.seed,
                                synthetic_count=cfg.synthetic_count, manifest=manifest,
                                keep_aspect=cfg.keep_aspect, max_side=max_side)
        except DatasetError as exc:
            raise PipelineError(f"dataset: {exc}") from None

    def _scale_rule(self) -> bool:
        """Whether the training scale is chosen from the masks (`data.scale`): the preset's rule,
        unless --max-side was given, the images are squashed, or the run directory was started
        before the rule existed (its config has no such field, and keeps its scale)."""
        cfg, saved = self.cfg, self.out / "config.json"
        if cfg.min_defect_width is not None and cfg.min_defect_width < 0:
            raise PipelineError(f"--min-defect-width must be >= 0 (0 = off), got {cfg.min_defect_width:g}")
        if not cfg.min_defect_width or not cfg.keep_aspect or "max_side" in self.given:
            return False
        return not saved.exists() or "min_defect_width" in json.loads(saved.read_text(encoding="utf-8"))


def _saved_split(path: Path) -> dict[str, Any]:
    """The split an earlier run of this directory recorded; an unreadable one is refused in one
    line. Split afresh, the data splits the same way (same seed), and a resumed checkpoint
    refuses any other split, so deleting it is safe."""
    try:
        return load_manifest(path)
    except DatasetError as exc:
        raise PipelineError(f"dataset: {exc}; delete it to split the data again, or use another --out") from None


def _check_config_unchanged(out: Path, cfg: PipelineConfig, write: bool = True, unknown: frozenset[str] = frozenset()) -> None:
    """A rerun into the same directory must be the same run, or its stages don't fit.
    `unknown`: fields not known yet (checked on a second call); `write`: record the config."""
    path = out / "config.json"
    current = asdict(cfg)
    if path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        # A field the saved config lacks was not recorded yet when it was written (it came
        # from the preset): only the recorded ones can tell.
        changed = sorted(k for k in current if k not in VOLATILE | unknown and k in saved and saved[k] != current[k])
        if changed:
            raise PipelineError(
                f"{out} holds a run with other settings ({', '.join(changed)}); "
                "use another --out or the same settings to resume"
            )
    if write:
        atomic_write_json(path, current)


def run_search(config: PipelineConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Library entry point of `autonad-edge search`."""
    return SearchPipeline(config, log).run()
