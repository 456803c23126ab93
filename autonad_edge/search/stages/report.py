"""Stage 7: ``report.md`` and ``report.json``, assembled from the stages' typed results."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from autonad_edge import __version__
from autonad_edge.io import json_safe
from autonad_edge.models.complexity import count_flops, count_params
from autonad_edge.search.report import artefact_entries, latency_disagreement, write_report
from autonad_edge.search.stages.context import RunContext
from autonad_edge.search.stages.engine import DeployResult
from autonad_edge.search.stages.export import ExportResult
from autonad_edge.search.stages.latency import LatencyResult
from autonad_edge.search.stages.race import RaceResult
from autonad_edge.search.stages.retrain import RetrainResult
from autonad_edge.search.stages.search import SearchResult
from autonad_edge.search.stages.store import StageLog
from autonad_edge.search.stages.supernet import SupernetResult


@dataclass(frozen=True)
class RunResults:
    """What the stages before the report returned."""

    supernet: SupernetResult
    latency: LatencyResult
    search: SearchResult
    race: RaceResult
    retrain: RetrainResult
    export: ExportResult
    engine: DeployResult


def report_stage(ctx: RunContext, results: RunResults, stages: StageLog, names: tuple[str, ...]) -> dict[str, Any]:
    start = time.perf_counter()
    report = {
        "autonad_edge_version": __version__,
        "host": platform.node(),
        "config": asdict(ctx.cfg),
        "dataset": _dataset(ctx),
        "target": _target(ctx),
        "search_space": ctx.space.to_dict(),
        "budgets": _budgets(ctx, results.supernet, results.search, results.retrain),
        "chosen": _chosen(ctx),
        "accuracy": _accuracy(results.race, results.retrain),
        "search_signal": results.search.signal.to_dict(),
        "race": results.race.to_dict(),
        "pictures": results.retrain.pictures,
        "latency": _latency(ctx, results),
        "artefacts": artefact_entries(ctx.out, _artefacts(ctx, results)),
    }
    report["latency"]["warning"] = latency_disagreement(report["latency"])
    report["stages"] = [
        {"name": name, "status": stages.status.get(name, "done"), "wall_s": stages.wall_s(name),
         "note": stages.note(name)}
        for name in names if name != "report"
    ]
    report["stages"].append({"name": "report", "status": "done", "wall_s": time.perf_counter() - start, "note": ""})
    write_report(ctx.out, report)
    return report


def _dataset(ctx: RunContext) -> dict[str, Any]:
    cfg, data, (h, w) = ctx.cfg, ctx.data, ctx.image_hw
    return {
        "format": cfg.format, "root": cfg.data, "num_classes": data.num_classes,
        "classes": list(data.class_names), "image_size": f"{h}x{w}",
        "images": {s: len(getattr(data, s)) for s in ("train", "val", "test")},
        # The long side images are scaled down to (None: native, or squashed to image_size),
        # and, when it was chosen from the masks, the figures it was chosen from.
        "max_side": cfg.max_side if cfg.keep_aspect else None,
        **({"squash": True} if not cfg.keep_aspect else {}),  # every image squashed to image_size
        "training_scale": ctx.scale.to_dict() if ctx.scale else None,
        "splits_file": "splits.json", "description": json_safe(data.describe()),
    }


def _target(ctx: RunContext) -> dict[str, Any]:
    key = ctx.estimator.key
    return {
        "name": ctx.cfg.target, "backend": ctx.backend, "precision": key.precision,
        "device": key.fingerprint.summary(), "fingerprint": key.fingerprint.hash,
        "agents": [d.address for d in ctx.pool.device_info()],
    }


def _budgets(ctx: RunContext, supernet: SupernetResult, search: SearchResult, retrain: RetrainResult) -> dict[str, Any]:
    cfg, plan_path = ctx.cfg, ctx.out / "plan.json"
    return {
        "preset": cfg.preset, "sharing": cfg.sharing, "latency_weight (lambda)": cfg.latency_weight,
        "latency_budget_ms": cfg.latency_budget_ms, "params_budget": cfg.params_budget,
        "population": search.population or cfg.population, "generations": search.generations or cfg.generations,
        "parents": cfg.parents,
        "supernet_epochs": supernet.epochs if supernet.epochs is not None else cfg.supernet_epochs,
        "retrain_epochs": retrain.epochs if retrain.epochs is not None else cfg.retrain_epochs,
        "evaluated_candidates": search.evaluated, "time_budget_min": cfg.time_budget,
        "plan": json.loads(plan_path.read_text(encoding="utf-8")).get("plan") if plan_path.exists() else None,
    }


def _chosen(ctx: RunContext) -> dict[str, Any]:
    best, classes = ctx.best_arch(), ctx.data.num_classes
    return {
        "hash": best.hash, "summary": best.summary(), "arch": best.to_dict(),
        "params": count_params(best, ctx.space, classes),
        "flops": count_flops(best, ctx.space, classes, ctx.image_hw),
    }


def _accuracy(race: RaceResult, retrain: RetrainResult) -> dict[str, Any]:
    chosen = race.winner
    accuracy = {"search_val": {"miou": chosen.miou, "mf1": chosen.mf1}, "calibration": retrain.calibration}
    raced = next((e for e in race.entries if e.hash == chosen.arch.hash), None)
    if raced is not None:
        accuracy["race_val"] = {"miou": raced.raced_miou}
    for split, m in (retrain.metrics or {}).items():
        accuracy[split] = {"miou": m.get("miou"), "miou_defects": m.get("miou_defects"), "mf1": m.get("mf1"),
                           "per_class": m.get("per_class"), "defect_level": m.get("defect_level")}
    return accuracy


def _latency(ctx: RunContext, results: RunResults) -> dict[str, Any]:
    measured, best = results.export.stats, results.race.winner
    return {
        "statistic": ctx.cfg.latency_stat,
        "estimated_ms": best.latency_ms,
        "finalist_measured_ms": best.measured_ms,
        "measured_ms": measured.median_ms,
        "measured_min_ms": measured.min_ms,
        "measured_p90_ms": measured.p90_ms,
        "measured_flavor": results.export.flavor,
        "engine_ms": results.engine.engine_ms,
        "engine_note": results.engine.note,
        "fingerprint": results.latency.fingerprint_summary,
    }


def _artefacts(ctx: RunContext, results: RunResults) -> list[Path]:
    out = ctx.out
    artefacts = [
        out / "best_arch.json", out / "search" / "search.json", out / "search" / "pareto.json",
        out / "search" / "pareto.png", out / "latency" / "prior.json", out / "latency" / "prior.png",
        Path(results.retrain.checkpoint), *(Path(f.path) for f in results.export.files.values()),
        out / "splits.json",
    ]
    if results.retrain.pictures:
        artefacts.append(Path(results.retrain.pictures["path"]))
    if results.engine.engine:
        artefacts.append(Path(results.engine.engine))
    return artefacts
