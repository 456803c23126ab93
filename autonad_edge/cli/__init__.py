"""The `autonad-edge` command: a thin Typer layer over the library API.

Each command group lives in its own module and adds itself through `register(app)`, so a
change to one group touches one file. Modules import heavy dependencies (torch, onnx) inside
the commands, which keeps `autonad-edge --help` instant.
"""

from __future__ import annotations

import typer

from autonad_edge.cli import arch, data, deploy, latency, search, train

app = typer.Typer(
    name="autonad-edge",
    help="Design, measure and deploy defect-segmentation networks for edge devices (AutoNAD).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

for _module in (arch, data, train, latency, deploy, search):
    _module.register(app)


def main() -> None:
    """The console entry point: a library error the command did not word itself still ends as
    one line (exit code 2); anything else is a bug and keeps its traceback."""
    from autonad_edge.errors import AutonadError

    try:
        app()
    except AutonadError as exc:
        from autonad_edge.cli.common import fail

        try:
            fail(str(exc))
        except typer.Exit as done:
            raise SystemExit(done.exit_code) from None
