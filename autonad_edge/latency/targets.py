"""Targets: named groups of latency agents, from a TOML file.

    [targets.jetson]
    agents = ["10.0.0.7:50051", "10.0.0.8:50051"]
    backend = "tensorrt"          # optional: the agents' default backend otherwise
    precision = "fp16"            # optional: fp32 by default
    token_file = "~/.config/autonad/jetson.token"
    tls_ca = "~/.config/autonad/jetson-ca.pem"   # optional: enables TLS
    tls_server_name = "jetson"    # optional: name in the agents' certificate

The file is the first of: the explicit path (--targets), $AUTONAD_TARGETS, ./targets.toml,
$XDG_CONFIG_HOME/autonad/targets.toml (~/.config/autonad/targets.toml). The built-in target
`local` needs no file: it runs an agent in this process (ONNX Runtime on this CPU) on a
loopback port with a random token, so everything works on a laptop. Its ONNX Runtime uses all
usable CPUs unless told a thread count (`local_threads=`, else $AUTONAD_LOCAL_THREADS): on a
shared or busy host one thread gives much steadier numbers. The count is part of the device
fingerprint, so tables measured with different counts never mix.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

import grpc

from autonad_edge.errors import AutonadError
from autonad_edge.latency.client import AgentClient, AgentError, DeviceInfo
from autonad_edge.latency.pool import ClientPool
from autonad_edge.latency.table import LatencyTable

log = logging.getLogger(__name__)

LOCAL_TARGET = "local"
TARGETS_ENV = "AUTONAD_TARGETS"
LOCAL_THREADS_ENV = "AUTONAD_LOCAL_THREADS"
_PRECISIONS = ("fp32", "fp16")
_KEYS = {"agents", "backend", "precision", "token_file", "tls_ca", "tls_server_name", "timeout_s"}


class TargetError(AutonadError, RuntimeError):
    """A target cannot be resolved or reached; the message is one line for the user."""


@dataclass(frozen=True)
class TargetConfig:
    name: str
    agents: tuple[str, ...]
    backend: str | None = None
    precision: str = "fp32"
    token_file: Path | None = None
    tls_ca: Path | None = None
    tls_server_name: str | None = None
    # Deadline of one measurement request.
    timeout_s: float = 600.0
    source: Path | None = None  # the TOML file it came from; None for `local`
    threads: int | None = None  # `local` only: ONNX Runtime intra-op threads (None: all usable CPUs)

    def read_token(self) -> str | None:
        if self.token_file is None:
            return None
        try:
            token = self.token_file.read_text().strip()
        except OSError as exc:
            raise TargetError(f"target {self.name!r}: cannot read token file {self.token_file}: {exc.strerror}") from None
        if not token:
            raise TargetError(f"target {self.name!r}: token file {self.token_file} is empty")
        return token

    def read_tls_ca(self) -> bytes | None:
        if self.tls_ca is None:
            return None
        try:
            return self.tls_ca.read_bytes()
        except OSError as exc:
            raise TargetError(f"target {self.name!r}: cannot read tls_ca {self.tls_ca}: {exc.strerror}") from None


def user_targets_path() -> Path:
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "autonad" / "targets.toml"


def find_targets_file(explicit: str | Path | None = None) -> Path | None:
    """The targets file to use (see module doc), or None if there is none. An explicit
    path or $AUTONAD_TARGETS that does not exist is an error, not a fall-through."""
    for given, what in ((explicit, "--targets"), (os.environ.get(TARGETS_ENV), f"${TARGETS_ENV}")):
        if given:
            path = Path(given).expanduser()
            if not path.is_file():
                raise TargetError(f"targets file {path} (from {what}) does not exist")
            return path
    for candidate in (Path("targets.toml"), user_targets_path()):
        if candidate.is_file():
            return candidate
    return None


def _parse_target(name: str, table: Any, source: Path) -> TargetConfig:
    where = f"{source}: target {name!r}"
    if not isinstance(table, dict):
        raise TargetError(f"{where} must be a table")
    unknown = set(table) - _KEYS
    if unknown:
        raise TargetError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    agents = table.get("agents")
    if not (isinstance(agents, list) and agents and all(isinstance(a, str) and ":" in a for a in agents)):
        raise TargetError(f'{where}: agents must be a non-empty list of "host:port" strings')
    repeated = sorted({a for a in agents if agents.count(a) > 1})
    if repeated:  # one agent twice would take two jobs at once on one device
        raise TargetError(f"{where}: agent(s) listed twice: {', '.join(repeated)}")
    precision = table.get("precision", "fp32")
    if precision not in _PRECISIONS:
        raise TargetError(f"{where}: precision must be one of {', '.join(_PRECISIONS)}")

    def path(key: str) -> Path | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise TargetError(f"{where}: {key} must be a path string")
        resolved = Path(value).expanduser()
        return resolved if resolved.is_absolute() else source.parent / resolved

    try:
        timeout_s = float(table.get("timeout_s", 600.0))
    except (TypeError, ValueError):
        raise TargetError(f"{where}: timeout_s must be a number") from None
    return TargetConfig(
        name=name,
        agents=tuple(agents),
        backend=table.get("backend"),
        precision=precision,
        token_file=path("token_file"),
        tls_ca=path("tls_ca"),
        tls_server_name=table.get("tls_server_name"),
        timeout_s=timeout_s,
        source=source,
    )


def load_targets(targets_path: str | Path | None = None) -> dict[str, TargetConfig]:
    """Targets defined in the targets file (empty if there is no file); `local` excluded."""
    path = find_targets_file(targets_path)
    if path is None:
        return {}
    try:
        document = tomllib.loads(path.read_text())
    except OSError as exc:
        raise TargetError(f"cannot read targets file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"cannot parse targets file {path}: {exc}") from None
    targets = document.get("targets", {})
    if not isinstance(targets, dict):
        raise TargetError(f"{path}: [targets] must be a table of tables")
    if LOCAL_TARGET in targets:
        raise TargetError(f"{path}: target name {LOCAL_TARGET!r} is reserved for the built-in in-process agent")
    return {name: _parse_target(name, table, path) for name, table in targets.items()}


def local_target_config(threads: int | None = None) -> TargetConfig:
    if threads is None and os.environ.get(LOCAL_THREADS_ENV, "").strip():
        raw = os.environ[LOCAL_THREADS_ENV].strip()
        try:
            threads = int(raw)
        except ValueError:
            raise TargetError(f"${LOCAL_THREADS_ENV}={raw!r} is not a thread count") from None
    if threads is not None and threads < 1:
        raise TargetError(f"local target threads must be >= 1, got {threads}")
    return TargetConfig(name=LOCAL_TARGET, agents=("127.0.0.1:0",), backend="onnxruntime", threads=threads)


def get_target(name: str, targets_path: str | Path | None = None, *,
               local_threads: int | None = None) -> TargetConfig:
    """The named target; `local_threads` sets the thread count of the built-in `local`."""
    if name == LOCAL_TARGET:
        return local_target_config(local_threads)
    targets = load_targets(targets_path)
    if name not in targets:
        path = find_targets_file(targets_path)
        if path is None:
            raise TargetError(
                f"target {name!r} not found: no targets file (looked for --targets, ${TARGETS_ENV}, "
                f"./targets.toml, {user_targets_path()}); only {LOCAL_TARGET!r} is built in"
            )
        defined = ", ".join(sorted(targets) + [LOCAL_TARGET])
        raise TargetError(f"target {name!r} not found in {path} (defined: {defined})")
    return targets[name]


class Target:
    """An opened target: `with open_target(name) as pool: pool.measure(...)`.

    Entering starts the in-process agent for `local`, then connects to all agents at once:
    unreachable ones are left out (with a warning), and if none answers within
    `connect_timeout_s` it raises TargetError naming the addresses tried.
    """

    def __init__(
        self, config: TargetConfig, *, table: LatencyTable | None = None, connect_timeout_s: float = 5.0
    ) -> None:
        self.config = config
        self.table = table
        self.connect_timeout_s = connect_timeout_s
        self._local_agent: Any = None  # autonad_agent.server.AgentServer for `local`
        self._pool: ClientPool | None = None

    def _start_local_agent(self) -> tuple[tuple[str, ...], str]:
        from autonad_agent.server import AgentConfig, AgentServer

        token = secrets.token_urlsafe(32)
        config = AgentConfig(host="127.0.0.1", port=0, backend=self.config.backend or "onnxruntime", token=token,
                             threads=self.config.threads)
        try:
            self._local_agent = AgentServer(config).start()
        except RuntimeError as exc:
            raise TargetError(f"cannot start the local agent: {exc}") from None
        return (self._local_agent.address,), token

    def __enter__(self) -> ClientPool:
        try:
            return self._open()
        except BaseException:
            self._stop_local_agent()
            raise

    def _open(self) -> ClientPool:
        if self.config.name == LOCAL_TARGET:
            addresses, token = self._start_local_agent()
        else:
            addresses, token = self.config.agents, self.config.read_token()
        tls_ca = self.config.read_tls_ca()
        clients = [
            AgentClient(
                address, token=token, tls_ca=tls_ca, tls_server_name=self.config.tls_server_name,
                timeout_s=self.config.timeout_s, connect_timeout_s=self.connect_timeout_s,
            )
            for address in addresses
        ]
        unreachable = [client for client, ok in zip(clients, self._connect_all(clients)) if not ok]
        reachable = [c for c in clients if c not in unreachable]
        for client in unreachable:
            client.close()
        if not reachable:
            raise TargetError(
                f"target {self.config.name!r}: no agent reachable within {self.connect_timeout_s:g} s "
                f"(tried {', '.join(addresses)})"
            )
        if unreachable:
            log.warning(
                "target %r: skipping unreachable agent(s) %s", self.config.name, ", ".join(c.address for c in unreachable)
            )
        self._pool = ClientPool(reachable, backend=self.config.backend, precision=self.config.precision, table=self.table)
        return self._pool

    @staticmethod
    def _connect_all(clients: list[AgentClient]) -> list[bool]:
        """Connect to all agents at once, so an unreachable target fails in one timeout."""

        def connect(client: AgentClient) -> bool:
            try:
                client.connect()
                return True
            except AgentError:
                return False

        with ThreadPoolExecutor(max_workers=len(clients)) as executor:
            return list(executor.map(connect, clients))

    def _stop_local_agent(self) -> None:
        if self._local_agent is not None:
            self._local_agent.stop(grace_s=0)
            self._local_agent = None

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        self._stop_local_agent()


def open_target(
    name: str = LOCAL_TARGET,
    targets_path: str | Path | None = None,
    *,
    table: LatencyTable | None = None,
    connect_timeout_s: float = 5.0,
    local_threads: int | None = None,
) -> Target:
    """Resolve target `name` (see module doc); use the result as a context manager that
    yields a `ClientPool`. Raises TargetError with a one-line message."""
    return Target(get_target(name, targets_path, local_threads=local_threads), table=table,
                  connect_timeout_s=connect_timeout_s)


@dataclass(frozen=True)
class AgentCheck:
    """Outcome of checking one agent: reachable, token accepted, what it offers."""

    address: str
    reachable: bool
    authenticated: bool
    health: str | None = None
    device_info: DeviceInfo | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.reachable and self.authenticated and self.health == "SERVING"


def _check_agent(client: AgentClient, timeout_s: float) -> AgentCheck:
    try:
        client.connect(timeout_s)
    except AgentError as exc:
        return AgentCheck(client.address, reachable=False, authenticated=False, error=exc.details)
    try:
        health = client.health(timeout_s)
        info = client.device_info(timeout_s)
    except AgentError as exc:
        return AgentCheck(
            client.address, reachable=True, authenticated=exc.code != grpc.StatusCode.UNAUTHENTICATED,
            error=f"{exc.code.name}: {exc.details}",
        )
    return AgentCheck(client.address, reachable=True, authenticated=True, health=health, device_info=info)


def check_target(name: str, targets_path: str | Path | None = None, *, timeout_s: float = 5.0) -> list[AgentCheck]:
    """Check every agent of target `name` concurrently (each within about `timeout_s`)."""
    config = get_target(name, targets_path)
    if config.name == LOCAL_TARGET:
        with Target(config, connect_timeout_s=timeout_s) as pool:
            return [_check_agent(client, timeout_s) for client in pool.clients]
    token, tls_ca = config.read_token(), config.read_tls_ca()
    clients = [
        AgentClient(address, token=token, tls_ca=tls_ca, tls_server_name=config.tls_server_name)
        for address in config.agents
    ]
    try:
        with ThreadPoolExecutor(max_workers=len(clients)) as executor:
            return list(executor.map(lambda client: _check_agent(client, timeout_s), clients))
    finally:
        for client in clients:
            client.close()
