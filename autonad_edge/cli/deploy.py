"""`autonad-edge export`, `build-engine` and `bundle`: ship a trained network.

`export` turns a checkpoint into an ONNX model (portable: standard ops for any ONNX runtime;
tensorrt: spatial shifts as `autonad::SpatialShift` plugin nodes), simplified, with its op
counts, checked with ONNX's checker and (portable) against torch with ONNX Runtime, and
optionally a deployment bundle. `build-engine` has the target's agent build a TensorRT engine.
`bundle` puts models, an engine, the plugin sources and an inference example in one directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from autonad_edge.cli.common import fail

# Exit code when a target cannot build an engine (no TensorRT, plugin missing, model rejected).
EXIT_NO_ENGINE = 3
DEFAULT_IMAGE_SIZE = (320, 320)


def _print_ops(report) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"{report.nodes} nodes ({len(report.ops)} op types), {report.initializers} initializers, "
                  f"{report.parameters:,} parameters", highlight=False)
    table = Table("op", "count")
    for op, n in sorted(report.ops.items(), key=lambda kv: (-kv[1], kv[0])):
        table.add_row(op, str(n))
    console.print(table)


def export_command(
    checkpoint: Path = typer.Option(..., help="Checkpoint: a retrained subnet, or a supernet with --arch."),
    out: Path = typer.Option(..., help="ONNX file to write."),
    arch: Path = typer.Option(None, help="Architecture JSON: which subnet to extract from a supernet checkpoint."),
    flavor: str = typer.Option(
        "portable", help="portable: standard ONNX ops (any runtime); tensorrt: SpatialShift plugin nodes."
    ),
    image_size: tuple[int, int] = typer.Option(
        (0, 0), show_default=False,
        help="Input height and width (default: the checkpoint's training size, else 320 320).",
    ),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="Make the batch dimension symbolic."),
    opset: int = typer.Option(18, help="ONNX opset (17 or newer)."),
    verify: bool = typer.Option(True, help="portable: compare ONNX Runtime with torch on a random input."),
    bundle: Path = typer.Option(None, help="Also write a deployment bundle (model, manifest, plugin, infer.py) here."),
    force: bool = typer.Option(False, "--force", help="Replace an existing bundle at --bundle (only a bundle)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Export a checkpoint to ONNX and report its op counts."""
    import onnx

    from autonad_edge.export import FLAVORS, ExportError, export_network, save_model
    from autonad_edge.export.onnx_export import ORT_TOLERANCE, onnxruntime_error
    from autonad_edge.export.graph import graph_report
    from autonad_edge.space import ArchError

    if flavor not in FLAVORS:
        fail(f"--flavor must be one of {', '.join(FLAVORS)}, got {flavor!r}")
    if opset < 17:
        fail(f"--opset must be 17 or newer, got {opset}")
    if image_size != (0, 0) and min(image_size) < 1:
        fail(f"--image-size must be two positive integers, got {image_size[0]} {image_size[1]}")
    if bundle is not None:  # refused before the (slow) export, not after it
        from autonad_edge.export.bundle import BundleError, check_bundle_dir

        if out.resolve().is_relative_to(bundle.resolve()):
            fail(f"--out {out} is inside --bundle {bundle}, which the bundle replaces; "
                 "write the ONNX elsewhere (the bundle gets its own copy)")
        try:
            check_bundle_dir(bundle, force)
        except BundleError as exc:
            fail(str(exc))
    try:
        from autonad_edge.training.checkpoint import CheckpointError, load_model
    except ImportError as exc:  # the training package is another issue's; keep export importable
        fail(f"cannot load checkpoints in this install ({exc})")
    try:
        model, info = load_model(checkpoint, arch)
    except (CheckpointError, ArchError) as exc:
        fail(str(exc))
    size = tuple(image_size) if image_size != (0, 0) else (info.image_size or DEFAULT_IMAGE_SIZE)
    try:
        # The checkpoint's class names and training scale travel in the model's metadata, so
        # `bundle` without --checkpoint preprocesses and names classes as training did.
        onnx_model = export_network(model, size, flavor, dynamic_batch, opset=opset,
                                    class_names=info.class_names, max_side=info.max_side,
                                    squash=info.squash)
        onnx.checker.check_model(onnx_model, full_check=True)
    except ExportError as exc:
        fail(str(exc))
    except onnx.checker.ValidationError as exc:
        fail(f"the exported model does not pass onnx.checker: {' '.join(str(exc).split())[:300]}")
    try:
        sha256 = save_model(onnx_model, out)
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror}")
    report = graph_report(onnx_model)

    max_error = None
    if verify and flavor == "portable":
        max_error = onnxruntime_error(model, onnx_model, size)
        if not max_error <= ORT_TOLERANCE:
            fail(f"wrote {out}, but ONNX Runtime differs from torch by {max_error:.3g} (max abs)", code=1)

    manifest_path = None
    if bundle is not None:
        from autonad_edge.export.bundle import write_bundle

        try:
            manifest_path = write_bundle(
                bundle, out, manifest={"arch": info.arch, "classes": info.class_names,
                                       "num_classes": info.num_classes, "checkpoint": str(checkpoint),
                                       "max_side": info.max_side,
                                       "squash": info.squash},
                overwrite=force,
            )
        except BundleError as exc:
            fail(str(exc))

    shape = report.inputs[0]["shape"] if report.inputs else []
    summary = {
        "onnx": str(out), "sha256": sha256, "bytes": out.stat().st_size, "flavor": flavor, "opset": opset,
        "arch_hash": info.arch.hash if info.arch else None, "arch_summary": info.arch.summary() if info.arch else None,
        "input": report.inputs[0] if report.inputs else None, "output": report.outputs[0] if report.outputs else None,
        "nodes": report.nodes, "ops": report.ops, "initializers": report.initializers,
        "parameters": report.parameters, "ort_max_abs_error": max_error,
        "bundle": str(manifest_path.parent) if manifest_path else None,
    }
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    typer.echo(
        f"wrote {out} ({flavor}, opset {opset}, {summary['bytes'] / 1e6:.1f} MB, sha256 {sha256[:16]}); "
        f"{info.arch.summary() if info.arch else ''}; input {report.inputs[0]['name']} {shape}"
    )
    _print_ops(report)
    if max_error is not None:
        typer.echo(f"onnxruntime matches torch: max abs error {max_error:.2e}")
    if flavor == "tensorrt":
        typer.echo("tensorrt flavour: needs the SpatialShift plugin (TensorRT); "
                   "onnxruntime cannot run it, use --flavor portable for that")
    if manifest_path is not None:
        typer.echo(f"wrote bundle {manifest_path.parent}")


