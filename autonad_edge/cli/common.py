"""Helpers shared by the command modules: one-line errors and search-space loading."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console

# One help text for every command's --space (space.SearchSpace.resolve reads the value).
SPACE_HELP = ("Search space: 'default' (the paper's Table I plus the head's detail path), 'paper' "
              "(Table I), 'small', 'tiny', or a space JSON file.")

console = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one line naming the problem and exit; no traceback for a user's mistake."""
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def load_space(spec: str):
    """`SearchSpace.resolve`, failing with one line."""
    from autonad_edge.space import ArchError, SearchSpace

    try:
        return SearchSpace.resolve(spec)
    except (ArchError, ValueError) as exc:
        fail(str(exc))


def space_hint(path: Path, given: str) -> str:
    """Where an architecture that is not in the `given` space fits named ones (the default
    search runs the tiny space, so its best_arch.json is not in --space default); "" if none."""
    from autonad_edge.space import ArchError, SearchSpace, load_arch

    fits = []
    for name in ("tiny", "small", "default", "paper"):
        if name == given:
            continue
        try:
            load_arch(str(path), SearchSpace.named(name))
        except ArchError:
            continue
        fits.append(name)
    if not fits:
        return ""
    return f"; it is in the {' and '.join(fits)} space{'s' if len(fits) > 1 else ''}: pass --space {' or --space '.join(fits)}"
