"""Helpers shared by the command modules: one-line errors and search-space loading."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console

console = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one line naming the problem and exit; no traceback for a user's mistake."""
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def load_space(spec: str):
    """A named space (``default``, ``paper``, ``tiny``) or a path to a space JSON file."""
    from autonad_edge.space import ArchError, SearchSpace

    try:
        if spec.endswith(".json") or Path(spec).is_file():
            try:
                return SearchSpace.from_json(Path(spec).read_text(encoding="utf-8"))
            except OSError as exc:
                fail(f"cannot read search space {spec}: {exc.strerror}")
        return SearchSpace.named(spec)
    except (ArchError, ValueError) as exc:
        fail(str(exc))
