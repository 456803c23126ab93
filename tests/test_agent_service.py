"""The latency agent over real gRPC on loopback, with real ONNX Runtime sessions."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx import TensorProto

from autonad_agent import testing
from autonad_agent.proto import latency_agent_pb2 as pb
from autonad_agent.proto import latency_agent_pb2_grpc as pb_grpc
from autonad_agent.server import AgentConfig, AgentServer
from autonad_agent.worker import MAX_ERROR_BYTES, TEST_ABORT_ENV, clip_message
from autonad_edge.latency import AgentClient, AgentError, MeasurementPolicy, TensorSpec

TOKEN = secrets.token_urlsafe(24)
# Quick but valid: a handful of timed runs, no repeats, never flagged (the CI box is noisy).
FAST = MeasurementPolicy(warmup_runs=1, warmup_ms=0, min_runs=5, min_duration_ms=0, max_runs=50, max_cv=100, max_repeats=0)
CRASH_INPUT = "abort_here"


@pytest.fixture(scope="module")
def agent():
    # The test-only crash hook is read from the agent's environment when its worker starts.
    os.environ[TEST_ABORT_ENV] = CRASH_INPUT
    try:
        config = AgentConfig(
            host="127.0.0.1", port=0, backend="onnxruntime", token=TOKEN, max_model_mb=64, worker_memory_mb=2048
        )
        server = AgentServer(config).start()
    finally:
        del os.environ[TEST_ABORT_ENV]
    yield server
    server.stop(grace_s=0)


@pytest.fixture
def client(agent):
    with AgentClient(agent.address, token=TOKEN, timeout_s=60) as c:
        yield c


def _code(excinfo: pytest.ExceptionInfo) -> grpc.StatusCode:
    return excinfo.value.code


def test_measure_reports_sane_statistics_and_fingerprint(client):
    policy = MeasurementPolicy(warmup_runs=2, warmup_ms=0, min_runs=30, min_duration_ms=50, max_runs=2000, max_cv=100)
    model = testing.conv_model(seed=1)
    m = client.measure(model, policy=policy)
    assert m.runs >= 30 and m.runs <= 2000
    assert 0 < m.min_ms <= m.median_ms <= m.p90_ms <= m.p99_ms <= m.max_ms
    assert m.min_ms <= m.mean_ms <= m.max_ms and m.std_ms >= 0
    assert m.cv == pytest.approx(m.std_ms / m.mean_ms)
    assert 0 <= m.outliers < m.runs
    assert m.stable and not m.cached and m.attempts == 1 and m.warmup_runs >= 2
    assert m.backend == "onnxruntime" and m.precision == "fp32"
    assert m.inputs == (TensorSpec("x", (1, 3, 32, 32), "float32"),)
    assert m.model_sha256 == hashlib.sha256(model).hexdigest()
    fields = m.fingerprint.fields
    assert fields["runtime"] == "onnxruntime" and fields["runtime_version"]
    assert int(fields["threads"]) >= 1 and fields["cpu_model"]
    assert len(m.fingerprint.hash) == 16


def test_explicit_inputs_are_checked_against_the_model(client):
    with pytest.raises(AgentError) as excinfo:
        client.measure(testing.conv_model(), [TensorSpec("nope", (1, 3, 32, 32))], policy=FAST)
    assert _code(excinfo) == grpc.StatusCode.INVALID_ARGUMENT and "do not match" in excinfo.value.details


def test_token_is_required_and_checked(agent):
    model = testing.conv_model()
    for token in (None, "wrong-" + TOKEN, TOKEN[:-1]):
        with AgentClient(agent.address, token=token, timeout_s=30) as c:
            with pytest.raises(AgentError) as excinfo:
                c.measure(model, policy=FAST)
            assert _code(excinfo) == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(AgentError) as excinfo:
                c.device_info()
            assert _code(excinfo) == grpc.StatusCode.UNAUTHENTICATED
            assert c.health() == "SERVING"  # health is deliberately open


def test_20mb_model_streams_through(client):
    model = testing.big_initializer_model(megabytes=20)
    assert len(model) > 20 * 1024 * 1024
    m = client.measure(model, policy=FAST)
    assert m.runs >= 5 and m.model_sha256 == hashlib.sha256(model).hexdigest()


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (b"\x08\x07garbage\xff\xfe" * 100, "ONNX"),
        (testing.unknown_op_model(), "NoSuchOperator"),
        (testing.external_data_model(), "external data"),
        (testing.custom_domain_model("com.example.evil"), "com.example.evil"),
    ],
    ids=["garbage", "unknown-op", "external-data", "custom-domain"],
)
def test_bad_models_are_refused_and_the_agent_keeps_serving(client, model, expected):
    with pytest.raises(AgentError) as excinfo:
        client.measure(model, policy=FAST)
    assert _code(excinfo) == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in excinfo.value.details
    assert client.measure(testing.conv_model(seed=2), policy=FAST).runs >= 5


def test_worker_crash_is_reported_and_survived(client):
    with pytest.raises(AgentError) as excinfo:
        client.measure(testing.conv_model(input_name=CRASH_INPUT), policy=FAST)
    assert _code(excinfo) == grpc.StatusCode.INTERNAL
    assert "worker crashed (signal 6, SIGABRT) while loading the model" in excinfo.value.details
    assert client.health() == "SERVING"
    assert client.measure(testing.conv_model(seed=3), policy=FAST).runs >= 5


def test_memory_exhaustion_is_resource_exhausted_and_survived(client):
    with pytest.raises(AgentError) as excinfo:
        client.measure(testing.huge_output_model(), policy=FAST)
    assert _code(excinfo) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "out of worker memory limit (2048 MiB)" in excinfo.value.details
    assert client.measure(testing.conv_model(seed=5), policy=FAST).runs >= 5


def test_identical_requests_are_served_from_the_cache(client):
    model = testing.conv_model(seed=4)
    first = client.measure(model, policy=FAST)
    second = client.measure(model, policy=FAST)
    assert not first.cached and second.cached
    assert second.median_ms == first.median_ms and second.fingerprint == first.fingerprint
    other_policy = MeasurementPolicy(**{**FAST.to_dict(), "min_runs": 6})
    assert not client.measure(model, policy=other_policy).cached


def test_concurrent_requests_are_serialised_on_the_device(client):
    policy = MeasurementPolicy(
        warmup_runs=1, warmup_ms=0, min_runs=5, min_duration_ms=300, max_runs=100_000, max_cv=100, max_repeats=0
    )
    results = []

    def measure(seed: int) -> None:
        results.append(client.measure(testing.conv_model(seed=100 + seed), policy=policy))

    threads = [threading.Thread(target=measure, args=(i,)) for i in range(2)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 2
    assert time.monotonic() - start >= 0.6  # one after the other, not overlapping


def test_device_info_lists_backends_and_limits(client):
    info = client.device_info()
    assert info.default_backend == "onnxruntime" and info.auth_required and not info.tls
    assert info.max_model_bytes == 64 * 1024 * 1024
    ort = info.backend("onnxruntime")
    assert ort.available and ort.precisions == ("fp32",) and ort.fingerprint is not None
    assert ort.details["intra_op_threads"] == ort.fingerprint.fields["threads"]
    assert not info.backend("tensorrt").available or info.backend("tensorrt").reason


def test_build_engine_without_tensorrt_is_a_clean_failed_precondition(client):
    if client.device_info().backend("tensorrt").available:
        pytest.skip("TensorRT is available here")
    with pytest.raises(AgentError) as excinfo:
        client.build_engine(testing.conv_model(), precision="fp16")
    assert _code(excinfo) == grpc.StatusCode.FAILED_PRECONDITION
    assert excinfo.value.details.startswith("TensorRT not available on this agent: ")


def test_fp16_on_onnxruntime_is_refused(client):
    with pytest.raises(AgentError) as excinfo:
        client.measure(testing.conv_model(), precision="fp16", policy=FAST)
    assert _code(excinfo) == grpc.StatusCode.INVALID_ARGUMENT and "fp32 only" in excinfo.value.details


def test_model_size_limits(agent):
    channel = grpc.insecure_channel(agent.address)
    stub = pb_grpc.LatencyAgentStub(channel)
    auth = (("authorization", f"Bearer {TOKEN}"),)

    def call(declared: int, chunks: list[bytes]) -> grpc.StatusCode:
        messages = [pb.MeasureRequest(header=pb.MeasureHeader(model_size=declared))]
        messages += [pb.MeasureRequest(model_chunk=c) for c in chunks]
        with pytest.raises(grpc.RpcError) as excinfo:
            stub.Measure(iter(messages), timeout=30, metadata=auth)
        return excinfo.value.code()

    try:
        assert call(65 * 1024 * 1024, []) == grpc.StatusCode.RESOURCE_EXHAUSTED  # declared too big
        assert call(10, [b"x" * 20]) == grpc.StatusCode.INVALID_ARGUMENT  # more than declared
        assert call(10, [b"x" * 5]) == grpc.StatusCode.INVALID_ARGUMENT  # truncated upload
        # Declared at the limit but streaming past it: refused once the sum exceeds the limit.
        assert call(64 * 1024 * 1024, [b"x" * (1024 * 1024)] * 65) == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        channel.close()


def test_agent_refuses_to_start_without_token_or_explicit_insecure_flag():
    with pytest.raises(ValueError, match="insecure-no-auth"):
        AgentConfig(port=0)
    with pytest.raises(ValueError, match="at least"):
        AgentConfig(port=0, token="short")


def test_insecure_no_auth_is_refused_off_loopback():
    for host in ("0.0.0.0", "::", "192.168.1.10", "agent.example.com"):
        with pytest.raises(ValueError, match="loopback only"):
            AgentConfig(host=host, port=0, insecure_no_auth=True)
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert AgentConfig(host=host, port=0, insecure_no_auth=True).token is None
    assert AgentConfig(host="0.0.0.0", port=0, token=TOKEN).token == TOKEN  # with a token: any interface


def test_serve_insecure_no_auth_on_all_interfaces_exits_with_an_error():
    result = subprocess.run(
        [sys.executable, "-m", "autonad_agent.cli", "serve", "--host", "0.0.0.0", "--port", "0", "--insecure-no-auth"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0 and "listening on" not in result.stdout
    assert "loopback" in result.stderr and "0.0.0.0" in result.stderr


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls(tmp_path: Path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=autonad-agent", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    config = AgentConfig(port=0, backend="onnxruntime", token=TOKEN, tls_cert=cert.read_bytes(), tls_key=key.read_bytes())
    with AgentServer(config) as server:
        with AgentClient(server.address, token=TOKEN, tls_ca=cert.read_bytes(), timeout_s=30) as c:
            assert c.device_info().tls
            assert c.measure(testing.conv_model(), policy=FAST).runs >= 5
        with AgentClient(server.address, token=TOKEN, connect_timeout_s=2) as plaintext:
            with pytest.raises(AgentError):
                plaintext.device_info(timeout_s=5)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    """TOKEN in a file only its owner can read (what `autonad-agent serve --token-file` wants)."""
    path = tmp_path / "token"
    path.write_text(TOKEN)
    path.chmod(0o600)
    return path


def test_sigterm_reports_not_serving_then_exits_cleanly(token_file: Path):
    with testing.AgentProcess(token_file, "--shutdown-grace-s", "2") as agent:
        channel = grpc.insecure_channel(agent.address)
        try:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="autonad.agent.v1.LatencyAgent"), timeout=30
            )
            statuses = [next(watch).status]
            assert statuses == [health_pb2.HealthCheckResponse.SERVING]
            agent.proc.terminate()
            try:
                for response in watch:
                    statuses.append(response.status)
            except grpc.RpcError:
                pass  # the stream ends when the server stops
            assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses
            assert agent.proc.wait(timeout=20) == 0
        finally:
            channel.close()


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(c) for c in text]
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc to find the worker")
def test_worker_exits_when_its_agent_is_killed_mid_measurement():
    """SIGKILL of the agent while its worker times a model (for 30 s) leaves no worker behind:
    the worker notices its parent is gone within seconds, not when the measurement ends."""
    import signal

    with testing.AgentProcess(None) as agent:
        client = AgentClient(agent.address)
        long = MeasurementPolicy(warmup_runs=1, warmup_ms=0, min_runs=1, min_duration_ms=30_000,
                                 max_runs=100_000, max_cv=100, max_repeats=0)
        caller = threading.Thread(target=lambda: pytest.raises(AgentError, client.measure,
                                                               testing.conv_model(channels=32, size=64), policy=long),
                                  daemon=True)
        caller.start()
        deadline = time.monotonic() + 30
        workers: list[int] = []
        while time.monotonic() < deadline and not workers:  # the worker, once it is busy
            workers = [c for c in _children(agent.pid)
                       if b"autonad_agent.worker" in Path(f"/proc/{c}/cmdline").read_bytes()]
            time.sleep(0.2)
        assert workers, "the agent runs its worker as a child process"
        time.sleep(2.0)  # well inside the 30 s measurement
        os.kill(agent.pid, signal.SIGKILL)
        agent.proc.wait(timeout=10)
        killed = time.monotonic()
        while time.monotonic() - killed < 10 and any(_running(w) for w in workers):
            time.sleep(0.1)
        assert not [w for w in workers if _running(w)], "a worker outlived its agent"
        client.close()


def test_oversized_headers_and_unfillable_dtypes_are_invalid_argument_and_spare_the_worker(agent, client):
    client.measure(testing.conv_model(), policy=FAST)  # a worker is up
    pid = agent.service.worker("onnxruntime").pid
    assert pid is not None
    channel = grpc.insecure_channel(agent.address, options=[("grpc.max_send_message_length", 8 << 20)])
    stub = pb_grpc.LatencyAgentStub(channel)
    auth = (("authorization", f"Bearer {TOKEN}"),)
    model = testing.conv_model()

    def call(inputs: list[pb.TensorSpec]) -> tuple[grpc.StatusCode, str]:
        header = pb.MeasureHeader(model_size=len(model), inputs=inputs, policy=pb.MeasurementPolicy(**FAST.to_dict()))
        messages = [pb.MeasureRequest(header=header), pb.MeasureRequest(model_chunk=model)]
        with pytest.raises(grpc.RpcError) as excinfo:
            stub.Measure(iter(messages), timeout=60, metadata=auth)
        return excinfo.value.code(), excinfo.value.details()

    try:
        # 100 000 specs: a 1.5 MiB header, legal for gRPC, more than the worker's frames allow.
        many = [pb.TensorSpec(name=f"input_{i:06d}", shape=[1, 3, 32, 32], dtype="float32") for i in range(100_000)]
        assert call(many)[0] == grpc.StatusCode.INVALID_ARGUMENT
        for dtype in ("object", "complex128", "V8", "no-such-type"):
            code, details = call([pb.TensorSpec(name="x", shape=[1, 3, 32, 32], dtype=dtype)])
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (dtype, details)
        code, _ = call([pb.TensorSpec(name="x", shape=[1, 3, 2**63 - 1, 32], dtype="float32")])
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        # Every side within the limits, but 2^160 elements: no array can hold them.
        code, details = call([pb.TensorSpec(name="x", shape=[2**20] * 8, dtype="float32")])
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "more than any array can hold" in details
        # Names within their 1024 characters whose JSON escapes (12 bytes an emoji) overflow the
        # worker's 1 MiB frame header: refused before a byte reaches the worker (it used to crash).
        emoji = [pb.TensorSpec(name=f"{i:03d}" + "\U0001f600" * 1000, shape=[1], dtype="float32") for i in range(256)]
        code, details = call(emoji)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "too large for the worker" in details
    finally:
        channel.close()
    assert agent.service.worker("onnxruntime").pid == pid  # no crash, no restart
    client.measure(testing.conv_model(), policy=FAST)  # and the next request is served


def test_a_cancelled_request_frees_the_device_at_once(agent, client):
    """A caller that gives up on a 30-s measurement: the worker stops, and the next request is
    measured within seconds (not after the 30 s)."""
    client.measure(testing.conv_model(), policy=FAST)  # a warm worker
    before = agent.service.worker("onnxruntime").pid
    channel = grpc.insecure_channel(agent.address)
    stub = pb_grpc.LatencyAgentStub(channel)
    auth = (("authorization", f"Bearer {TOKEN}"),)
    long = MeasurementPolicy(warmup_runs=1, warmup_ms=0, min_runs=1, min_duration_ms=30_000, max_runs=100_000,
                             max_cv=100, max_repeats=0)
    model = testing.conv_model(channels=32, size=64, seed=5)
    header = pb.MeasureHeader(model_size=len(model), policy=pb.MeasurementPolicy(**long.to_dict()))
    future = stub.Measure.future(iter([pb.MeasureRequest(header=header), pb.MeasureRequest(model_chunk=model)]),
                                 timeout=120, metadata=auth)
    try:
        time.sleep(3.0)  # well into the timed runs
        assert not future.done()
        future.cancel()
        # 20 s is less than what the cancelled measurement had left: served only if it was stopped.
        m = client.measure(testing.conv_model(seed=6), policy=FAST, timeout_s=20)
        assert m.runs >= 5
    finally:
        channel.close()
    assert agent.service.worker("onnxruntime").pid not in (None, before)  # stopped, then a fresh one


def test_idle_uploads_neither_block_health_nor_outlive_the_receive_deadline():
    """8 authenticated streams that send a header and then nothing: health and device info are
    answered meanwhile, extra uploads are refused at once (not queued), and once the receive
    deadline has cut the idle ones a ninth caller is measured."""
    config = AgentConfig(host="127.0.0.1", port=0, backend="onnxruntime", token=TOKEN, rpc_threads=8,
                         receive_timeout_s=3.0)
    server = AgentServer(config).start()
    channel = grpc.insecure_channel(server.address)
    auth = (("authorization", f"Bearer {TOKEN}"),)
    stub = pb_grpc.LatencyAgentStub(channel)
    stop = threading.Event()

    def idle_upload():
        yield pb.MeasureRequest(header=pb.MeasureHeader(model_size=1000))
        stop.wait(60)

    try:
        idle = [stub.Measure.future(idle_upload(), timeout=60, metadata=auth) for _ in range(8)]
        time.sleep(0.5)
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        with AgentClient(server.address, token=TOKEN, timeout_s=10) as client:
            assert client.device_info(timeout_s=5).backends
            # Half the threads take uploads (4 here): the other four idle streams were refused.
            refused = [f for f in idle if f.done()]
            assert len(refused) == 4 and all(f.exception().code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                                             for f in refused)
            time.sleep(3.5)  # past the receive deadline: the stalled uploads are cut
            assert all(f.done() for f in idle)
            m = client.measure(testing.conv_model(), policy=FAST, timeout_s=30)
            assert m.runs >= 5
    finally:
        stop.set()
        channel.close()
        server.stop(grace_s=0)


def test_a_health_check_just_after_sigterm_is_answered_not_serving(token_file: Path):
    with testing.AgentProcess(token_file, "--shutdown-grace-s", "2") as agent:
        channel = grpc.insecure_channel(agent.address)
        try:
            check = health_pb2_grpc.HealthStub(channel).Check
            assert check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
            agent.proc.terminate()
            # The agent handles the signal when its main thread next runs (on a busy host that
            # took longer than 0.3 s once): from then on, for its 2-s grace, it answers
            # NOT_SERVING instead of refusing the connection. Poll until it does.
            statuses = []
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and agent.proc.poll() is None:
                statuses.append(check(health_pb2.HealthCheckRequest(), timeout=5).status)
                if statuses[-1] == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                time.sleep(0.05)
            assert statuses and statuses[-1] == health_pb2.HealthCheckResponse.NOT_SERVING
            assert set(statuses[:-1]) <= {health_pb2.HealthCheckResponse.SERVING}
            assert agent.proc.wait(timeout=20) == 0
        finally:
            channel.close()


def test_clip_message_keeps_short_messages_and_bounds_long_ones_in_bytes():
    assert clip_message("model refused") == "model refused"
    message = "domain '" + "x" * 2_000_000 + "' not allowed"
    clipped = clip_message(message)
    assert clipped.startswith("domain 'xxx") and clipped.endswith("xxx' not allowed")
    assert f"({len(message) - 2000} characters cut)" in clipped
    # Non-ASCII counts by its UTF-8 bytes: gRPC percent-encodes each of them into three.
    for wide in ("\u20ac" * 100_000, "\U0001f600" * 100_000):
        assert len(clip_message(wide).encode()) <= MAX_ERROR_BYTES + 64
    assert clip_message("lone \udc80 surrogate") == "lone ? surrogate"


def test_a_rejection_naming_a_2mb_op_domain_is_cut_and_spares_the_worker(agent, client):
    """The rejection of a 2 MB op domain names it: cut, it fits the worker's frame (1 MiB) and
    the caller's metadata limit, so it is INVALID_ARGUMENT, not a crashed worker."""
    client.measure(testing.conv_model(), policy=FAST)  # a worker is up
    pid = agent.service.worker("onnxruntime").pid
    with pytest.raises(AgentError) as excinfo:
        client.measure(testing.custom_domain_model("x" * 2_000_000), policy=FAST)
    assert _code(excinfo) == grpc.StatusCode.INVALID_ARGUMENT
    details = excinfo.value.details
    assert details.startswith("custom op domain(s) 'xxx") and "not allowed on this backend" in details
    assert "characters cut" in details and len(details.encode()) < 2 * MAX_ERROR_BYTES
    assert agent.service.worker("onnxruntime").pid == pid  # no crash, no restart
    assert client.measure(testing.conv_model(seed=8), policy=FAST).runs >= 5


