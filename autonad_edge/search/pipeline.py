"""`autonad-edge search`: from images and a target to a searched, retrained, exported model.

Stages, each recorded in ``<out>/stages.json`` when it completes and skipped on a rerun (so a
killed or interrupted run resumes where it stopped; the training and search stages also
resume from their own checkpoints part-way through):

1. ``supernet`` -- train the weight-sharing supernet; sampled subnets' unmeasured blocks are
   measured on the target's agents in the background meanwhile;
2. ``latency``  -- complete the block latency table, fit the estimator's correction from
   end-to-end measurements, build the latency-aware prior (+ heatmap);
3. ``search``   -- latency-aware evolutionary search, finalists measured end to end;
4. ``retrain``  -- retrain the chosen subnet, evaluate on the test split;
5. ``export``   -- ONNX (portable and TensorRT flavours), measured end to end on the target;
6. ``engine``   -- on a TensorRT target, the engine built by the agent, with its latency;
7. ``report``   -- ``report.md`` and ``report.json``.

Before any training the dataset is loaded (a broken one fails with what is wrong) and the
target is contacted (an unreachable one fails in seconds with the address tried).
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from autonad_edge.errors import AutonadError
from autonad_edge.io import atomic_write_json, json_safe as _json_safe

STAGES = ("supernet", "latency", "search", "retrain", "export", "engine", "report")


class PipelineError(AutonadError, RuntimeError):
    """A run that cannot go on; the message is one line naming the problem."""


@dataclass(frozen=True)
class Preset:
    space: str
    image_size: int
    synthetic_count: int
    supernet_epochs: int
    retrain_epochs: int
    batch_size: int
    population: int
    generations: int
    parents: int
    calibration_archs: int  # subnets measured end to end to fit the latency correction
    finalists: int  # top candidates re-measured end to end before the final choice
    retrain_init: str  # "inherited" fine-tunes from the supernet, "scratch" trains anew
    max_steps_per_epoch: int | None = None
    # Block timing: "quick" (short warm-up, ~0.1 s of timed runs) for CPU presets, "full" (the
    # agent's trtexec-like default: 200 ms warm-up, >= 1 s and >= 50 runs) for the paper's.
    timing: str = "quick"
    # Optimisation. None = the training defaults (AdamW 5e-4 for the supernet, Adam 1e-4 for the
    # retrain: the paper's, tuned for 100-200 epochs). Minute-scale CPU budgets need larger
    # steps and a loss that does not settle on "all background" first.
    supernet_lr: float | None = None
    supernet_warmup_epochs: float = 0.0
    retrain_lr: float | None = None
    class_weighting: str = "none"
    # The defect-aware recipe (training.config.RunConfig): loss, crops, training scale.
    loss: str = "ce+dice"
    defect_crop_share: float = 0.5
    keep_aspect: bool = True
    max_side: int | None = 1024
    sandwich: bool = False  # with in-place distillation (SupernetConfig.distill_weight)
    sandwich_random: int = 1
    retrain_schedule: str = "cosine"
    retrain_warmup_epochs: float = 0.0
    retrain_ema: float | None = None
    # Epochs are tuned for this many train images and scaled to keep the optimiser steps
    # (`budget.scale_epochs`); None = used as given.
    reference_images: int | None = None
    # Minutes for the whole run when no --time-budget is given (None: the epochs above).
    time_budget: float | None = None


def measurement_policy(timing: str):
    """The agent measurement policy of a preset's ``timing``; None = the agent's default."""
    if timing == "full":
        return None
    from autonad_agent.measure import MeasurementPolicy

    return MeasurementPolicy(warmup_runs=5, warmup_ms=20.0, min_runs=10, min_duration_ms=100.0,
                             max_runs=2000, max_cv=0.2, max_repeats=1)


PRESETS: dict[str, Preset] = {
    # Seconds: for tests and smoke runs.
    "tiny": Preset("tiny", 64, 48, 2, 2, 8, 6, 2, 3, 3, 2, "inherited", max_steps_per_epoch=4, max_side=256),
    # The default: minutes on a 2-core CPU with --target local.
    # Measured (benchmarks/RESULTS.md): at the paper's lr the supernet never leaves the
    # all-background floor in a CPU budget; 3e-3 with class weighting separates subnets.
    # The recipe: defect-centred crops (half of them), CE + soft Dice, the sandwich rule with
    # in-place distillation, warm-up + cosine for both trainings, EMA of the retrained weights.
    "cpu": Preset("tiny", 128, 240, 40, 30, 8, 16, 5, 5, 8, 4, "inherited",
                  supernet_lr=3e-3, supernet_warmup_epochs=1.0, retrain_lr=2e-3, class_weighting="inverse_sqrt",
                  sandwich=True, retrain_warmup_epochs=0.5, retrain_ema=0.998, reference_images=168,
                  defect_crop_share=0.7, time_budget=9.0),
    # The paper's settings (Sec. V-B), for GPU hosts: fixed-size resize, plain cross-entropy.
    "paper": Preset("default", 320, 240, 100, 200, 8, 100, 50, 10, 50, 10, "scratch", timing="full",
                    loss="ce", defect_crop_share=0.0, keep_aspect=False, retrain_schedule="poly"),
}


@dataclass
class PipelineConfig:
    out: str = "runs/search"
    data: str | None = None
    format: str = "synthetic"
    target: str = "local"
    targets_path: str | None = None
    local_threads: int | None = None  # ONNX Runtime threads of the built-in `local` agent
    table: str = "runs/latency.sqlite"
    # Exported blocks, kept across runs and targets (latency.export_cache): a directory,
    # "table" (next to the latency table) or "off"; None = $AUTONAD_EXPORT_CACHE or ~/.cache.
    export_cache: str | None = None
    preset: str = "cpu"
    # None = the preset's value
    space: str | None = None
    image_size: int | None = None
    supernet_epochs: int | None = None
    retrain_epochs: int | None = None
    batch_size: int | None = None
    population: int | None = None
    generations: int | None = None
    parents: int | None = None
    sharing: str = "cross"
    latency_weight: float = 0.1
    # The statistic the latency table sums and the search scores: "min" (the latency without
    # interference, which block sums predict best: benchmarks/RESULTS.md) or "median", ...
    # The report gives the end-to-end median and min either way.
    latency_stat: str = "min"
    latency_budget_ms: float | None = None
    params_budget: int | None = None
    prior_method: str = "softmax"
    prior_temperature: float | None = None
    # Minutes for the whole run: epochs and search size are planned from measured costs
    # (search.budget); None = the preset's budget (cpu: 9 min), 0 = the preset's epochs.
    time_budget: float | None = None
    seed: int = 0
    device: str = "auto"
    quiet: bool = False

    def resolved(self) -> "PipelineConfig":
        if self.preset not in PRESETS:
            raise PipelineError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        from autonad_edge.latency.estimator import STATS

        if self.latency_stat not in STATS:
            raise PipelineError(f"unknown latency statistic {self.latency_stat!r}; choose one of {', '.join(STATS)}")
        preset = asdict(PRESETS[self.preset])
        values = asdict(self)
        for f in fields(self):
            if values[f.name] is None and f.name in preset:
                values[f.name] = preset[f.name]
        return PipelineConfig(**values)

    @property
    def preset_values(self) -> Preset:
        return PRESETS[self.preset]

    def supernet_config(self):
        """The supernet training settings of a run (of a resolved config)."""
        from autonad_edge.training.config import SupernetConfig

        preset = self.preset_values
        return SupernetConfig(
            data=self.data, format=self.format, image_size=self.image_size,
            synthetic_count=preset.synthetic_count, epochs=self.supernet_epochs, batch_size=self.batch_size,
            seed=self.seed, device=self.device, space=self.space, sharing=self.sharing,
            max_steps_per_epoch=preset.max_steps_per_epoch, class_weighting=preset.class_weighting,
            warmup_epochs=preset.supernet_warmup_epochs, sandwich=preset.sandwich,
            sandwich_random=preset.sandwich_random, **self.recipe(),
            # Its val figures are progress information only (the search evaluates subnets itself):
            # ten points per run are enough.
            eval_every=max(1, self.supernet_epochs // 10),
            **({"lr": preset.supernet_lr} if preset.supernet_lr else {}),
        )

    def retrain_config(self, supernet_checkpoint: str | Path):
        """The retraining settings of a run (of a resolved config): the chosen subnet's, and
        those any baseline compared with it must get (same epochs, optimiser, loss, init)."""
        from autonad_edge.training.config import RetrainConfig

        preset = self.preset_values
        return RetrainConfig(
            data=self.data, format=self.format, image_size=self.image_size,
            synthetic_count=preset.synthetic_count, epochs=self.retrain_epochs, batch_size=self.batch_size,
            seed=self.seed, device=self.device, init=preset.retrain_init,
            supernet=str(supernet_checkpoint) if preset.retrain_init == "inherited" else None,
            max_steps_per_epoch=preset.max_steps_per_epoch, class_weighting=preset.class_weighting,
            schedule=preset.retrain_schedule, warmup_epochs=preset.retrain_warmup_epochs,
            ema_decay=preset.retrain_ema, **self.recipe(),
            **({"lr": preset.retrain_lr} if preset.retrain_lr else {}),
        )

    def recipe(self) -> dict[str, Any]:
        """The data and loss settings both trainings share (`RunConfig` fields)."""
        preset = self.preset_values
        return {"loss": preset.loss, "defect_crop_share": preset.defect_crop_share,
                "keep_aspect": preset.keep_aspect, "max_side": preset.max_side}


@dataclass
class StageLog:
    """``stages.json``: which stages finished, their wall time and their (small) results."""

    path: Path
    records: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path) -> "StageLog":
        records = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        return cls(path, records)

    def done(self, name: str) -> bool:
        return self.records.get(name, {}).get("status") == "done"

    def result(self, name: str) -> dict[str, Any]:
        return self.records.get(name, {}).get("result", {})

    def finish(self, name: str, wall_s: float, result: dict[str, Any], note: str = "") -> None:
        self.records[name] = {"status": "done", "wall_s": wall_s, "result": result, "note": note}
        atomic_write_json(self.path, self.records)


class SearchPipeline:
    def __init__(self, config: PipelineConfig, log: Callable[[str], None] = print) -> None:
        self.cfg = config.resolved()
        # The budgets set explicitly (not from the preset): a plan never overrides them.
        self.given = {f.name for f in fields(config) if getattr(config, f.name) is not None
                      and f.name in asdict(PRESETS[self.cfg.preset])}
        self.out = Path(self.cfg.out)
        self.log = log
        self.stage_times: dict[str, tuple[str, float]] = {}
        # The run's clock across resumes: this process's time plus what earlier ones spent.
        self._started = time.perf_counter()
        self._earlier_s = 0.0

    def elapsed_s(self) -> float:
        """Seconds this run has worked so far, in this process and the ones it resumes."""
        return self._earlier_s + time.perf_counter() - self._started

    # ---- helpers -------------------------------------------------------------------------
    def _stage(self, stages: StageLog, name: str, fn: Callable[[], dict[str, Any]], note: str = "") -> dict[str, Any]:
        if stages.done(name):
            self.stage_times[name] = ("resumed", stages.records[name]["wall_s"])
            self._earlier_s += stages.records[name]["wall_s"]
            self.log(f"[{name}] done in an earlier run; skipped")
            return stages.result(name)
        self.log(f"[{name}] ...")
        start = time.perf_counter()
        result = fn()
        wall = time.perf_counter() - start
        stages.finish(name, wall, result, note=result.pop("_note", note) if isinstance(result, dict) else note)
        self.stage_times[name] = ("done", wall)
        self.log(f"[{name}] finished in {wall:.1f} s")
        return stages.result(name)

    # ---- the run -------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from autonad_edge.data import DatasetError, load_dataset
        from autonad_edge.latency.table import LatencyTable
        from autonad_edge.latency.targets import TargetError, open_target
        from autonad_edge.space import ArchError, SearchSpace

        cfg = self.cfg
        self._started, self._earlier_s = time.perf_counter(), 0.0
        self.out.mkdir(parents=True, exist_ok=True)
        self._check_config_unchanged()
        if cfg.export_cache:
            from autonad_edge.latency.profiler import use_export_cache

            use_export_cache(f"{cfg.table}.exports" if cfg.export_cache == "table" else cfg.export_cache)
        try:
            space = SearchSpace.named(cfg.space) if not cfg.space.endswith(".json") else \
                SearchSpace.from_json(Path(cfg.space).read_text(encoding="utf-8"))
        except (ArchError, OSError, ValueError) as exc:
            raise PipelineError(f"search space {cfg.space}: {exc}") from None
        if not (self.out / "stages.json").exists() or not StageLog.open(self.out / "stages.json").done("latency"):
            from autonad_edge.latency import export_pool

            export_pool.start(wait=False)  # workers warm up while the data loads
        try:
            manifest = self._saved_manifest()
            data = load_dataset(
                cfg.data, cfg.format, image_size=cfg.image_size, seed=cfg.seed,
                synthetic_count=cfg.preset_values.synthetic_count, manifest=manifest,
                keep_aspect=cfg.preset_values.keep_aspect, max_side=cfg.preset_values.max_side,
            )
        except DatasetError as exc:
            raise PipelineError(f"dataset: {exc}") from None
        if len(data.train) == 0 or len(data.val) == 0:
            raise PipelineError("dataset: the train and val splits need at least one image each")
        if manifest is None:
            data.save_manifest(self.out / "splits.json")
        stages = StageLog.open(self.out / "stages.json")
        with contextlib.ExitStack() as stack:
            table = stack.enter_context(LatencyTable(cfg.table))
            try:
                pool = stack.enter_context(open_target(cfg.target, cfg.targets_path, table=table,
                                                           local_threads=cfg.local_threads))
            except TargetError as exc:
                raise PipelineError(str(exc)) from None
            self.cfg = cfg = self._planned(cfg, space, data, table, pool)
            ctx = _RunContext(self, space, data, table, pool, stages)
            self._stage(stages, "supernet", ctx.train_supernet)
            self._stage(stages, "latency", ctx.latency)
            self._stage(stages, "search", ctx.search)
            self._stage(stages, "retrain", ctx.retrain)
            self._stage(stages, "export", ctx.export)
            self._stage(stages, "engine", ctx.engine)
            report = ctx.report(stages)
        return report

    def _planned(self, cfg: PipelineConfig, space, data, table, pool) -> PipelineConfig:
        """The run's epochs and search size: the time budget's plan (measured here once, then
        read back from ``plan.json`` on a rerun), else the preset's epochs scaled to the data
        set's size; values given on the command line are kept."""
        from dataclasses import replace

        from autonad_edge.search.budget import BudgetError, BudgetPlan, measure_costs, plan_budget, scale_epochs

        path = self.out / "plan.json"
        if path.exists():
            saved = json.loads(path.read_text(encoding="utf-8"))
            self._earlier_s += saved.get("plan_s", 0.0)
            return replace(cfg, **saved["epochs"])
        given, preset = self.given, cfg.preset_values
        epochs: dict[str, int] = {}
        if cfg.time_budget:  # 0 turns a preset's budget off
            from autonad_edge.latency import export_pool
            from autonad_edge.latency.blocks import space_units
            from autonad_edge.latency.profiler import measure_units, missing_units, target_key

            key = target_key(pool)
            units = missing_units(space_units(space, data.num_classes, self._image_hw(cfg)), table, key)
            self.log(f"[plan] timing {len(units)} blocks and a few training steps to plan {cfg.time_budget:g} min")
            # A few of the run's own blocks, timed as the run will (the table keeps them): as
            # many as keep the export workers busy three times, once the workers are up, drawn
            # across the space (its first units, the high-resolution stage, cost the most).
            workers = export_pool.start(key.flavor) if units else 0
            probe = random.Random(cfg.seed).sample(units, min(len(units), max(3, 3 * workers)))
            start = time.perf_counter()
            if probe:
                measure_units(pool, table, probe, key=key, policy=measurement_policy(preset.timing))
            unit_s = (time.perf_counter() - start) / max(len(probe), 1)
            costs = measure_costs(cfg.supernet_config(), cfg.retrain_config("probe"), space, data,
                                  units_to_time=max(len(units) - len(probe), 0), unit_timing_s=unit_s,
                                  subnets_to_time=preset.calibration_archs + preset.finalists, seed=cfg.seed)
            try:
                plan: BudgetPlan = plan_budget(costs, 60 * cfg.time_budget, population=cfg.population,
                                               generations=cfg.generations, parents=cfg.parents)
            except BudgetError as exc:
                raise PipelineError(f"time budget: {exc}") from None
            self.log(f"[plan] {plan.summary()}")
            epochs = {"supernet_epochs": plan.supernet_epochs, "retrain_epochs": plan.retrain_epochs,
                      "population": plan.population, "generations": plan.generations}
            record = {"epochs": {}, "plan": plan.to_dict(), "costs": asdict(costs)}
        else:
            if preset.reference_images:
                for name in ("supernet_epochs", "retrain_epochs"):
                    epochs[name] = scale_epochs(getattr(cfg, name), len(data.train), preset.reference_images)
            record = {"epochs": {}, "plan": None, "scaled_for_images": len(data.train)}
        # Values given on the command line win over the plan.
        record["epochs"] = {k: v for k, v in epochs.items() if k not in given}
        record["plan_s"] = self.elapsed_s()  # data loading and the probes: the run's first costs
        atomic_write_json(path, record)
        return replace(cfg, **record["epochs"])

    @staticmethod
    def _image_hw(cfg: PipelineConfig) -> tuple[int, int]:
        s = cfg.image_size
        return (s, s) if isinstance(s, int) else tuple(s)

    def _check_config_unchanged(self) -> None:
        """A rerun into the same directory must be the same run, or its stages don't fit."""
        path = self.out / "config.json"
        current = asdict(self.cfg)
        volatile = {"quiet", "device", "generations", "targets_path", "export_cache"}
        if path.exists():
            saved = json.loads(path.read_text(encoding="utf-8"))
            changed = sorted(k for k in current if k not in volatile and saved.get(k) != current[k])
            if changed:
                raise PipelineError(
                    f"{self.out} holds a run with other settings ({', '.join(changed)}); "
                    "use another --out or the same settings to resume"
                )
        atomic_write_json(path, current)

    def _saved_manifest(self) -> dict | None:
        path = self.out / "splits.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


