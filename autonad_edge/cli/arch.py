"""`autonad-edge arch`: sample, inspect and validate architectures."""

from __future__ import annotations

import json
import random
from pathlib import Path

import typer

from autonad_edge.cli.common import SPACE_HELP, fail, load_space, space_hint

arch_app = typer.Typer(help="Sample, show and validate architectures of the search space.", no_args_is_help=True)


@arch_app.command("sample")
def sample(
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same architecture."),
    out: Path = typer.Option(None, help="Write the architecture JSON here (else print it)."),
    space: str = typer.Option("default", help=SPACE_HELP),
) -> None:
    """Sample an architecture uniformly from the search space."""
    arch = load_space(space).sample(random.Random(seed))
    if out is None:
        print(arch.to_json())
        return
    _write(out, arch.to_json() + "\n")
    typer.echo(f"wrote {out}  ({arch.summary()}, hash {arch.hash})")


@arch_app.command("show")
def show(
    path: Path = typer.Argument(..., help="Architecture JSON file."),
    space: str = typer.Option("default", help=SPACE_HELP),
    image_size: tuple[int, int] = typer.Option((320, 320), help="Input height and width for FLOPs."),
    num_classes: int = typer.Option(6, help="Output classes (background included)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Parameters, FLOPs and a per-stage summary of an architecture."""
    from rich.console import Console
    from rich.table import Table

    from autonad_edge.models.complexity import count_flops, stage_params
    from autonad_edge.space import ArchError, load_arch

    if num_classes < 2:
        fail(f"--num-classes counts the background too: at least 2, got {num_classes}")
    if min(image_size) < 8:
        fail(f"--image-size must be at least 8 x 8 pixels, got {image_size[0]} x {image_size[1]}")
    the_space = load_space(space)
    try:
        arch = load_arch(str(path), the_space)
    except ArchError as exc:
        fail(f"{path}: {exc}{space_hint(path, space)}")
    params = stage_params(arch, the_space, num_classes)
    flops = count_flops(arch, the_space, num_classes, image_size)
    total = sum(params.values())
    if as_json:
        print(json.dumps({
            "hash": arch.hash, "summary": arch.summary(), "params": total,
            "params_by_part": params, "flops": flops, "image_size": list(image_size),
            "arch": arch.to_dict(),
        }, indent=2))
        return
    console = Console()
    console.print(f"[bold]{path}[/]  hash {arch.hash}")
    table = Table("stage", "stride", "width", "depth", "blocks (op / ffn ratio)", "params")
    for i, stage in enumerate(arch.stages):
        blocks = ", ".join(
            (f"conv{b.kernel}" if b.op == "conv" else b.op) + f"/{b.ffn_ratio:g}" for b in stage.blocks
        )
        table.add_row(str(i + 1), str(4 * 2**i), str(stage.width), str(stage.depth), blocks,
                      f"{params[f'stage{i + 1}']:,}")
    edges = ", ".join(arch.edges)
    table.add_row("MFAM", "4", str(the_space.decoder_channels), "-",
                  f"edges {edges}; PPM pools {list(arch.pool_sizes)}", f"{params['mfam']:,}")
    console.print(table)
    console.print(
        f"parameters {total:,} ({total / 1e6:.2f} M)   FLOPs {flops / 1e9:.2f} G at {image_size[0]}x{image_size[1]}"
    )


@arch_app.command("space")
def show_space(
    space: str = typer.Option("default", help=SPACE_HELP),
    out: Path = typer.Option(None, help="Write the space JSON here (a starting point to edit)."),
) -> None:
    """Print (or write) a search space as JSON, to shrink or widen it."""
    text = load_space(space).to_json()
    if out is None:
        print(text)
    else:
        _write(out, text + "\n")
        typer.echo(f"wrote {out}")


def _write(out: Path, text: str) -> None:
    """Write `--out` atomically, or say in one line why it cannot be (a folder, no permission)."""
    from autonad_edge.io import atomic_write_text

    if out.is_dir():
        fail(f"--out {out} is a directory; give a file name (e.g. {out / 'arch.json'})")
    try:
        atomic_write_text(out, text)
    except OSError as exc:
        fail(f"--out {out}: cannot write it ({exc.strerror or exc})")


def register(app: typer.Typer) -> None:
    app.add_typer(arch_app, name="arch")