def build_engine_command(
    target: str = typer.Option(..., help="Target name from the targets file, or 'local'."),
    onnx_path: Path = typer.Option(..., "--onnx", help="ONNX model with static shapes (tensorrt flavour for the plugin)."),
    out: Path = typer.Option(..., help="Engine file to write (its build record goes to <out>.json)."),
    fp16: bool = typer.Option(False, "--fp16", help="Build an fp16 engine (else fp32)."),
    targets: Path = typer.Option(None, help="Targets TOML file (default: $AUTONAD_TARGETS, ./targets.toml, ~/.config)."),
    connect_timeout: float = typer.Option(5.0, help="Seconds to wait for each agent."),
) -> None:
    """Have the target's agent build a TensorRT engine (exit 3 if it cannot; no file written)."""
    from autonad_edge.export.engine import EngineBuildError, build_engine, check_engine_out

    if not onnx_path.is_file():
        fail(f"{onnx_path}: no such ONNX file")
    try:  # before the target is contacted: a build takes minutes
        check_engine_out(onnx_path, out)
    except EngineBuildError as exc:
        fail(f"--out {exc}")
    try:
        result = build_engine(target, onnx_path, out, fp16=fp16, targets_path=targets,
                              connect_timeout_s=connect_timeout)
    except EngineBuildError as exc:
        fail(str(exc), code=EXIT_NO_ENGINE)
    fields = result.record.get("fields", {})
    extra = ", ".join(
        f"{k} {fields[k]}" for k in ("device", "runtime_version", "precision", "latency_ms_median") if fields.get(k)
    )
    typer.echo(f"wrote {out} ({result.size / 1e6:.1f} MB, sha256 {result.sha256[:16]}, from {result.agent}"
               f"{'; ' + extra if extra else ''}); record {result.record_path}")
    if result.warning:
        typer.echo(f"warning: {result.warning}", err=True)


def bundle_command(
    onnx_paths: list[Path] = typer.Option(..., "--onnx", help="ONNX model(s) from `export`; repeat for both flavours."),
    out: Path = typer.Option(..., help="Bundle directory to write."),
    engine: Path = typer.Option(None, help="TensorRT engine from `build-engine` (its <engine>.json record is read)."),
    checkpoint: Path = typer.Option(
        None, help="Checkpoint the models came from: class names and training scale (else from the models)."),
    arch: Path = typer.Option(None, help="Architecture JSON, with a supernet --checkpoint."),
    force: bool = typer.Option(False, "--force", help="Replace an existing bundle at --out (only a bundle)."),
) -> None:
    """Write a deployment bundle: models, engine, manifest, plugin sources, infer.py."""
    from autonad_edge.export.bundle import BundleError, read_bundle, write_bundle

    if arch is not None and checkpoint is None:
        # --arch picks a subnet of a supernet checkpoint; an exported model records its own.
        fail("--arch needs the supernet --checkpoint it selects from; without one the models' own "
             "architecture (their autonad.arch metadata) is used")
    manifest = {}
    if checkpoint is not None:
        from autonad_edge.space import ArchError
        from autonad_edge.training.checkpoint import CheckpointError, checkpoint_info, load_checkpoint

        try:
            data = load_checkpoint(checkpoint)
            from autonad_edge.space import load_arch

            info = checkpoint_info(data, checkpoint)
            wanted = load_arch(str(arch), info.space) if arch is not None else info.arch
        except (CheckpointError, ArchError) as exc:
            fail(str(exc))
        manifest = {"classes": info.class_names, "num_classes": info.num_classes, "checkpoint": str(checkpoint),
                    # infer.py's training scale: the long-side cap, or squashed to the input size
                    "max_side": info.max_side, "squash": info.squash}
        if wanted is not None:
            manifest["arch"] = wanted
    try:
        path = write_bundle(out, onnx_paths[0], engine, manifest, extra_onnx=onnx_paths[1:], overwrite=force)
        written = read_bundle(out)
    except BundleError as exc:
        fail(str(exc))
    files = [m["file"] for m in written["models"]] + ([written["engine"]["file"]] if written["engine"] else [])
    plugin = " + plugin" if written.get("plugin") else ""
    typer.echo(f"wrote bundle {path.parent}: {', '.join(files)}{plugin} + infer.py")


def register(app: typer.Typer) -> None:
    """Add this group's commands to the main app."""
    app.command("export")(export_command)
    app.command("build-engine")(build_engine_command)
    app.command("bundle")(bundle_command)
