"""`autonad-agent` command line: serve latency measurements on this device."""

from __future__ import annotations

import logging
import os
import signal
import stat
import sys
import threading
from pathlib import Path
from typing import Optional

import typer

from autonad_agent.plugin_build import build_plugin_command

app = typer.Typer(name="autonad-agent", no_args_is_help=True, pretty_exceptions_enable=False)
app.command("build-plugin")(build_plugin_command)


@app.command()
def version() -> None:
    """Print the agent version."""
    from autonad_agent import __version__

    print(__version__)


def read_token_file(path: Path) -> str:
    """The token in `path` (surrounding whitespace ignored); warns if others can read it."""
    try:
        mode = path.stat().st_mode
        token = path.read_text().strip()
    except OSError as exc:
        raise typer.BadParameter(f"cannot read token file {path}: {exc.strerror}") from None
    if not token:
        raise typer.BadParameter(f"token file {path} is empty")
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        logging.getLogger("autonad_agent").warning("token file %s is readable by other users (chmod 600 it)", path)
    return token


def _read_bytes(path: Optional[Path], what: str) -> Optional[bytes]:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {what} {path}: {exc.strerror}") from None


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 for all interfaces)."),
    port: int = typer.Option(50051, help="Port to listen on (0: any free port)."),
    backend: str = typer.Option("auto", help="Default backend: auto, onnxruntime or tensorrt."),
    token_file: Optional[Path] = typer.Option(None, help="File holding the bearer token callers must present."),
    insecure_no_auth: bool = typer.Option(False, "--insecure-no-auth", help="Serve without a token (refused unless --host is loopback)."),
    tls_cert: Optional[Path] = typer.Option(None, help="PEM server certificate (enables TLS)."),
    tls_key: Optional[Path] = typer.Option(None, help="PEM private key of --tls-cert."),
    max_model_mb: int = typer.Option(256, help="Largest model accepted, in MiB."),
    threads: int = typer.Option(0, help="CPU intra-op threads (0: all usable CPUs)."),
    worker_memory_mb: int = typer.Option(8192, help="Memory limit of the worker process in MiB (0: none)."),
    max_request_s: float = typer.Option(120.0, help="Device-time budget of one measurement (load, warm-up, runs)."),
    first_run_timeout_s: float = typer.Option(20.0, help="A model's first inference must end within this."),
    max_build_s: float = typer.Option(1800.0, help="Device-time budget of one TensorRT engine build."),
    shutdown_grace_s: float = typer.Option(5.0, help="On SIGTERM/SIGINT, time given to in-flight calls."),
    receive_timeout_s: float = typer.Option(60.0, help="An upload must be complete this long after its header arrived."),
    max_uploads: int = typer.Option(0, help="Uploads in flight at once (0: half the RPC threads); more get RESOURCE_EXHAUSTED."),
) -> None:
    """Serve latency measurements over gRPC until SIGTERM/SIGINT."""
    from autonad_agent.server import AgentConfig, AgentServer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if token_file is not None and insecure_no_auth:
        raise typer.BadParameter("--token-file and --insecure-no-auth are exclusive")
    try:
        config = AgentConfig(
            host=host,
            port=port,
            backend=backend,
            token=read_token_file(token_file.expanduser()) if token_file else None,
            insecure_no_auth=insecure_no_auth,
            tls_cert=_read_bytes(tls_cert, "TLS certificate"),
            tls_key=_read_bytes(tls_key, "TLS key"),
            max_model_mb=max_model_mb,
            threads=threads or None,
            worker_memory_mb=worker_memory_mb,
            max_request_s=max_request_s,
            first_run_timeout_s=first_run_timeout_s,
            max_build_s=max_build_s,
            shutdown_grace_s=shutdown_grace_s,
            receive_timeout_s=receive_timeout_s,
            max_uploads=max_uploads or None,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None

    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        logging.getLogger("autonad_agent").info("%s received: shutting down", signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    server = AgentServer(config)
    try:
        server.start()
    except RuntimeError as exc:
        print(f"autonad-agent: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None
    # Machine-readable line for supervisors and tests that start the agent on port 0.
    print(f"listening on {server.address} pid {os.getpid()}", flush=True)
    while not stop_requested.wait(timeout=1.0):
        pass
    server.stop()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
