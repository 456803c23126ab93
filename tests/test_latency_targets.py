"""Targets: TOML resolution, the built-in in-process `local` target, errors, the CLI."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autonad_agent import testing
from autonad_edge.latency import (
    AgentClient,
    AgentUnreachable,
    LatencyTable,
    MeasurementPolicy,
    TargetError,
    find_targets_file,
    load_targets,
    open_target,
)
from autonad_edge.latency.targets import check_target

FAST = MeasurementPolicy(warmup_runs=1, warmup_ms=0, min_runs=5, min_duration_ms=0, max_cv=100, max_repeats=0)


def _write_targets(path: Path, name: str, agents: list[str], token_file: str | None = None) -> Path:
    lines = [f"[targets.{name}]", f"agents = {json.dumps(agents)}", 'backend = "onnxruntime"']
    if token_file:
        lines.append(f'token_file = "{token_file}"')
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No ambient targets: empty cwd, XDG config inside tmp, no $AUTONAD_TARGETS."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("AUTONAD_TARGETS", raising=False)
    return tmp_path


def test_targets_file_resolution_order(isolated: Path, monkeypatch: pytest.MonkeyPatch):
    assert find_targets_file() is None
    user = _write_targets(isolated / "xdg" / "autonad" / "targets.toml", "user", ["127.0.0.1:1"])
    assert find_targets_file() == user
    cwd = _write_targets(isolated / "targets.toml", "cwd", ["127.0.0.1:2"])
    assert find_targets_file() == Path("targets.toml") and set(load_targets()) == {"cwd"}
    env = _write_targets(isolated / "env.toml", "env", ["127.0.0.1:3"])
    monkeypatch.setenv("AUTONAD_TARGETS", str(env))
    assert find_targets_file() == env
    explicit = _write_targets(isolated / "explicit.toml", "explicit", ["127.0.0.1:4"])
    assert find_targets_file(explicit) == explicit and set(load_targets(explicit)) == {"explicit"}
    with pytest.raises(TargetError, match="does not exist"):
        find_targets_file(isolated / "missing.toml")
    assert cwd.exists() and user.exists()


def test_target_errors_are_one_line(isolated: Path):
    with pytest.raises(TargetError, match="not found: no targets file") as excinfo:
        open_target("jetson")
    assert "\n" not in str(excinfo.value)
    (isolated / "targets.toml").write_text("[targets.jetson\nagents = 1\n")
    with pytest.raises(TargetError, match="cannot parse"):
        open_target("jetson")
    _write_targets(isolated / "targets.toml", "jetson", ["127.0.0.1:1"], token_file="missing.token")
    with pytest.raises(TargetError, match="not found in .*defined: jetson, local"):
        open_target("orin")
    with pytest.raises(TargetError, match="cannot read token file .*missing.token"):
        open_target("jetson").__enter__()
    (isolated / "targets.toml").write_text('[targets.local]\nagents = ["127.0.0.1:1"]\n')
    with pytest.raises(TargetError, match="reserved"):
        load_targets()
    # One agent listed twice used to end in a ValueError traceback from the pool.
    (isolated / "targets.toml").write_text('[targets.jetson]\nagents = ["10.0.0.7:50051", "10.0.0.7:50051"]\n')
    with pytest.raises(TargetError, match="listed twice: 10.0.0.7:50051") as excinfo:
        load_targets()
    assert "\n" not in str(excinfo.value)


def test_unreachable_target_fails_fast_naming_the_address(isolated: Path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _write_targets(isolated / "targets.toml", "gone", [f"127.0.0.1:{port}"])
    started = time.monotonic()
    with pytest.raises(TargetError, match=f"127.0.0.1:{port}"):
        with open_target("gone", connect_timeout_s=1.5):
            pass
    assert time.monotonic() - started < 10
    [check] = check_target("gone", timeout_s=1.5)
    assert not check.reachable and not check.ok


def test_local_target_measures_and_records(isolated: Path):
    with LatencyTable(isolated / "t.sqlite") as table:
        with open_target("local", table=table) as pool:
            m = pool.measure(testing.conv_model(), policy=FAST)
            assert m.runs >= 5 and m.agent.startswith("127.0.0.1:")
            address = pool.clients[0].address
        [entry] = table.entries()
        assert entry.fingerprint_hash == m.fingerprint.hash and entry.median_ms == m.median_ms
    with AgentClient(address, connect_timeout_s=1) as client:  # the in-process agent is gone
        with pytest.raises(AgentUnreachable):
            client.connect()


def test_local_thread_count_reaches_the_fingerprint(isolated: Path, monkeypatch: pytest.MonkeyPatch):
    """`local_threads` (or $AUTONAD_LOCAL_THREADS) sets the in-process agent's ONNX Runtime
    threads; the count is in the fingerprint, so tables of other counts are never reused."""
    monkeypatch.delenv("AUTONAD_LOCAL_THREADS", raising=False)
    with open_target("local", local_threads=1) as pool:
        one = pool.measure(testing.conv_model(), policy=FAST).fingerprint
    monkeypatch.setenv("AUTONAD_LOCAL_THREADS", "3")
    with open_target("local") as pool:
        three = pool.measure(testing.conv_model(), policy=FAST).fingerprint
    assert one.fields["threads"] == "1" and three.fields["threads"] == "3"
    assert one.hash != three.hash
    monkeypatch.setenv("AUTONAD_LOCAL_THREADS", "many")
    with pytest.raises(TargetError, match="AUTONAD_LOCAL_THREADS='many' is not a thread count"):
        open_target("local")
    with pytest.raises(TargetError, match="threads must be >= 1"):
        open_target("local", local_threads=0)


def test_remote_target_with_token(isolated: Path):
    token = "t" * 32
    (isolated / "agent.token").write_text(token)
    (isolated / "agent.token").chmod(0o600)
    with testing.AgentProcess(isolated / "agent.token") as agent:
        _write_targets(isolated / "targets.toml", "lab", [agent.address], token_file="agent.token")
        [check] = check_target("lab")
        assert check.ok and check.device_info.auth_required
        with open_target("lab") as pool:
            assert pool.measure(testing.conv_model(), policy=FAST).backend == "onnxruntime"
        (isolated / "wrong.token").write_text("w" * 32)
        _write_targets(isolated / "targets.toml", "lab", [agent.address], token_file="wrong.token")
        [check] = check_target("lab")
        assert check.reachable and not check.authenticated and not check.ok


def test_cli_latency_measure_json(isolated: Path):
    from autonad_edge.cli import app

    model = isolated / "conv.onnx"
    model.write_bytes(testing.conv_model())
    result = CliRunner().invoke(
        app, ["latency", "measure", "--onnx", str(model), "--json", "--min-runs", "10", "--min-duration-ms", "20",
              "--max-cv", "100"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["runs"] >= 10 and report["median_ms"] > 0 and report["p90_ms"] >= report["median_ms"]
    assert report["fingerprint"]["fields"]["runtime"] == "onnxruntime" and report["target"] == "local"


def test_cli_targets_list_and_check(isolated: Path):
    from autonad_edge.cli import app

    _write_targets(isolated / "targets.toml", "lab", ["127.0.0.1:1"])
    result = CliRunner().invoke(app, ["targets", "list"])
    assert result.exit_code == 0 and "lab" in result.stdout and "local" in result.stdout
    result = CliRunner().invoke(app, ["targets", "check", "local"])
    assert result.exit_code == 0 and result.stdout.startswith("OK")
    result = CliRunner().invoke(app, ["targets", "check", "nowhere"])
    assert result.exit_code != 0