@pytest.mark.parametrize(
    ("elem_type", "shape", "expected"),
    [
        (TensorProto.STRING, [1, 4], "unsupported dtype"),
        (TensorProto.BFLOAT16, [1, 4], "unsupported dtype"),
        (TensorProto.FLOAT, [1] * 9, "beyond rank 8"),
        (TensorProto.FLOAT, [1, 2**21], "beyond rank 8 or side"),
        (TensorProto.FLOAT, [2**20] * 3, "more than any array can hold"),
    ],
    ids=["string", "bfloat16", "rank-9", "side-2^21", "2^60-elements"],
)
def test_model_inputs_the_agent_cannot_feed_are_invalid_argument(agent, client, elem_type, shape, expected):
    """No input specs given: the model's own inputs are used, and one the agent cannot feed is
    refused naming it (not an internal error)."""
    client.measure(testing.conv_model(), policy=FAST)  # a worker is up
    pid = agent.service.worker("onnxruntime").pid
    with pytest.raises(AgentError) as excinfo:
        client.measure(testing.identity_model(elem_type, shape, input_name="odd_input"), policy=FAST)
    assert _code(excinfo) == grpc.StatusCode.INVALID_ARGUMENT
    assert "'odd_input'" in excinfo.value.details and expected in excinfo.value.details
    assert "\n" not in excinfo.value.details  # one line, no traceback
    assert agent.service.worker("onnxruntime").pid == pid


