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

Before any training the options are checked, the dataset is loaded (a broken one fails with
what is wrong) and the target is contacted (an unreachable one fails in seconds with the address
tried); only then is ``config.json`` written, and the split (``splits.json``) after it. One run
at a time holds a directory (a lock on ``<out>/.lock``).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, fields, replace
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
from autonad_edge.search.outcome import SearchOutcome
from autonad_edge.search.presets import PRESETS, Preset, measurement_policy
from autonad_edge.search.stages.context import RunClock, RunContext, read_run_json, unreadable
from autonad_edge.search.stages.engine import DeployResult, engine_stage
from autonad_edge.search.stages.export import ExportResult, export_stage
from autonad_edge.search.stages.latency import LatencyResult, device_change, latency_stage
from autonad_edge.search.stages.race import RaceResult, race_stage
from autonad_edge.search.stages.report import RunResults, report_stage
from autonad_edge.search.stages.retrain import RetrainResult, retrain_stage
from autonad_edge.search.stages.search import SearchResult, search_stage
from autonad_edge.search.stages.store import StageLog
from autonad_edge.search.stages.supernet import SupernetResult, supernet_stage
from autonad_edge.space import ArchError, SearchSpace

try:
    import fcntl
except ImportError:  # Windows: no lock (the toolkit's hosts and targets are POSIX)
    fcntl = None

STAGES = ("supernet", "latency", "search", "race", "retrain", "export", "engine", "report")
# Settings a rerun may change without making it another run.
VOLATILE = {"quiet", "device", "generations", "targets_path", "export_cache", "explicit", "out"}
# Settings that name files: one file named two ways (relative, absolute) is the same setting.
PATH_SETTINGS = ("data", "table")
SCALE_FILE = "scale.json"  # the training scale the rule chose (data.scale.TrainingScale)

__all__ = ["PRESETS", "STAGES", "PipelineConfig", "PipelineError", "Preset", "SearchOutcome", "SearchPipeline",
           "measurement_policy", "run_search"]


