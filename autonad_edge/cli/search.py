"""`autonad-edge search`: the main job, from images and a target to a deployable model."""

from __future__ import annotations

from pathlib import Path

import typer

from autonad_edge.cli.common import fail


from autonad_edge.search.config import default_text as _d


def search(
    config_file: Path = typer.Option(None, "--config", help="A run's config.json (or any such JSON) to start from; options given here override its values."),
    target: str = typer.Option(None, help=f"Target name from the targets file; 'local' = an in-process ONNX Runtime agent on this CPU (default: {_d('target')})."),
    targets: Path = typer.Option(None, help="Targets TOML (default: $AUTONAD_TARGETS, ./targets.toml, then ~/.config/autonad/targets.toml)."),
    local_threads: int = typer.Option(None, help="ONNX Runtime threads of the 'local' agent (default: $AUTONAD_LOCAL_THREADS, else all CPUs; 1 is steadier on a busy host)."),
    data: Path = typer.Option(None, help="Dataset root; omit for the embedded synthetic defect set."),
    format: str = typer.Option(None, "--format", help=f"Dataset format: synthetic, mt (Magnetic-tile) or voc (default: detected from --data; without it, {_d('format')})."),
    out: Path = typer.Option(None, help=f"Output directory; rerun the same command to resume (default: {_d('out')})."),
    preset: str = typer.Option(None, help=f"Budgets: tiny (seconds), cpu (minutes on a laptop), paper (the paper's settings, GPU) (default: {_d('preset')})."),
    space: str = typer.Option(None, help=f"Search space: tiny, small, default, paper or a JSON file (default: {_d('space')})."),
    image_size: int = typer.Option(None, help=f"Network input side: training crops, inference tiles and timed latency (default: {_d('image_size')})."),
    time_budget: float = typer.Option(None, help=f"Minutes for the whole run: epochs and search size are planned from costs measured on this machine; 0 = the preset's epochs (default: {_d('time_budget')})."),
    max_side: int = typer.Option(None, help=f"Training scale: images are scaled down to at most this long side, aspect kept; giving it turns off the scale chosen from the masks (--min-defect-width) (default: {_d('max_side')}, a cap)."),
    min_defect_width: float = typer.Option(None, help=f"Choose the training scale from the masks: scale down (below the --max-side cap, never below the network input) while the thinnest defect class's median region stays this many pixels wide; 0 = off; not with the paper preset's fixed resize (default: {_d('min_defect_width')})."),
    supernet_epochs: int = typer.Option(None, help=f"Supernet training epochs (default: {_d('supernet_epochs')})."),
    retrain_epochs: int = typer.Option(None, help=f"Retraining epochs of the chosen subnet (default: {_d('retrain_epochs')})."),
    batch_size: int = typer.Option(None, help=f"Batch size (default: {_d('batch_size')})."),
    population: int = typer.Option(None, help=f"Evolution population (default: {_d('population')})."),
    generations: int = typer.Option(None, help=f"Evolution generations (default: {_d('generations')})."),
    latency_weight: float = typer.Option(None, "--lambda", help=f"Score = mIoU - lambda * latency / reference latency (unit-free) (default: {_d('latency_weight')})."),
    latency_budget_ms: float = typer.Option(None, help="Hard latency budget in ms on the target."),
    latency_stat: str = typer.Option(None, help=f"Latency statistic the search predicts and scores: min (interference-free, the steadiest) or median, mean, p90 (default: {_d('latency_stat')})."),
    latency_tolerance: float = typer.Option(None, help=f"Each finalist's measured latency is known to +- this share; those whose ranges overlap the best-scoring one's are compared on accuracy (default: {_d('latency_tolerance')})."),
    params_budget: int = typer.Option(None, help="Hard parameter budget."),
    race_entrants: int = typer.Option(None, help=f"When the search cannot tell its candidates apart by accuracy, retrain this many briefly and choose again; below 2 = off (default: {_d('race_entrants')})."),
    sharing: str = typer.Option(None, help=f"Supernet weight sharing: cross (the paper's), entangled, classical (default: {_d('sharing')})."),
    table: Path = typer.Option(None, help=f"Latency table (SQLite), shared across runs (default: {_d('table')})."),
    export_cache: str = typer.Option(None, help="Exported-block cache: a directory, 'table' (next to --table) or 'off' (default: $AUTONAD_EXPORT_CACHE, else ~/.cache/autonad-edge/exports)."),
    seed: int = typer.Option(None, help=f"Random seed; a run is deterministic for a seed (default: {_d('seed')})."),
    device: str = typer.Option(None, help=f"Training device: auto, cpu, cuda (default: {_d('device')})."),
    quiet: bool = typer.Option(None, "--quiet/--no-quiet", help="No progress bars."),
) -> None:
    """Search, retrain and export a defect-segmentation network for a target device.

    With no arguments: the embedded synthetic defect set, the local CPU as target, the 'cpu'
    preset. Writes report.md/report.json, best_arch.json, the Pareto plot, the latency prior
    heatmap, ONNX models and (on TensorRT targets) an engine under --out.
    """
    from autonad_edge.errors import AutonadError
    from autonad_edge.search.pipeline import PipelineConfig, PipelineError, run_search

    try:
        base = PipelineConfig.load(config_file) if config_file else PipelineConfig()
    except PipelineError as exc:
        fail(str(exc))
    if data and not format and not config_file:  # the layout tells: MT_<Class>/ folders or JPEGImages/
        from autonad_edge.data.dataset import detect_format

        try:
            format = detect_format(data)
        except AutonadError as exc:
            fail(str(exc))
    config = base.with_options(
        out=str(out) if out else None, data=str(data) if data else None, format=format, target=target,
        targets_path=str(targets) if targets else None, local_threads=local_threads,
        table=str(table) if table else None, preset=preset, space=space, image_size=image_size,
        supernet_epochs=supernet_epochs, retrain_epochs=retrain_epochs, batch_size=batch_size,
        population=population, generations=generations, sharing=sharing, latency_weight=latency_weight,
        latency_budget_ms=latency_budget_ms, latency_stat=latency_stat, params_budget=params_budget, seed=seed,
        latency_tolerance=latency_tolerance, device=device, quiet=quiet, time_budget=time_budget, export_cache=export_cache,
        max_side=max_side, min_defect_width=min_defect_width, race_entrants=race_entrants,
    )
    try:
        outcome = run_search(config, log=lambda msg: typer.echo(msg, err=True))
    except AutonadError as exc:  # the pipeline's own, and a stage's (e.g. a checkpoint that cannot resume)
        fail(str(exc))
    except KeyboardInterrupt:
        fail(f"interrupted; rerun the same command to resume from {config.out}", code=130)
    summary = outcome.summary()
    typer.echo(summary.result)
    for note in summary.notes:
        typer.echo(f"note: {note}", err=True)
    for warning in summary.warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"report: {outcome.report_md}")


def register(app: typer.Typer) -> None:
    app.command("search")(search)