def _wait_until(condition, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _threads_waiting_for_the_device() -> int:
    """Threads of this process (the in-process agent's RPC threads) queued in `_device` now;
    the thread holding the device is not there (its `_device` frame is suspended)."""
    waiting = 0
    for frame in sys._current_frames().values():
        while frame is not None and frame.f_code.co_name != "_device":
            frame = frame.f_back
        waiting += frame is not None
    return waiting


def test_a_request_cancelled_while_waiting_for_the_device_frees_its_thread_and_upload(agent):
    """The device is busy (the test holds its lock); a caller uploads and gives up while queued:
    its handler stops waiting (rather than at its deadline, minutes later, holding the model)
    and only then gives its upload slot back."""
    channel = grpc.insecure_channel(agent.address)
    stub = pb_grpc.LatencyAgentStub(channel)
    auth = (("authorization", f"Bearer {TOKEN}"),)
    model = testing.conv_model(seed=7)
    header = pb.MeasureHeader(model_size=len(model), fresh=True, policy=pb.MeasurementPolicy(**FAST.to_dict()))
    agent.service.device_lock.acquire()
    try:
        future = stub.Measure.future(iter([pb.MeasureRequest(header=header), pb.MeasureRequest(model_chunk=model)]),
                                     timeout=120, metadata=auth)
        assert _wait_until(lambda: _threads_waiting_for_the_device() == 1)
        assert agent.service._uploads == 1
        future.cancel()
        assert _wait_until(lambda: _threads_waiting_for_the_device() == 0 and agent.service._uploads == 0)
        assert agent.service._upload_bytes == 0
    finally:
        agent.service.device_lock.release()
        channel.close()


def test_a_stream_that_never_sends_its_header_is_cut_at_the_header_deadline():
    """Without a header a stream holds an RPC thread but no upload slot: it is cancelled at
    header_timeout_s (1 s here), not at the whole-upload deadline (300 s here)."""
    config = AgentConfig(host="127.0.0.1", port=0, backend="onnxruntime", token=TOKEN,
                         header_timeout_s=1.0, receive_timeout_s=300.0)
    server = AgentServer(config).start()
    channel = grpc.insecure_channel(server.address)
    stub = pb_grpc.LatencyAgentStub(channel)
    auth = (("authorization", f"Bearer {TOKEN}"),)
    stop = threading.Event()

    def silent():
        stop.wait(120)
        yield from ()

    try:
        future = stub.Measure.future(silent(), timeout=120, metadata=auth)
        error = future.exception(timeout=60)
        assert error is not None and error.code() == grpc.StatusCode.CANCELLED
        assert server.service._uploads == 0
        with AgentClient(server.address, token=TOKEN, timeout_s=30) as client:
            assert client.measure(testing.conv_model(), policy=FAST).runs >= 5
    finally:
        stop.set()
        channel.close()
        server.stop(grace_s=0)


def test_a_late_abort_of_a_finished_call_spares_the_worker():
    # A cancel callback that runs after its request finished (gRPC calls it when the RPC ends)
    # must not kill the worker the next caller is already using.
    from autonad_agent.worker import WorkerProcess

    worker = WorkerProcess("onnxruntime", threads=1, memory_mb=0)
    try:
        request = {"op": "measure", "inputs": [], "precision": "fp32",
                   "policy": MeasurementPolicy(warmup_runs=1, warmup_ms=0, min_runs=3, min_duration_ms=1,
                                               max_runs=10, max_cv=100, max_repeats=0).to_dict()}
        first = object()
        worker.call(request, testing.conv_model(), timeout_s=60, ticket=first)
        pid = worker.pid
        worker.abort("the first caller cancelled, too late", first)
        assert worker.pid == pid  # still the same, running worker
        second = object()
        result, _ = worker.call(request, testing.conv_model(), timeout_s=60, ticket=second)
        assert result["stats"]["runs"] >= 3 and worker.pid == pid
    finally:
        worker.stop()


def test_a_model_is_loaded_as_onnx_whatever_its_bytes_4_to_7_say(client):
    """ONNX Runtime picks the format from bytes 4..7 ("ORTM" = its flatbuffer format), which a
    valid ONNX file can hold in a string field: a file the agent's checks pass as ONNX could
    then run as another model. The agent forces the ONNX format: this file, with "ORTM" at
    bytes 4..7 of an otherwise ordinary model, is measured as the ONNX model it is (it used to
    be refused by ORT's flatbuffer verifier)."""
    import onnx

    model = onnx.load_from_string(testing.conv_model())
    model.ClearField("doc_string")
    crafted = bytes([0x32, 6]) + b"\x00\x00ORTM" + model.SerializeToString()  # field 6 (doc_string) first
    assert crafted[4:8] == b"ORTM" and onnx.load_from_string(crafted).doc_string == "\x00\x00ORTM"
    result = client.measure(crafted, policy=FAST)
    assert result.runs >= 1 and result.median_ms > 0


def test_streams_without_a_header_take_upload_slots_so_health_checks_find_a_thread():
    """A stream that never sends its header holds an RPC thread: it takes an upload slot from
    its start, so beyond the slots (half the threads) such streams are refused at once and a
    health check is answered (all 4 threads used to be taken for the header timeout)."""
    server = AgentServer(AgentConfig(host="127.0.0.1", port=0, backend="onnxruntime", token=TOKEN,
                                     rpc_threads=4, header_timeout_s=20)).start()
    release = threading.Event()

    def silent():
        release.wait(30)
        yield from ()

    channel = grpc.insecure_channel(server.address)
    try:
        stub = pb_grpc.LatencyAgentStub(channel)
        auth = (("authorization", f"Bearer {TOKEN}"),)
        calls = [stub.Measure.future(silent(), timeout=30, metadata=auth) for _ in range(4)]
        refused = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(refused) < 2:
            refused = [c for c in calls if c.done()]
            time.sleep(0.05)
        assert len(refused) == 2 and all(c.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for c in refused)
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5, metadata=auth)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        release.set()
        channel.close()
        server.stop(grace_s=0)


def test_a_port_in_use_stops_the_workers_started_for_it():
    """grpcio raises when it cannot bind (it used to return 0): the workers started before the
    bind must not outlive the failed start (on TensorRT each holds a CUDA context)."""
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        server = AgentServer(AgentConfig(host="127.0.0.1", port=taken.getsockname()[1], backend="onnxruntime",
                                         token=TOKEN))
        with pytest.raises(RuntimeError):
            server.start()
        assert server.service.worker("onnxruntime").pid is None
    finally:
        taken.close()