class SearchPipeline:
    def __init__(self, config: PipelineConfig, log: Callable[[str], None] = print) -> None:
        self.cfg = config.resolved()
        _check_device(self.cfg.device)
        # The budgets set explicitly (not from the preset): a plan never overrides them.
        self.given = frozenset(self.cfg.explicit)
        self.out = Path(self.cfg.out)
        self.log = log
        self.clock = RunClock()
        self.scale: TrainingScale | None = None  # the training scale, when chosen from the masks
        self.worked = False  # whether an earlier run of `out` did work (stages, a plan) this one resumes
        self.new_split = True  # whether the data was split afresh (not as splits.json says)

    def elapsed_s(self) -> float:
        """Seconds this run has worked so far, in this process and the ones it resumes."""
        return self.clock.elapsed_s()

    def run(self) -> SearchOutcome:
        self.clock = RunClock()
        self.out.mkdir(parents=True, exist_ok=True)
        with _exclusive(self.out):
            return self._run()

    def _run(self) -> SearchOutcome:
        cfg = self.cfg
        for note in cfg.ignored_options():
            self.log(f"[config] note: {note}")
        stages = StageLog.open(self.out / "stages.json")
        _check_plan_readable(self.out / "plan.json")
        # A config.json alone is from a run that stopped before any work (a bad option, an
        # unreachable target): it does not hold this directory, and is replaced.
        self.worked = bool(stages.records) or (self.out / "plan.json").exists()
        # The training scale may be chosen from the data (`_load_data`): checked once known.
        same = _check_config_unchanged(self.out, cfg, write=False, unknown=frozenset({"max_side"}),
                                       worked=self.worked)
        if cfg.export_cache:
            use_export_cache(f"{cfg.table}.exports" if cfg.export_cache == "table" else cfg.export_cache)
        try:
            space = SearchSpace.resolve(cfg.space)
        except (ArchError, ValueError) as exc:
            raise PipelineError(f"search space {cfg.space}: {exc}") from None
        if not stages.done("latency"):
            export_pool.start(wait=False)  # workers warm up while the data loads
        # The split is reused where config.json says it was made with these settings (one
        # without it is from a run that stopped before it was written, or from before it existed).
        reuse = same if (self.out / "config.json").exists() else self.worked
        data = self._load_data(reuse_split=reuse, write_split=False)
        cfg = self.cfg
        _check_params_budget(space, data.num_classes, cfg.params_budget)
        with contextlib.ExitStack() as stack:
            table = stack.enter_context(LatencyTable(cfg.table))
            try:
                pool = stack.enter_context(open_target(cfg.target, cfg.targets_path, table=table,
                                                       local_threads=cfg.local_threads))
            except TargetError as exc:
                raise PipelineError(str(exc)) from None
            # The run is valid: its settings are recorded first, then the split made with them.
            _check_config_unchanged(self.out, cfg, worked=self.worked)
            if self.new_split:
                data.save_manifest(self.out / "splits.json")
            ctx = RunContext(cfg, self.given, self.out, space, data, table, pool, self.clock, self.log,
                             scale=self.scale)
            if stages.done("latency"):
                changed = device_change(stages.load("latency", LatencyResult), ctx)
                if changed:
                    raise PipelineError(changed)
            ctx.cfg = plan_run(ctx)
            results = self._run_stages(ctx, stages)
            report = report_stage(ctx, results, stages, STAGES)
            self.cfg = ctx.cfg
        return SearchOutcome(self.out, results, report)

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

    def _load_data(self, reuse_split: bool = True, write_split: bool = True) -> SegmentationData:
        """The data at its training scale, split as ``splits.json`` says when `reuse_split` (and
        there is one), else afresh (`new_split`), and then recorded there with `write_split`
        (`run` records it itself, after config.json)."""
        cfg, splits = self.cfg, self.out / "splits.json"
        manifest = _saved_split(splits) if reuse_split and splits.exists() else None
        self.new_split = manifest is None
        rule = self._scale_rule()
        # A resume keeps the side its run chose and recorded (the rule may have chosen it at
        # native size, which measuring again at the preset's cap cannot reproduce); a new run's
        # rule measures the masks at the preset's cap, whatever a loaded config recorded.
        kept = self._recorded_cap() if rule else None
        max_side = kept or (PRESETS[cfg.preset].max_side if rule else cfg.max_side)
        data = self._load(manifest, max_side)
        if len(data.train) == 0 or len(data.val) == 0:
            raise PipelineError("dataset: the train and val splits need at least one image each")
        missing = data.classes_missing_from("val")
        if missing:
            self.log(f"[data] warning: val has no pixel of {', '.join(missing)}: the search cannot score "
                     "and the calibration cannot tune them; list images that hold them in val.txt")
        if self.new_split and write_split:
            data.save_manifest(splits)
        if rule and kept:
            self.scale = _saved_scale(self.out / SCALE_FILE)
            chosen = self.scale.summary() if self.scale else f"long side at most {kept} px"
            self.log(f"[data] training scale: {chosen}, as this run chose it")
            self.cfg = replace(cfg, max_side=kept)
        elif rule:
            self.scale = self._measure_scale(data, max_side)
            if self.scale.too_thin and max_side is not None and capped_at_load(data):
                # The load's cap shrank images whose thinnest class is below the width the rule
                # keeps, and may be why: a 1-px crack along a 4000 x 200 line-scan strip stays a
                # 1-px line in the mask at a long side of 1024 but keeps a quarter of its
                # contrast in the image. Measured at native size where the set fits in memory,
                # it trains there or at the scale the masks allow.
                needed = native_cache_bytes(data)
                if needed <= native_load_limit():
                    data, max_side = self._load(data.manifest(), None), None
                    self.scale = self._measure_scale(data, None)
                else:
                    self.log(f"[data] warning: the {max_side}-px load cap leaves {self.scale.thinnest} a median "
                             f"width of {self.scale.scaled_widths[self.scale.thinnest]:.1f} px, below the "
                             f"{cfg.min_defect_width:g} px the rule keeps; at native size the set would take "
                             f"{needed / 2**30:.1f} GiB of memory: give --max-side to choose the scale")
            self.log(f"[data] training scale: {self.scale.summary()}")
            self.cfg = replace(cfg, max_side=self.scale.max_side or max_side)
            if self.out.is_dir():  # what a resume reports (it does not measure again)
                atomic_write_json(self.out / SCALE_FILE, self.scale.to_dict())
            if self.scale.max_side is not None:
                data = self._load(data.manifest(), self.scale.max_side)
        return data

    def _measure_scale(self, data: SegmentationData, max_side: int | None) -> TrainingScale:
        """The rule's scale, from `data` as loaded with the long-side cap `max_side`."""
        cfg = self.cfg
        return training_scale(data.train, data.num_classes, min_width=cfg.min_defect_width,
                              floor=max(cfg.image_hw), class_names=data.class_names,
                              loaded_at=max_side if max_side is not None and capped_at_load(data) else None)

    def _load(self, manifest: dict[str, Any] | None, max_side: int | None) -> SegmentationData:
        cfg = self.cfg
        try:
            return load_dataset(cfg.data, cfg.format, image_size=cfg.image_size, seed=cfg.seed,
                                synthetic_count=cfg.synthetic_count, manifest=manifest,
                                keep_aspect=cfg.keep_aspect, max_side=max_side)
        except (DatasetError, ValueError) as exc:  # the loader's own checks of its arguments too
            raise PipelineError(f"dataset: {exc}") from None

    def _scale_rule(self) -> bool:
        """Whether the training scale is chosen from the masks (`data.scale`): the preset's rule,
        unless --max-side was given, the images are squashed, or the run directory was started
        before the rule existed (its config has no such field, and keeps its scale)."""
        cfg = self.cfg
        if not cfg.min_defect_width or not cfg.keep_aspect or "max_side" in self.given:
            return False
        saved = _saved_config(self.out / "config.json", self.worked)
        return saved is None or "min_defect_width" in saved

    def _recorded_cap(self) -> int | None:
        """The long-side cap this directory's run trained at, which a resume keeps; None for a
        new run or one at native size."""
        saved = _saved_config(self.out / "config.json", self.worked) if self.worked else None
        side = None if saved is None else saved.get("max_side")
        return int(side) if side is not None else None


