"""Stage 3: the latency-aware evolutionary search; finalists measured end to end."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from autonad_edge.io import atomic_write_json
from autonad_edge.latency.prior import load_prior
from autonad_edge.models.complexity import count_flops, count_params
from autonad_edge.search.config import PipelineError
from autonad_edge.search.evolution import (
    Candidate, EvolutionarySearch, EvolutionConfig, SearchCallbacks, SearchError, pareto_front,
)
from autonad_edge.search.plots import plot_pareto
from autonad_edge.search.signal import SearchSignal
from autonad_edge.search.stages.context import RunContext
from autonad_edge.search.stages.store import StageResult
from autonad_edge.training.calibration import calibrate
from autonad_edge.training.evaluate import image_matrices
from autonad_edge.training.progress import fancy_output_allowed


@dataclass(frozen=True)
class SearchResult(StageResult):
    best: Candidate
    evaluated: int
    pareto: int
    reference_ms: float
    signal: SearchSignal  # could the search see accuracy
    search_json: str
    pareto_png: str
    # The search's size as it ran (a rerun's options may differ); None in runs from before.
    population: int | None = None
    generations: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SearchResult":
        return cls(**{**d, "best": Candidate.from_dict(d["best"]), "signal": SearchSignal.from_dict(d["signal"])})


def search_stage(ctx: RunContext) -> SearchResult:
    cfg, out_dir = ctx.cfg, ctx.out / "search"
    out_dir.mkdir(parents=True, exist_ok=True)
    prior, _ = load_prior(ctx.out / "latency" / "prior.json")
    evo_cfg = EvolutionConfig(
        population=cfg.population, generations=cfg.generations, parents=cfg.parents,
        latency_weight=cfg.latency_weight, latency_budget_ms=cfg.latency_budget_ms,
        params_budget=cfg.params_budget, seed=cfg.seed,
    )
    progress = _GenerationProgress(cfg.generations, quiet=cfg.quiet)
    search = EvolutionarySearch(ctx.space, evo_cfg, _callbacks(ctx, progress), prior=prior,
                                state_path=out_dir / "state.json")
    try:
        with progress:
            search.run()
        best = search.finalize(top=cfg.finalists, latency_tolerance=cfg.latency_tolerance)
    except SearchError as exc:
        raise PipelineError(f"search: {exc}") from None
    candidates = list(search.cache.values())
    for c in candidates:
        c.extra.setdefault("flops", count_flops(c.arch, ctx.space, ctx.data.num_classes, ctx.image_hw))
        c.extra["score"] = search.score(c)
    front = pareto_front(candidates)
    signal = _signal(ctx, best, candidates)
    ctx.log(f"[search] {signal.summary()}")
    atomic_write_json(out_dir / "search.json", {
        "config": asdict(evo_cfg), "reference_ms": search.reference_ms,
        "score": "mIoU - lambda * latency_ms / reference_ms",
        "signal": signal.to_dict(),
        "chosen": best.arch.hash,
        "decision": best.extra.get("decision"),
        "candidates": [c.to_dict() for c in sorted(candidates, key=lambda c: -search.score(c))],
    })
    atomic_write_json(out_dir / "pareto.json", [c.to_dict() for c in front])
    atomic_write_json(ctx.out / "best_arch.json", best.arch.to_dict())
    plot_pareto(candidates, best, out_dir / "pareto.png", title=pareto_title(cfg))
    return SearchResult(
        best=best, evaluated=len(candidates), pareto=len(front), reference_ms=search.reference_ms,
        signal=signal, search_json=str(out_dir / "search.json"), pareto_png=str(out_dir / "pareto.png"),
        population=evo_cfg.population, generations=evo_cfg.generations,
    )


def pareto_title(cfg) -> str:
    return f"Search on {cfg.target}: validation mIoU vs latency"


def _eval_options(ctx: RunContext) -> dict[str, Any]:
    return {"batch_size": ctx.cfg.batch_size, "num_classes": ctx.data.num_classes,
            "tile_size": int(ctx.cfg.image_size)}


def _callbacks(ctx: RunContext, progress: "_GenerationProgress") -> SearchCallbacks:
    supernet, est = ctx.supernet, ctx.estimator

    def evaluate_arch(arch):
        # Scored as it will be delivered: with its val-calibrated decision (retraining ends
        # with the same calibration). It also lets a young supernet whose argmax is still
        # all background show which subnets separate defects at all.
        r = calibrate(supernet, ctx.data.val, arch, **_eval_options(ctx))
        return r.miou_after, r.mf1_after

    return SearchCallbacks(
        evaluate=evaluate_arch,
        latency_ms=est.estimate,
        params=lambda a: count_params(a, ctx.space, ctx.data.num_classes),
        measure_ms=est.measure_together,
        on_generation=progress.generation,
        on_evaluated=progress.evaluated,
    )


def _signal(ctx: RunContext, best: Candidate, candidates: list[Candidate]) -> SearchSignal:
    """The noise of the chosen subnet's val score against the candidates' spread."""
    options = _eval_options(ctx)
    offset = calibrate(ctx.supernet, ctx.data.val, best.arch, **options).background_offset
    matrices = image_matrices(ctx.supernet, ctx.data.val, best.arch, background_offset=offset, **options)
    return SearchSignal.measure(matrices, [c.miou for c in candidates], best.miou, seed=ctx.cfg.seed)


class _GenerationProgress:
    """The search's progress on stderr: a rich bar on an interactive terminal, else one plain
    line a generation; nothing when quiet."""

    def __init__(self, generations: int, quiet: bool) -> None:
        self.generations, self.quiet = generations, quiet
        self._progress = None
        self._task = None
        self._evaluated = 0

    def __enter__(self):
        if fancy_output_allowed(self.quiet):
            self._progress = Progress(
                TextColumn("[bold]search"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(), console=Console(stderr=True),
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
        if self.quiet or not ranked:
            return
        best = ranked[0]
        info = f"{self._evaluated} evaluated; best mIoU {100 * best.miou:.1f}% at {best.latency_ms:.2f} ms"
        if self._progress is not None:
            self._progress.update(self._task, completed=gen, info=info)
        else:
            print(f"search generation {gen}/{self.generations}: {info}", file=sys.stderr, flush=True)
