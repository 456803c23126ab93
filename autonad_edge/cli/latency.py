"""`autonad-edge targets ...` and `autonad-edge latency ...` commands.

`latency_app` is the `latency` group; `autonad_edge.cli.latency_profile` adds profile,
calibrate, estimate and prior to it through its own `register(latency_app)`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from autonad_edge.cli.common import fail

targets_app = typer.Typer(help="Latency targets: named groups of latency agents.", no_args_is_help=True)
latency_app = typer.Typer(help="Measure latency on a target device.", no_args_is_help=True)

TARGETS_OPTION = typer.Option(
    None, "--targets", help="Targets TOML (default: $AUTONAD_TARGETS, ./targets.toml, ~/.config/autonad/targets.toml)."
)


def _parse_input(text: str):  # -> TensorSpec
    """NAME:1x3x224x224[:dtype] -> TensorSpec."""
    from autonad_edge.latency import TensorSpec

    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise typer.BadParameter(f"expected NAME:DIMS[:DTYPE] like x:1x3x224x224, got {text!r}")
    try:
        shape = tuple(int(d) for d in parts[1].lower().split("x"))
        return TensorSpec(parts[0], shape, parts[2] if len(parts) == 3 else "float32")
    except (ValueError, TypeError) as exc:
        raise typer.BadParameter(f"bad input {text!r}: {exc}") from None


@targets_app.command("list")
def targets_list(targets: Optional[Path] = TARGETS_OPTION) -> None:
    """List the configured targets (and the built-in `local`)."""
    from rich.console import Console
    from rich.table import Table

    from autonad_edge.latency.targets import TargetError, find_targets_file, load_targets

    try:
        path = find_targets_file(targets)
        configs = load_targets(targets)
    except TargetError as exc:
        fail(str(exc))
    table = Table(title=f"targets ({path or 'no targets file'})")
    for column in ("name", "agents", "backend", "precision", "auth", "tls"):
        table.add_column(column)
    table.add_row("local", "in-process", "onnxruntime", "fp32", "random token", "no")
    for name, config in sorted(configs.items()):
        table.add_row(
            name, ", ".join(config.agents), config.backend or "(agent default)", config.precision,
            str(config.token_file) if config.token_file else "none", str(config.tls_ca) if config.tls_ca else "no",
        )
    Console().print(table)


@targets_app.command("check")
def targets_check(
    name: str = typer.Argument(..., help="Target name (or `local`)."),
    targets: Optional[Path] = TARGETS_OPTION,
    timeout: float = typer.Option(5.0, help="Seconds to wait for each agent."),
) -> None:
    """Check that every agent of a target is reachable, accepts the token, and what it offers."""
    from autonad_edge.latency.targets import TargetError, check_target

    try:
        checks = check_target(name, targets, timeout_s=timeout)
    except TargetError as exc:
        fail(str(exc))
    for check in checks:
        if not check.ok:
            typer.echo(f"FAIL {check.address}: reachable={check.reachable} authenticated={check.authenticated} "
                       f"({check.error or check.health})")
            continue
        info = check.device_info
        assert info is not None
        typer.echo(f"OK   {check.address}: agent {info.agent_version}, default backend {info.default_backend}, "
                   f"auth {'on' if info.auth_required else 'OFF'}, TLS {'on' if info.tls else 'off'}")
        for backend in info.backends:
            if backend.available:
                caps = f"precisions {','.join(backend.precisions) or '?'}, engines {'yes' if backend.can_build_engine else 'no'}"
                fingerprint = f", fingerprint {backend.fingerprint.summary()}" if backend.fingerprint else ""
                typer.echo(f"       {backend.name}: {backend.reason}; {caps}{fingerprint}")
            else:
                typer.echo(f"       {backend.name}: unavailable ({backend.reason})")
    if not all(check.ok for check in checks):
        raise typer.Exit(1)


@latency_app.command("measure")
def latency_measure(
    onnx: Path = typer.Option(..., "--onnx", exists=True, dir_okay=False, help="ONNX model to measure."),
    target: str = typer.Option("local", help="Target name from the targets file, or `local`."),
    targets: Optional[Path] = TARGETS_OPTION,
    input_specs: Optional[List[str]] = typer.Option(
        None, "--input", help="NAME:1x3x224x224[:dtype]; repeat per input (default: the model's static shapes)."
    ),
    min_runs: Optional[int] = typer.Option(None, help="Minimum timed runs [default: 50]."),
    min_duration_ms: Optional[float] = typer.Option(None, help="Minimum timed duration in ms [default: 1000]."),
    max_cv: Optional[float] = typer.Option(
        None, help="Repeat a round noisier than this coefficient of variation [default: 0.1]."
    ),
    table: Optional[Path] = typer.Option(None, help="Also record the result in this latency table (SQLite)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a summary."),
) -> None:
    """Measure one ONNX model on a target and print its latency statistics."""
    from autonad_edge.latency import AgentError, LatencyTable, MeasurementPolicy, PoolExhausted, open_target
    from autonad_edge.latency.targets import TargetError

    inputs = [_parse_input(text) for text in input_specs or []]
    given = {"min_runs": min_runs, "min_duration_ms": min_duration_ms, "max_cv": max_cv}
    try:
        policy = MeasurementPolicy.from_wire(**{k: v for k, v in given.items() if v is not None})
    except ValueError as exc:
        fail(f"invalid measurement policy: {exc}")
    latency_table = LatencyTable(table) if table else None
    try:
        with open_target(target, targets, table=latency_table) as pool:
            measurement = pool.measure(onnx.read_bytes(), inputs or None, policy=policy)
    except (TargetError, AgentError, PoolExhausted) as exc:
        fail(str(exc))
    finally:
        if latency_table is not None:
            latency_table.close()
    if as_json:
        json.dump({"target": target, **measurement.to_dict()}, sys.stdout)
        sys.stdout.write("\n")
        return
    m = measurement
    flag = "" if m.stable else f"  [UNSTABLE: cv {m.cv:.3f} > {m.policy.max_cv}]"
    typer.echo(
        f"{onnx.name} on {target} ({m.agent}, {m.backend}/{m.precision}): median {m.median_ms:.3f} ms, "
        f"p90 {m.p90_ms:.3f} ms, p99 {m.p99_ms:.3f} ms, mean {m.mean_ms:.3f} +/- {m.std_ms:.3f} ms, "
        f"{m.runs} runs, {m.outliers} outliers{' (cached)' if m.cached else ''}{flag}"
    )
    typer.echo(f"device {m.fingerprint.summary()}")


def register(app: typer.Typer) -> None:
    """Add this group's commands to the main app."""
    from autonad_edge.cli import latency_profile

    latency_profile.register(latency_app)
    app.add_typer(targets_app, name="targets")
    app.add_typer(latency_app, name="latency")
