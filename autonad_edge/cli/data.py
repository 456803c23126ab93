"""`autonad-edge data ...`: inspect a dataset, write the synthetic one to disk.

Heavy imports (torch, PIL) happen inside the commands so `autonad-edge --help` stays instant.
A broken dataset prints one line, `error: <file>: <problem>`, and exits with status 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from autonad_edge.data.errors import DatasetError
from autonad_edge.training.config import RunConfig  # light: dataclasses only

EXIT_DATA_ERROR = 2


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {' '.join(str(message).split())}", err=True)
    return typer.Exit(EXIT_DATA_ERROR)


def inspect_command(
    path: Annotated[Path, typer.Argument(help="Dataset root directory.")],
    fmt: Annotated[
        Optional[str],
        typer.Option("--format", "-f", help="mt | voc (default: detect from the layout)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    image_size: Annotated[int, typer.Option(
        help="The network's input size (recorded in the split; the synthetic images' size). Dataset images "
             f"load as a run trains them: aspect kept, long side at most {RunConfig.max_side} px.")] = 320,
    seed: Annotated[int, typer.Option(help="Split seed (for layouts without split lists).")] = 0,
) -> None:
    """Validate a dataset and report classes, split/class counts, sizes and pixel frequencies."""
    from autonad_edge.data.dataset import load_dataset
    from autonad_edge.data.inspect import format_description

    if fmt is not None and fmt.lower() not in ("mt", "voc", "synthetic"):
        raise _fail(f"unknown --format {fmt!r}: use mt or voc")
    try:
        # At a run's cap, not native: a few hundred multi-megapixel photos would take tens of GB.
        data = load_dataset(path, fmt=(fmt or "auto"), image_size=image_size, seed=seed,
                            max_side=RunConfig.max_side)
    except (DatasetError, ValueError) as exc:
        raise _fail(str(exc)) from None
    info = data.describe()
    typer.echo(json.dumps(info, indent=2) if as_json else format_description(info))


def synth_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write (VOC layout).")],
    count: Annotated[int, typer.Option(help="Number of images.")] = 240,
    image_size: Annotated[int, typer.Option(help="Square image size in pixels.")] = 320,
    seed: Annotated[int, typer.Option(help="Generator and split seed.")] = 0,
) -> None:
    """Write the synthetic defect dataset in VOC layout (with splits and classes.txt)."""
    from autonad_edge.data.synthetic import SYNTHETIC_CLASSES, write_synthetic_voc

    try:
        splits = write_synthetic_voc(out, count=count, image_size=image_size, seed=seed)
    except (DatasetError, ValueError) as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:  # a file where a folder is needed, no permission, a full disk
        raise _fail(f"{out}: cannot write the synthetic set ({exc.strerror or exc})") from None
    counts = ", ".join(f"{name} {len(ids)}" for name, ids in splits.items())
    typer.echo(
        f"wrote {count} synthetic images ({image_size}x{image_size}, seed {seed}, "
        f"classes {', '.join(SYNTHETIC_CLASSES)}) to {out}: {counts}"
    )


def register(app: typer.Typer) -> None:
    """Add this group's commands to the main app."""
    data_app = typer.Typer(
        help="Datasets: check and describe one, or write the synthetic one.",
        no_args_is_help=True,
    )
    data_app.command("inspect")(inspect_command)
    data_app.command("synth")(synth_command)
    app.add_typer(data_app, name="data")
