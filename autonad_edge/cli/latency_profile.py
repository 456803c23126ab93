"""`autonad-edge latency profile | calibrate | estimate | prior`: the latency table of a search
space on a target, the learned correction, subnet estimates and the latency-aware prior.

These commands attach to the `latency` group of `autonad_edge.cli.latency` through
`register(latency_app)`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Annotated, Optional

import typer

from autonad_edge.cli.common import SPACE_HELP, fail, load_space

DEFAULT_TABLE = Path("runs/latency.sqlite")
TARGET_HELP = "Target name from the targets file, or `local` (an in-process ONNX Runtime agent)."
TARGETS_HELP = "Targets TOML (default: $AUTONAD_TARGETS, ./targets.toml, ~/.config/autonad/targets.toml)."


def _image_size(text: str) -> tuple[int, int]:
    """``320`` (square) or ``320x240`` (height x width)."""
    try:
        values = [int(v) for v in text.lower().split("x")]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        fail(f"--image-size takes N or HxW with positive integers, got {text!r}")
    return (values[0], values[1])


def _policy(quick: bool, min_duration_ms: float | None):
    from autonad_edge.latency.profiler import lenient_policy
    from autonad_agent.measure import MeasurementPolicy

    if quick:
        return lenient_policy()
    if min_duration_ms is not None:
        if min_duration_ms <= 0:
            fail("--min-duration-ms must be > 0")
        return MeasurementPolicy(min_duration_ms=min_duration_ms, warmup_ms=min(200.0, min_duration_ms))
    return None


class _Session:
    """Open table + target (+ pool) for one command, with one-line errors."""

    def __init__(self, target: str, targets: Path | None, table: Path) -> None:
        self.target_name, self.targets_path, self.table_path = target, targets, table
        self._stack = None

    def __enter__(self):
        import contextlib

        from autonad_edge.latency.table import LatencyTable, LatencyTableError
        from autonad_edge.latency.targets import TargetError, open_target

        self._stack = contextlib.ExitStack()
        try:
            table = self._stack.enter_context(LatencyTable(self.table_path))
            pool = self._stack.enter_context(open_target(self.target_name, self.targets_path, table=table))
        except (TargetError, LatencyTableError, OSError) as exc:
            self._stack.close()
            fail(str(exc))
        return table, pool

    def __exit__(self, *exc_info):
        assert self._stack is not None
        self._stack.close()


# Options every `latency` table command takes: one definition, one help text.
TargetOpt = Annotated[str, typer.Option(help=TARGET_HELP)]
TargetsOpt = Annotated[Optional[Path], typer.Option("--targets", help=TARGETS_HELP)]
SpaceOpt = Annotated[str, typer.Option(help=SPACE_HELP)]
ImageSizeOpt = Annotated[str, typer.Option(help="Input size: N (square) or HxW.")]
NumClassesOpt = Annotated[int, typer.Option(help="Output classes (background included).")]


def _errors():
    from autonad_edge.latency.client import AgentError
    from autonad_edge.latency.estimator import EstimateError
    from autonad_edge.latency.pool import PoolExhausted
    from autonad_edge.latency.table import LatencyTableError

    return (AgentError, EstimateError, PoolExhausted, LatencyTableError, RuntimeError)


def profile_command(
    target: TargetOpt = "local",
    targets: TargetsOpt = None,
    space: SpaceOpt = "default",
    image_size: ImageSizeOpt = "320",
    num_classes: NumClassesOpt = 6,
    table: Path = typer.Option(DEFAULT_TABLE, help="Latency table (SQLite); created if missing."),
    sample: Optional[int] = typer.Option(
        None, help="Only the units of this many random subnets (others are measured on demand later)."
    ),
    seed: int = typer.Option(0, help="Seed for --sample."),
    quick: bool = typer.Option(False, "--quick", help="A few timed runs per unit (fast, noisier)."),
    min_duration_ms: Optional[float] = typer.Option(None, help="Timed duration per unit in ms [agent default: 1000]."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be measured, measure nothing."),
) -> None:
    """Measure every unit a search over the space can hit on the target (what the table lacks)."""
    from rich.console import Console

    from autonad_edge.latency.blocks import count_by_kind, dedup, space_units, units_of
    from autonad_edge.latency.profiler import missing_units, profile, target_key

    the_space = load_space(space)
    size = _image_size(image_size)
    policy = _policy(quick, min_duration_ms)
    console = Console(stderr=True)
    with _Session(target, targets, table) as (the_table, pool):
        try:
            key = target_key(pool)
            console.print(f"target [bold]{target}[/]: {key.summary()}", highlight=False)
            if dry_run:
                if sample is None:
                    wanted = space_units(the_space, num_classes, size)
                else:
                    rng = random.Random(seed)
                    wanted = dedup(u for _ in range(sample)
                                   for u in units_of(the_space.sample(rng), the_space, num_classes, size))
                todo = missing_units(wanted, the_table, key)
                kinds = ", ".join(f"{k} {n}" for k, n in count_by_kind(todo).items()) or "nothing"
                typer.echo(f"{len(wanted)} units, {len(wanted) - len(todo)} in the table; would measure {len(todo)} ({kinds})")
                return
            report = profile(the_space, pool, the_table, size, num_classes, sample=sample, seed=seed,
                             policy=policy, progress=True)
        except _errors() as exc:
            fail(str(exc).splitlines()[0])
    typer.echo(f"{table}: {report.summary()}")
    for unit, why in report.failed[:10]:
        typer.echo(f"  failed: {unit.describe()}: {why}")
    if report.failed:
        raise typer.Exit(1)


STAT_HELP = ("Statistic summed and predicted: median, or min (the interference-free latency: "
             "the steadiest figure on a shared or busy device), mean, p90. A correction is fitted per statistic.")


def _check_stat(stat: str) -> None:
    from autonad_edge.latency.estimator import STATS

    if stat not in STATS:
        fail(f"--stat {stat!r}: choose one of {', '.join(STATS)}")


def calibrate_command(
    target: TargetOpt = "local",
    targets: TargetsOpt = None,
    space: SpaceOpt = "default",
    image_size: ImageSizeOpt = "320",
    num_classes: NumClassesOpt = 6,
    table: Path = typer.Option(DEFAULT_TABLE, help="Latency table (SQLite)."),
    subnets: int = typer.Option(20, help="Random subnets to measure end to end."),
    seed: int = typer.Option(1000, help="Sampling seed."),
    quick: bool = typer.Option(False, "--quick", help="A few timed runs per model (fast, noisier)."),
    stat: str = typer.Option("median", help=STAT_HELP),
) -> None:
    """Measure random subnets end to end and fit the estimator's correction for the target.

    The correction is saved next to the table, keyed by the target's fingerprint.
    """
    from autonad_edge.latency.estimator import LatencyEstimator, accuracy_report

    _check_stat(stat)
    the_space = load_space(space)
    size = _image_size(image_size)
    if subnets < 2:
        fail("--subnets must be at least 2")
    policy = _policy(quick, None)
    rng = random.Random(seed)
    archs = [the_space.sample(rng) for _ in range(subnets)]
    with _Session(target, targets, table) as (the_table, pool):
        try:
            est = LatencyEstimator(the_table, the_space, size, num_classes, pool=pool, policy=policy,
                                   end_to_end_policy=policy, correct=False, stat=stat)
            from rich.progress import track

            measured = [est.measure_end_to_end(a) for a in track(archs, description="measuring subnets end to end")]
            raw = [est.raw_sum(a) for a in archs]
            correction = est.fit(list(zip(archs, measured)))
        except _errors() as exc:
            fail(str(exc).splitlines()[0])
    before, after = accuracy_report(raw, measured), accuracy_report([correction.apply(est.features(a)) for a in archs], measured)
    typer.echo(f"fitted on {len(archs)} subnets (ridge {correction.ridge:g}); saved to {est.corrections_path}")
    typer.echo(f"  plain sum: RMSPE {before['rmspe_pct']:.1f}%, within 10% {100 * before['within_10pct']:.0f}%")
    typer.echo(f"  corrected: RMSPE {after['rmspe_pct']:.1f}% (leave-one-out {correction.loo_rmspe:.1f}%), "
               f"within 10% {100 * after['within_10pct']:.0f}%")


def estimate_command(
    arch_path: Path = typer.Argument(..., help="Architecture JSON file."),
    target: TargetOpt = "local",
    targets: TargetsOpt = None,
    space: SpaceOpt = "default",
    image_size: ImageSizeOpt = "320",
    num_classes: NumClassesOpt = 6,
    table: Path = typer.Option(DEFAULT_TABLE, help="Latency table (SQLite)."),
    measure: bool = typer.Option(False, "--measure", help="Also export the subnet and measure it end to end."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    stat: str = typer.Option("median", help=STAT_HELP),
) -> None:
    """Estimated latency of an architecture on the target (per-unit breakdown)."""
    from autonad_edge.latency.estimator import LatencyEstimator
    from autonad_edge.space import ArchError, load_arch

    _check_stat(stat)
    the_space = load_space(space)
    size = _image_size(image_size)
    try:
        arch = load_arch(str(arch_path), the_space)
    except ArchError as exc:
        fail(f"{arch_path}: {exc}")
    with _Session(target, targets, table) as (the_table, pool):
        try:
            est = LatencyEstimator(the_table, the_space, size, num_classes, pool=pool, stat=stat)
            parts = est.breakdown(arch)
            estimate = est.estimate(arch)
            measured = est.measure_end_to_end(arch, reuse=False) if measure else None
        except _errors() as exc:
            fail(str(exc).splitlines()[0])
    raw = sum(ms for _, ms in parts)
    if as_json:
        print(json.dumps({
            "arch": arch.hash, "summary": arch.summary(), "statistic": stat, "estimate_ms": estimate, "sum_ms": raw,
            "corrected": est.correction is not None, "measured_ms": measured,
            "fingerprint": est.key.fingerprint.hash, "units": [
                {"label": u.label, "unit": u.describe(), "signature": u.key, "ms": ms} for u, ms in parts
            ],
        }, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table("where", "unit", "ms", title=f"{arch.summary()} on {target} ({est.key.fingerprint.hash})")
    for u, ms in parts:
        t.add_row(u.label, u.describe(), f"{ms:.3f}")
    console = Console()
    console.print(t)
    line = f"sum {raw:.3f} ms   estimate {estimate:.3f} ms ({'corrected' if est.correction else 'no correction fitted'})"
    if measured is not None:
        line += f"   measured {measured:.3f} ms ({100 * (estimate - measured) / measured:+.1f}%)"
    console.print(line, highlight=False)


def prior_command(
    target: TargetOpt = "local",
    targets: TargetsOpt = None,
    out: Path = typer.Option(..., "--out", help="Write the prior JSON here (ChoicePrior + metadata)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw the prior as a heatmap PNG."),
    method: str = typer.Option("softmax", help="softmax (of measured operator latency) or fastest (top-k% subnets)."),
    temperature: float = typer.Option(0.5, help="softmax: temperature on latency relative to the position's mean."),
    mix: float = typer.Option(0.1, help="Weight of the uniform distribution mixed in (keeps every p > 0)."),
    samples: int = typer.Option(1000, help="fastest: subnets to sample."),
    top: float = typer.Option(0.1, help="fastest: share of the fastest subnets to count (0.1 = 10%)."),
    seed: int = typer.Option(0, help="fastest: sampling seed."),
    space: SpaceOpt = "default",
    image_size: ImageSizeOpt = "320",
    num_classes: NumClassesOpt = 6,
    table: Path = typer.Option(DEFAULT_TABLE, help="Latency table (SQLite)."),
    quick: bool = typer.Option(False, "--quick", help="Units missing from the table: a few timed runs each."),
    offline: Optional[str] = typer.Option(
        None, "--offline", metavar="FINGERPRINT",
        help="Do not contact the target: use the table's entries of this device fingerprint (hash or "
             "prefix; 'only' when the table holds one device). --target then only labels the result.",
    ),
    backend: str = typer.Option("onnxruntime", help="With --offline: the backend of the table entries."),
    precision: str = typer.Option("fp32", help="With --offline: the precision of the table entries."),
) -> None:
    """Build the latency-aware prior for the search from the target's latency table."""
    from autonad_edge.latency.blocks import space_units
    from autonad_edge.latency.estimator import LatencyEstimator
    from autonad_edge.latency.prior import build_prior
    from autonad_edge.latency.profiler import missing_units, profile

    if method not in ("softmax", "fastest"):
        fail(f"--method must be softmax or fastest, got {method!r}")
    if temperature <= 0:
        fail("--temperature must be > 0")
    if not 0 <= mix <= 1:
        fail("--mix must be between 0 and 1")
    if not 0 < top <= 1:
        fail("--top must be in (0, 1]")
    the_space = load_space(space)
    size = _image_size(image_size)
    policy = _policy(quick, None)
    if offline is not None:
        from autonad_edge.latency.estimator import stored_key
        from autonad_edge.latency.table import LatencyTable, LatencyTableError

        if not table.is_file():
            fail(f"latency table {table} does not exist")
        with LatencyTable(table) as the_table:
            try:
                key = stored_key(the_table, backend, precision, None if offline == "only" else offline)
                est = LatencyEstimator(the_table, the_space, size, num_classes, key=key)
                prior, meta = build_prior(est, method=method, temperature=temperature, mix=mix, samples=samples,
                                          top=top, seed=seed, target=target)
            except (LookupError, LatencyTableError, ValueError) as exc:
                fail(str(exc).splitlines()[0])
        _write_prior(out, plot, prior, meta, the_space)
        return
    with _Session(target, targets, table) as (the_table, pool):
        try:
            est = LatencyEstimator(the_table, the_space, size, num_classes, pool=pool, policy=policy)
            todo = missing_units(space_units(the_space, num_classes, size), the_table, est.key)
            if todo:  # measure what the table lacks first, with a progress bar
                typer.echo(f"{len(todo)} units of the space are not in the table for this target; profiling them")
                profile(the_space, pool, the_table, size, num_classes, policy=policy, progress=True)
            prior, meta = build_prior(est, method=method, temperature=temperature, mix=mix, samples=samples,
                                      top=top, seed=seed, target=target)
        except (_errors() + (ValueError,)) as exc:
            fail(str(exc).splitlines()[0])
    _write_prior(out, plot, prior, meta, the_space)


def _write_prior(out: Path, plot: Path | None, prior, meta, space) -> None:
    from autonad_edge.latency.prior import plot_prior, plot_title, save_prior

    save_prior(out, prior, meta)
    typer.echo(f"wrote {out}")
    if plot is not None:
        title, subtitle = plot_title(meta)
        plot_prior(prior, space, plot, title=title, subtitle=subtitle)
        typer.echo(f"wrote {plot}")


def register(latency_app: typer.Typer) -> None:
    """Add `profile`, `calibrate`, `estimate` and `prior` to the `latency` group."""
    latency_app.command("profile")(profile_command)
    latency_app.command("calibrate")(calibrate_command)
    latency_app.command("estimate")(estimate_command)
    latency_app.command("prior")(prior_command)