class _RunContext:
    """The stages, sharing what one run has open: data, table, target pool, estimator."""

    def __init__(self, pipeline: SearchPipeline, space, data, table, pool, stages: StageLog) -> None:
        self.stages = stages
        self.p, self.cfg, self.out = pipeline, pipeline.cfg, pipeline.out
        self.space, self.data, self.table, self.pool = space, data, table, pool
        self._estimator = None
        self._supernet = None
        self.policy = measurement_policy(self.cfg.preset_values.timing)

    @property
    def image_hw(self) -> tuple[int, int]:
        s = self.cfg.image_size
        return (s, s) if isinstance(s, int) else tuple(s)

    def estimator(self):
        if self._estimator is None:
            from autonad_edge.latency.estimator import LatencyEstimator

            self._estimator = LatencyEstimator(
                self.table, self.space, self.image_hw, self.data.num_classes, pool=self.pool,
                corrections=self.out / "latency" / "corrections.json",
                policy=self.policy, end_to_end_policy=self.policy, stat=self.cfg.latency_stat,
            )
        return self._estimator

    def supernet(self):
        if self._supernet is None:
            from autonad_edge.training.checkpoint import load_supernet

            self._supernet, _ = load_supernet(self.out / "supernet" / "supernet.pt")
        return self._supernet

    # ---- 1. supernet ---------------------------------------------------------------------
    def train_supernet(self) -> dict[str, Any]:
        from autonad_edge.latency.background import BackgroundProfiler
        from autonad_edge.training.supernet_trainer import train_supernet

        cfg, out_dir = self.cfg, self.out / "supernet"
        config = cfg.supernet_config()
        resume = (out_dir / "supernet.pt").exists()
        with BackgroundProfiler(self.pool, self.table, self.space, self.image_hw, self.data.num_classes,
                                policy=self.policy) as bg:
            summary = train_supernet(
                config, self.data, out_dir, space=self.space, resume=resume, quiet=self.cfg.quiet,
                step_hooks=[bg], epoch_hooks=[bg.epoch_hook], backlog=bg.backlog,
            )
            # Units still queued are measured by the latency stage, with its progress bar.
            stats = bg.stats
        return {"checkpoint": str(out_dir / "supernet.pt"), "summary": _json_safe(summary),
                "background_latency": _json_safe(asdict(stats) if hasattr(stats, "__dataclass_fields__") else stats)}

    # ---- 2. latency table, correction, prior ---------------------------------------------
    def latency(self) -> dict[str, Any]:
        from autonad_edge.latency.prior import build_prior, plot_prior, save_prior
        from autonad_edge.latency.profiler import profile

        out_dir = self.out / "latency"
        report = profile(self.space, self.pool, self.table, self.image_hw, self.data.num_classes,
                         progress=not self.cfg.quiet, policy=self.policy)
        est = self.estimator()
        rng = random.Random(self.cfg.seed + 1)
        calib = [self.space.sample(rng) for _ in range(self.cfg.preset_values.calibration_archs)]
        correction = est.calibrate(calib)
        method = self.cfg.prior_method
        kwargs = {} if self.cfg.prior_temperature is None else {"temperature": self.cfg.prior_temperature}
        prior, meta = build_prior(est, method=method, target=self.cfg.target, seed=self.cfg.seed, **kwargs)
        save_prior(out_dir / "prior.json", prior, meta)
        plot_prior(prior, self.space, out_dir / "prior.png",
                   subtitle=f"target {self.cfg.target}: {est.key.summary()}")
        return {
            "profile": report.summary(),
            "correction": _json_safe(correction.to_dict()),
            "prior": str(out_dir / "prior.json"),
            "heatmap": str(out_dir / "prior.png"),
            "fingerprint": est.key.fingerprint.hash,
            "fingerprint_summary": est.key.summary(),
        }

    # ---- 3. evolutionary search ----------------------------------------------------------
    def search(self) -> dict[str, Any]:
        from autonad_edge.latency.prior import load_prior
        from autonad_edge.models.complexity import count_flops, count_params
        from autonad_edge.search.evolution import (
            EvolutionarySearch, EvolutionConfig, SearchCallbacks, SearchError, pareto_front,
        )
        from autonad_edge.search.plots import plot_pareto
        from autonad_edge.training.calibration import calibrate

        cfg, out_dir = self.cfg, self.out / "search"
        out_dir.mkdir(parents=True, exist_ok=True)
        prior, _ = load_prior(self.out / "latency" / "prior.json")
        supernet, est = self.supernet(), self.estimator()
        num_classes = self.data.num_classes

        def evaluate_arch(arch):
            # Scored as it will be delivered: with its val-calibrated decision (retraining ends
            # with the same calibration). It also lets a young supernet whose argmax is still
            # all background show which subnets separate defects at all.
            r = calibrate(supernet, self.data.val, arch, batch_size=cfg.batch_size, num_classes=num_classes,
                          tile_size=int(cfg.image_size))
            return r.miou_after, r.mf1_after

        evo_cfg = EvolutionConfig(
            population=cfg.population, generations=cfg.generations, parents=cfg.parents,
            latency_weight=cfg.latency_weight, latency_budget_ms=cfg.latency_budget_ms,
            params_budget=cfg.params_budget, seed=cfg.seed,
        )
        progress = _GenerationProgress(cfg.generations, quiet=cfg.quiet)
        callbacks = SearchCallbacks(
            evaluate=evaluate_arch,
            latency_ms=est.estimate,
            params=lambda a: count_params(a, self.space, num_classes),
            measure_ms=est.measure_end_to_end,
            on_generation=progress.generation,
            on_evaluated=progress.evaluated,
        )
        search = EvolutionarySearch(self.space, evo_cfg, callbacks, prior=prior, state_path=out_dir / "state.json")
        try:
            with progress:
                search.run()
            best = search.finalize(top=self.cfg.preset_values.finalists)
        except SearchError as exc:
            raise PipelineError(f"search: {exc}") from None
        candidates = list(search.cache.values())
        for c in candidates:
            c.extra.setdefault("flops", count_flops(c.arch, self.space, num_classes, self.image_hw))
            c.extra["score"] = search.score(c)
        front = pareto_front(candidates)
        signal = self._signal(supernet, best, candidates)
        self.p.log(f"[search] {signal.summary()}")
        atomic_write_json(out_dir / "search.json", {
            "config": asdict(evo_cfg), "reference_ms": search.reference_ms,
            "score": "mIoU - lambda * latency_ms / reference_ms",
            "signal": signal.to_dict(),
            "chosen": best.arch.hash,
            "candidates": [c.to_dict() for c in sorted(candidates, key=lambda c: -search.score(c))],
        })
        atomic_write_json(out_dir / "pareto.json", [c.to_dict() for c in front])
        atomic_write_json(self.out / "best_arch.json", best.arch.to_dict())
        plot_pareto(candidates, best, out_dir / "pareto.png",
                    title=f"Search on {cfg.target}: validation mIoU vs latency")
        return {
            "best": best.to_dict(), "evaluated": len(candidates), "pareto": len(front),
            "reference_ms": search.reference_ms, "signal": signal.to_dict(),
            "search_json": str(out_dir / "search.json"), "pareto_png": str(out_dir / "pareto.png"),
        }

    def _signal(self, supernet, best, candidates):
        """The noise of the chosen subnet's val score against the candidates' spread."""
        from autonad_edge.search.signal import SearchSignal
        from autonad_edge.training.calibration import calibrate
        from autonad_edge.training.evaluate import image_matrices

        options = {"batch_size": self.cfg.batch_size, "num_classes": self.data.num_classes,
                   "tile_size": int(self.cfg.image_size)}
        offset = calibrate(supernet, self.data.val, best.arch, **options).background_offset
        matrices = image_matrices(supernet, self.data.val, best.arch, background_offset=offset, **options)
        return SearchSignal.measure(matrices, [c.miou for c in candidates], best.miou, seed=self.cfg.seed)

    def _best_arch(self):
        from autonad_edge.space import Arch

        return Arch.from_dict(json.loads((self.out / "best_arch.json").read_text(encoding="utf-8")))

    # ---- 4. retrain + test ---------------------------------------------------------------
    def retrain(self) -> dict[str, Any]:
        from autonad_edge.training.checkpoint import load_model
        from autonad_edge.training.evaluate import evaluate
        from autonad_edge.training.retrain import BEST_FILE, retrain

        arch = self._best_arch()
        self._replan_retrain(arch)
        cfg, out_dir = self.cfg, self.out / "retrain"
        config = cfg.retrain_config(self.out / "supernet" / "supernet.pt")
        resume = (out_dir / "last.pt").exists()
        summary = retrain(config, self.data, out_dir, space=self.space, arch=arch, resume=resume, quiet=cfg.quiet)
        ckpt = out_dir / BEST_FILE if (out_dir / BEST_FILE).exists() else out_dir / "last.pt"
        model, _ = load_model(ckpt)
        results = {}
        for split in ("val", "test"):
            dataset = getattr(self.data, split)
            if len(dataset):
                r = evaluate(model, dataset, batch_size=cfg.batch_size, num_classes=self.data.num_classes,
                             class_names=self.data.class_names, tile_size=int(cfg.image_size))
                results[split] = r.to_dict()
        pictures = None
        split = "test" if len(self.data.test) else "val"
        if len(getattr(self.data, split)):
            from autonad_edge.training.pictures import prediction_grid

            rows = prediction_grid(model, getattr(self.data, split), self.out / "predictions.png",
                                   class_names=self.data.class_names, tile_size=int(cfg.image_size))
            pictures = {"path": str(self.out / "predictions.png"), "split": split, "rows": rows}
        return {"checkpoint": str(ckpt), "metrics": _json_safe(results), "calibration": summary.get("calibration"),
                "pictures": pictures}

    def _replan_retrain(self, arch) -> None:
        """On a time budget, give retraining all the time the earlier stages left (their costs
        were estimates when the plan was made), once: the figure is kept in ``plan.json`` so a
        resumed retrain keeps its schedule."""
        from dataclasses import replace

        from autonad_edge.search.budget import StageCosts, measure_retrain_step, replan_retrain

        path = self.out / "plan.json"
        record = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        if not record.get("plan") or "retrain_epochs" in self.p.given:
            return
        if "replanned" not in record:
            costs = StageCosts(**record["costs"])
            step_s = measure_retrain_step(self.cfg.retrain_config("probe"), self.space, self.data, arch,
                                          seed=self.cfg.seed)
            costs = replace(costs, retrain_step_s=step_s)
            elapsed = self.p.elapsed_s()
            epochs = replan_retrain(costs, record["plan"]["budget_s"], elapsed)
            record["replanned"] = {"elapsed_s": elapsed, "retrain_step_s": step_s,
                                   "planned_retrain_epochs": record["epochs"].get("retrain_epochs"),
                                   "retrain_epochs": epochs}
            record["epochs"]["retrain_epochs"] = epochs
            atomic_write_json(path, record)
            self.p.log(f"[retrain] {elapsed / 60:.1f} of {record['plan']['budget_s'] / 60:.0f} min spent: "
                       f"retraining {epochs} epochs (planned {record['replanned']['planned_retrain_epochs']})")
        epochs = record["epochs"]["retrain_epochs"]
        self.cfg = self.p.cfg = replace(self.cfg, retrain_epochs=epochs)

    # ---- 5. export -----------------------------------------------------------------------
    def export(self) -> dict[str, Any]:
        from autonad_edge.export.onnx_export import export_network, save_model
        from autonad_edge.export.graph import op_counts
        from autonad_edge.latency.client import TensorSpec

        out_dir = self.out / "export"
        model, _ = self._load_retrained()
        files = {}
        for flavor in ("portable", "tensorrt"):
            onnx_model = export_network(model, self.image_hw, flavor)
            path = out_dir / f"model.{flavor}.onnx"
            sha = save_model(onnx_model, path)
            files[flavor] = {"path": str(path), "sha256": sha, "ops": sum(op_counts(onnx_model).values())}
        # The model a TensorRT target runs is the plugin flavour; every other target the portable one.
        flavor = "tensorrt" if self._backend() == "tensorrt" else "portable"
        onnx_bytes = Path(files[flavor]["path"]).read_bytes()
        # The final figure always uses the agent's full (trtexec-like) policy.
        m = self.pool.measure(onnx_bytes, [TensorSpec("image", (1, 3, *self.image_hw), "float32")])
        return {"files": files, "measured": {"flavor": flavor, **_json_safe(m.to_dict())}}

    def _load_retrained(self):
        from autonad_edge.training.checkpoint import load_model

        return load_model(self.p_result("retrain")["checkpoint"])

    def p_result(self, name: str) -> dict[str, Any]:
        return self.stages.result(name)

    def _backend(self) -> str:
        return self.estimator().key.backend

    # ---- 6. engine -----------------------------------------------------------------------
    def engine(self) -> dict[str, Any]:
        from autonad_edge.export.bundle import write_bundle
        from autonad_edge.export.engine import EngineBuildError, build_engine

        cfg, out_dir = self.cfg, self.out / "deploy"
        export = self.p_result("export")["files"]
        engine_path, engine_ms, note = None, None, ""
        if self._backend() == "tensorrt":
            try:
                result = build_engine(cfg.target, export["tensorrt"]["path"], out_dir / "model.engine",
                                      fp16=self.estimator().key.precision == "fp16", targets_path=cfg.targets_path)
                engine_path = out_dir / "model.engine"
                engine_ms = getattr(result, "latency_ms", None)
                note = "built on the target's agent"
            except EngineBuildError as exc:
                note = f"engine build failed: {exc}; the ONNX models are kept"
        else:
            note = (f"target '{cfg.target}' runs {self._backend()}, not TensorRT: no engine was built; "
                    "deploy export/model.portable.onnx (or run build-engine against a TensorRT target)")
        best = self._best_arch()
        write_bundle(
            out_dir / "bundle", export["portable"]["path"], engine_path,
            manifest={"arch": best, "classes": list(self.data.class_names), "image_size": list(self.image_hw),
                      "max_side": self.cfg.preset_values.max_side if self.cfg.preset_values.keep_aspect else None},
            extra_onnx=[export["tensorrt"]["path"]], overwrite=True,
        )
        return {"engine": str(engine_path) if engine_path else None, "engine_ms": engine_ms, "note": note,
                "bundle": str(out_dir / "bundle"), "_note": note}

    # ---- 7. report -----------------------------------------------------------------------
    def report(self, stages: StageLog) -> dict[str, Any]:
        import platform

        from autonad_edge import __version__
        from autonad_edge.models.complexity import count_flops, count_params
        from autonad_edge.search.report import artefact_entries, latency_disagreement, write_report

        start = time.perf_counter()
        cfg = self.cfg
        best = self._best_arch()
        search = stages.result("search")
        retrain_metrics = stages.result("retrain").get("metrics", {})
        export = stages.result("export")
        engine = stages.result("engine")
        latency = stages.result("latency")
        accuracy = {"search_val": {"miou": search["best"]["miou"], "mf1": search["best"]["mf1"]},
                    "calibration": stages.result("retrain").get("calibration")}
        for split, m in retrain_metrics.items():
            accuracy[split] = {"miou": m.get("miou"), "miou_defects": m.get("miou_defects"), "mf1": m.get("mf1"),
                               "per_class": m.get("per_class"), "defect_level": m.get("defect_level")}
        desc = self.data.describe()
        artefacts = [
            self.out / "best_arch.json", self.out / "search" / "search.json", self.out / "search" / "pareto.json",
            self.out / "search" / "pareto.png", self.out / "latency" / "prior.json", self.out / "latency" / "prior.png",
            Path(stages.result("retrain")["checkpoint"]), *(Path(f["path"]) for f in export["files"].values()),
            self.out / "splits.json",
        ]
        pictures = stages.result("retrain").get("pictures")
        if pictures:
            artefacts.append(Path(pictures["path"]))
        if engine.get("engine"):
            artefacts.append(Path(engine["engine"]))
        devices = self.pool.device_info()
        report = {
            "autonad_edge_version": __version__,
            "host": platform.node(),
            "config": asdict(cfg),
            "dataset": {
                "format": cfg.format, "root": cfg.data, "num_classes": self.data.num_classes,
                "classes": list(self.data.class_names), "image_size": f"{self.image_hw[0]}x{self.image_hw[1]}",
                "images": {s: len(getattr(self.data, s)) for s in ("train", "val", "test")},
                "splits_file": "splits.json", "description": _json_safe(desc),
            },
            "target": {
                "name": cfg.target, "backend": self._backend(), "precision": self.estimator().key.precision,
                "device": self.estimator().key.fingerprint.summary(),
                "fingerprint": self.estimator().key.fingerprint.hash,
                "agents": [d.address for d in devices],
            },
            "search_space": self.space.to_dict(),
            "budgets": {
                "preset": cfg.preset, "sharing": cfg.sharing, "latency_weight (lambda)": cfg.latency_weight,
                "latency_budget_ms": cfg.latency_budget_ms, "params_budget": cfg.params_budget,
                "population": cfg.population, "generations": cfg.generations, "parents": cfg.parents,
                "supernet_epochs": cfg.supernet_epochs, "retrain_epochs": cfg.retrain_epochs,
                "evaluated_candidates": search["evaluated"], "time_budget_min": cfg.time_budget,
                "plan": json.loads((self.out / "plan.json").read_text(encoding="utf-8")).get("plan")
                if (self.out / "plan.json").exists() else None,
            },
            "chosen": {
                "hash": best.hash, "summary": best.summary(), "arch": best.to_dict(),
                "params": count_params(best, self.space, self.data.num_classes),
                "flops": count_flops(best, self.space, self.data.num_classes, self.image_hw),
            },
            "accuracy": accuracy,
            "search_signal": search.get("signal"),
            "pictures": pictures,
            "latency": {
                "statistic": cfg.latency_stat,
                "estimated_ms": search["best"]["latency_ms"],
                "finalist_measured_ms": search["best"].get("measured_ms"),
                "measured_ms": export["measured"]["median_ms"],
                "measured_min_ms": export["measured"].get("min_ms"),
                "measured_p90_ms": export["measured"].get("p90_ms"),
                "measured_flavor": export["measured"]["flavor"],
                "engine_ms": engine.get("engine_ms"),
                "engine_note": engine.get("note"),
                "fingerprint": latency.get("fingerprint_summary"),
            },
            "artefacts": artefact_entries(self.out, artefacts),
        }
        report["latency"]["warning"] = latency_disagreement(report["latency"])
        report["stages"] = [
            {"name": name, "status": self.p.stage_times.get(name, ("done", 0.0))[0],
             "wall_s": stages.records.get(name, {}).get("wall_s", 0.0), "note": stages.records.get(name, {}).get("note", "")}
            for name in STAGES if name != "report"
        ]
        report["stages"].append({"name": "report", "status": "done", "wall_s": time.perf_counter() - start, "note": ""})
        write_report(self.out, report)
        return report


class _GenerationProgress:
    """A rich progress bar over generations (plain lines when quiet or not a terminal)."""

    def __init__(self, generations: int, quiet: bool) -> None:
        self.generations, self.quiet = generations, quiet
        self._progress = None
        self._task = None
        self._evaluated = 0

    def __enter__(self):
        if not self.quiet:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("[bold]search"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("search", total=self.generations, info="")
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def evaluated(self, cand) -> None:
        self._evaluated += 1
        if self._progress is not None:
            self._progress.update(self._task, info=f"{self._evaluated} evaluated, last mIoU {100 * cand.miou:.1f}%")

    def generation(self, gen: int, ranked) -> None:
        if self._progress is not None and ranked:
            best = ranked[0]
            self._progress.update(
                self._task, completed=gen,
                info=f"{self._evaluated} evaluated; best mIoU {100 * best.miou:.1f}% at {best.latency_ms:.2f} ms",
            )


def run_search(config: PipelineConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Library entry point of `autonad-edge search`."""
    return SearchPipeline(config, log).run()