def _saved_scale(path: Path) -> TrainingScale | None:
    """The training scale a run chose, as it recorded it; None where it did not (a run from
    before the record, or a damaged one: the report then gives the side alone)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in fields(TrainingScale)}
        return TrainingScale(**{k: v for k, v in record.items() if k in known})
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def _same_setting(name: str, saved: Any, current: Any) -> bool:
    if saved == current:
        return True
    if name in PATH_SETTINGS and isinstance(saved, str) and isinstance(current, str):
        return os.path.realpath(saved) == os.path.realpath(current)
    return False


def capped_at_load(data: SegmentationData) -> bool:
    """Whether any image was loaded smaller than its file (the load's long-side cap)."""
    cache = data.cache
    return any(image.shape[:2] != tuple(native) for image, native in zip(cache.images, cache.native_sizes))


def native_cache_bytes(data: SegmentationData) -> int:
    """The memory the data set would take loaded at native size: each image's pixels and mask."""
    cache = data.cache
    return int(sum(int(h) * int(w) * (image.shape[2] + 1) for image, (h, w) in zip(cache.images, cache.native_sizes)))


def native_load_limit() -> int:
    """The most memory a native-size load may take: a quarter of what this process may use (the
    host's, or a container's cgroup limit when lower), at most 8 GiB."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = 8 * 2**30
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return min(total // 4, 8 * 2**30)


def _saved_split(path: Path) -> dict[str, Any]:
    """The split an earlier run of this directory recorded; an unreadable one is refused in one
    line. Split afresh, the data splits the same way (same seed), and a resumed checkpoint
    refuses any other split, so deleting it is safe."""
    try:
        return load_manifest(path)
    except DatasetError as exc:
        raise PipelineError(f"dataset: {exc}; delete it to split the data again, or use another --out") from None


def _saved_config(path: Path, worked: bool) -> dict[str, Any] | None:
    """The settings ``config.json`` recorded; None without one, or for a damaged one in a
    directory without work (this run's replaces it). With work, a damaged one is refused: its
    stages were made with its settings, and deleting it would let other settings reuse them."""
    if not path.exists():
        return None
    if worked:
        return read_run_json(path, "", remedy="restore it (this run's finished work was made with its settings), "
                                              "or use another --out")
    try:
        return read_run_json(path, "")
    except PipelineError:
        return None


def _check_config_unchanged(out: Path, cfg: PipelineConfig, write: bool = True, unknown: frozenset[str] = frozenset(),
                            worked: bool = True) -> bool:
    """Whether ``<out>/config.json`` records this run's settings; `unknown`: fields not known
    yet (checked on a second call); `write`: record this run's. A rerun into a directory that
    holds work (`worked`) must be the same run, or its stages don't fit: other settings are
    refused. Without work, the saved config is from a run that stopped before any (a bad option,
    an unreachable target): it does not count, and this run's replaces it."""
    path = out / "config.json"
    current, changed = asdict(cfg), []
    saved = _saved_config(path, worked)
    recorded = saved is not None
    if recorded:
        # A field the saved config lacks was not recorded yet when it was written (it came
        # from the preset): only the recorded ones can tell.
        changed = sorted(k for k in current if k not in VOLATILE | unknown and k in saved
                         and not _same_setting(k, saved[k], current[k]))
        if changed and worked:
            raise PipelineError(
                f"{out} holds a run with other settings ({', '.join(changed)}); "
                "use another --out or the same settings to resume"
            )
    if write:
        atomic_write_json(path, current)
    return recorded and not changed


def _check_plan_readable(path: Path) -> None:
    """A damaged ``plan.json`` is refused now, in one line, not by the planner after the data."""
    if not path.exists():
        return
    plan = read_run_json(path, "plan the run again")
    epochs, names = plan.get("epochs"), {f.name for f in fields(PipelineConfig)}
    if not isinstance(epochs, dict) or not all(k in names and isinstance(v, (int, float)) for k, v in epochs.items()):
        raise unreadable(path, "plan the run again", "its epochs are not a record of settings and numbers")
    if not isinstance(plan.get("plan") or {}, dict):
        raise unreadable(path, "plan the run again", "its plan is not a record")


def _check_device(spec: str) -> None:
    """A training device this host lacks is refused now, not when the supernet starts."""
    import torch

    from autonad_edge.training.distributed import resolve_device

    try:
        device = resolve_device(spec)
    except (ValueError, RuntimeError) as exc:
        raise PipelineError(f"--device: {exc}") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise PipelineError(f"--device {spec}: this host has {torch.cuda.device_count()} CUDA GPU(s)")


def _check_params_budget(space: SearchSpace, num_classes: int, budget: int | None) -> None:
    """A parameter budget no subnet meets is refused before the supernet trains (the search
    checks it too, minutes later): counted as the search counts, on the meta device."""
    if budget is None:
        return
    from autonad_edge.models.complexity import count_params

    smallest = min(count_params(arch, space, num_classes) for arch in space.smallest_subnets())
    if smallest > budget:
        raise PipelineError(f"--params-budget {budget:,} is infeasible: the smallest subnet of this space "
                            f"has {smallest:,} parameters")


@contextlib.contextmanager
def _exclusive(out: Path):
    """Hold ``<out>/.lock`` for the run: two runs into one directory would interleave their
    stages.json, checkpoints and logs. The kernel drops the lock when the process ends, however."""
    if fcntl is None:
        yield
        return
    try:
        fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise PipelineError(f"{out}: cannot write the run's lock file ({exc.strerror}); use a writable --out") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise PipelineError(f"{out} is in use by another autonad-edge run (pid {holder}); "
                                "wait for it or use another --out") from None
        except OSError:  # a filesystem without locks (some network mounts): the run goes on unguarded
            locked = False
        if locked:  # the pid the refusal of another run names
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def run_search(config: PipelineConfig, log: Callable[[str], None] = print) -> SearchOutcome:
    """Library entry point of `autonad-edge search`: runs (or resumes) the search `config`
    describes, logging progress lines to `log`; raises `AutonadError` subclasses, one line each."""
    return SearchPipeline(config, log).run()
