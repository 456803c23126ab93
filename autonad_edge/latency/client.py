"""`AgentClient`: one connection to one latency agent.

Every call carries a deadline and the bearer token; models are streamed in chunks so
their size is not bound by gRPC's message limit. gRPC failures surface as `AgentError`
naming the agent and the status code, so the pool can tell a dead agent (retry
elsewhere) from a bad request (do not).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Iterator, Sequence, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from autonad_agent.backends.base import TensorSpec
from autonad_agent.host_state import HostState
from autonad_agent.measure import STAT_FIELDS, LatencyStats, MeasurementPolicy
from autonad_agent.proto import latency_agent_pb2 as pb
from autonad_agent.proto import latency_agent_pb2_grpc as pb_grpc
from autonad_edge.errors import AutonadError
from autonad_edge.latency.fingerprint import Fingerprint

SERVICE_NAME = "autonad.agent.v1.LatencyAgent"
DEFAULT_CHUNK_BYTES = 1024 * 1024
# Engines come back in 1 MiB chunks; leave headroom for the envelope.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# Status codes meaning "this agent is gone or hung", worth retrying on another agent.
RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# How an agent's RESOURCE_EXHAUSTED says "all upload slots taken, retry later" (server.py).
BUSY_PREFIX = "agent busy"

_PRECISIONS = {"fp32": pb.PRECISION_FP32, "fp16": pb.PRECISION_FP16}
_PRECISION_NAMES = {pb.PRECISION_UNSPECIFIED: "fp32", pb.PRECISION_FP32: "fp32", pb.PRECISION_FP16: "fp16"}

T = TypeVar("T")


class AgentError(AutonadError, RuntimeError):
    """A call to an agent failed. `code` is the gRPC status code."""

    def __init__(self, address: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"agent {address}: {code.name}: {details}")
        self.address = address
        self.code = code
        self.details = details

    @property
    def retryable(self) -> bool:
        """Whether another agent may succeed (this one is unreachable or timed out)."""
        return self.code in RETRYABLE_CODES

    @property
    def busy(self) -> bool:
        """The agent refused for now (its upload slots or bytes were taken, "agent busy ...;
        retry later"): the same agent may take the request in a moment. A model over the
        agent's size limit is RESOURCE_EXHAUSTED too, and final."""
        return self.code == grpc.StatusCode.RESOURCE_EXHAUSTED and self.details.startswith(BUSY_PREFIX)


class AgentUnreachable(AgentError):
    """No connection to the agent could be established in time."""

    def __init__(self, address: str, timeout_s: float) -> None:
        super().__init__(address, grpc.StatusCode.UNAVAILABLE, f"unreachable (no connection within {timeout_s:g} s)")


def _precision_to_wire(precision: str) -> int:
    try:
        return _PRECISIONS[precision]
    except KeyError:
        raise ValueError(f"precision must be one of {', '.join(_PRECISIONS)}, got {precision!r}") from None


HOST_FIELDS = tuple(f.name for f in fields(HostState))


def _spec_from_wire(spec: pb.TensorSpec) -> TensorSpec:
    return TensorSpec(spec.name, tuple(spec.shape), spec.dtype or "float32")


def _fingerprint_from_wire(message: pb.DeviceFingerprint) -> Fingerprint | None:
    return Fingerprint(dict(message.fields)) if message.fields else None


@dataclass(frozen=True)
class Measurement(LatencyStats):
    """A complete latency measurement of one model on one device: the agent's statistics
    and how, where and of what they were taken."""

    # False when the coefficient of variation stayed above the policy's max_cv (flagged).
    stable: bool
    attempts: int
    warmup_runs: int
    cached: bool
    backend: str
    precision: str
    inputs: tuple[TensorSpec, ...]
    policy: MeasurementPolicy
    model_sha256: str
    fingerprint: Fingerprint
    agent: str
    host: HostState = HostState()  # the device's load and clocks as the measurement started

    @classmethod
    def from_wire(cls, response: pb.MeasureResponse, agent: str) -> Measurement:
        stats = response.stats
        fingerprint = _fingerprint_from_wire(response.fingerprint)
        if fingerprint is None:
            raise AgentError(agent, grpc.StatusCode.DATA_LOSS, "measurement without a device fingerprint")
        policy = response.policy
        return cls(
            **{name: getattr(stats, name) for name in STAT_FIELDS}, stable=response.stable, attempts=response.attempts,
            warmup_runs=response.warmup_runs, cached=response.cached, backend=response.backend,
            precision=_PRECISION_NAMES[response.precision],
            inputs=tuple(_spec_from_wire(spec) for spec in response.inputs),
            policy=MeasurementPolicy(
                warmup_runs=policy.warmup_runs, warmup_ms=policy.warmup_ms, min_runs=policy.min_runs,
                min_duration_ms=policy.min_duration_ms, max_runs=policy.max_runs, max_cv=policy.max_cv,
                max_repeats=policy.max_repeats,
            ),
            model_sha256=response.model_sha256, fingerprint=fingerprint, agent=agent,
            host=HostState(**{f: getattr(response.host, f) for f in HOST_FIELDS}),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what `autonad-edge latency measure --json` prints)."""
        return {
            **asdict(self.stats()), "stable": self.stable, "attempts": self.attempts,
            "warmup_runs": self.warmup_runs, "cached": self.cached, "backend": self.backend,
            "precision": self.precision,
            "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in self.inputs],
            "policy": self.policy.to_dict(), "model_sha256": self.model_sha256, "agent": self.agent,
            "fingerprint": {"hash": self.fingerprint.hash, "fields": dict(self.fingerprint.fields)},
            "host": self.host.to_dict(),
        }


@dataclass(frozen=True)
class BackendInfo:
    name: str
    available: bool
    reason: str
    precisions: tuple[str, ...] = ()
    can_build_engine: bool = False
    custom_op_domains: tuple[str, ...] = ()
    details: dict[str, str] = field(default_factory=dict)
    # Present for every available backend (the agent starts a worker for each).
    fingerprint: Fingerprint | None = None


@dataclass(frozen=True)
class DeviceInfo:
    address: str
    agent_version: str
    default_backend: str
    backends: tuple[BackendInfo, ...]
    max_model_bytes: int
    auth_required: bool
    tls: bool
    # The agent's device-time budgets in seconds (0: an agent too old to report them).
    max_request_s: float = 0.0
    first_run_timeout_s: float = 0.0
    max_build_s: float = 0.0

    def backend(self, name: str | None = None) -> BackendInfo:
        """The named backend's info (the default backend when `name` is None)."""
        wanted = name or self.default_backend
        for info in self.backends:
            if info.name == wanted:
                return info
        raise KeyError(f"agent {self.address} knows no backend {wanted!r}")


@dataclass(frozen=True)
class Engine:
    """A deployable engine built on (and only valid for) the agent's device."""

    engine: bytes
    manifest: dict[str, str]
    fingerprint: Fingerprint | None


class AgentClient:
    """A client of one agent. Thread-safe (gRPC channels are); close() when done."""

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        tls_ca: bytes | None = None,
        tls_server_name: str | None = None,
        timeout_s: float = 600.0,
        connect_timeout_s: float = 5.0,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        if not 0 < chunk_bytes <= MAX_MESSAGE_BYTES // 2:
            raise ValueError(f"chunk_bytes must be in (0, {MAX_MESSAGE_BYTES // 2}]")
        self.address = address
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.chunk_bytes = chunk_bytes
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        if tls_server_name:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        if tls_ca is not None:
            self._channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=tls_ca), options)
        else:
            self._channel = grpc.insecure_channel(address, options)
        self._stub = pb_grpc.LatencyAgentStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def __repr__(self) -> str:
        return f"AgentClient({self.address!r})"

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except grpc.RpcError as exc:
            raise AgentError(self.address, exc.code(), exc.details() or "") from None

    def connect(self, timeout_s: float | None = None) -> None:
        """Wait until the agent answers (a health check, which needs no token);
        AgentUnreachable after `timeout_s`. (Not grpc.channel_ready_future: its polling
        thread raises if the channel is closed right after.)"""
        timeout = self.connect_timeout_s if timeout_s is None else timeout_s
        try:
            self.health(timeout)
        except AgentError as exc:
            if exc.retryable:
                raise AgentUnreachable(self.address, timeout) from None
            raise

    def health(self, timeout_s: float = 5.0, *, wait_for_ready: bool = True) -> str:
        """The agent's serving status ("SERVING", "NOT_SERVING", ...); no token needed.
        `wait_for_ready=False` fails at once (UNAVAILABLE) if there is no connection."""
        request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
        response = self._call(
            lambda: self._health.Check(request, timeout=timeout_s, wait_for_ready=wait_for_ready)
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def device_info(self, timeout_s: float = 10.0) -> DeviceInfo:
        response = self._call(
            lambda: self._stub.GetDeviceInfo(pb.GetDeviceInfoRequest(), timeout=timeout_s, metadata=self._metadata)
        )
        return DeviceInfo(
            address=self.address,
            agent_version=response.agent_version,
            default_backend=response.default_backend,
            backends=tuple(
                BackendInfo(
                    name=b.name, available=b.available, reason=b.reason,
                    precisions=tuple(_PRECISION_NAMES[p] for p in b.precisions),
                    can_build_engine=b.can_build_engine, custom_op_domains=tuple(b.custom_op_domains),
                    details=dict(b.details), fingerprint=_fingerprint_from_wire(b.fingerprint),
                )
                for b in response.backends
            ),
            max_model_bytes=response.max_model_bytes,
            auth_required=response.auth_required,
            tls=response.tls,
            max_request_s=response.max_request_s,
            first_run_timeout_s=response.first_run_timeout_s,
            max_build_s=response.max_build_s,
        )

    def _chunks(self, model: bytes) -> Iterator[bytes]:
        for offset in range(0, len(model), self.chunk_bytes):
            yield model[offset : offset + self.chunk_bytes]

    def measure(
        self,
        onnx_bytes: bytes,
        inputs: Sequence[TensorSpec] | None = None,
        *,
        backend: str | None = None,
        precision: str = "fp32",
        policy: MeasurementPolicy | None = None,
        timeout_s: float | None = None,
        fresh: bool = False,
    ) -> Measurement:
        """Measure `onnx_bytes` on the agent. `inputs=None` uses the model's static input
        shapes; `backend=None` the agent's default backend; `fresh` measures again even if
        the agent has an identical request's result cached."""
        if not onnx_bytes:
            raise ValueError("empty model")
        wire_policy = pb.MeasurementPolicy(**(policy or MeasurementPolicy()).to_dict())
        header = pb.MeasureHeader(
            inputs=[pb.TensorSpec(name=s.name, shape=s.shape, dtype=s.dtype) for s in inputs or ()],
            backend=backend or "",
            precision=_precision_to_wire(precision),
            policy=wire_policy,
            model_size=len(onnx_bytes),
            fresh=fresh,
        )

        def requests() -> Iterator[pb.MeasureRequest]:
            yield pb.MeasureRequest(header=header)
            for chunk in self._chunks(onnx_bytes):
                yield pb.MeasureRequest(model_chunk=chunk)

        timeout = self.timeout_s if timeout_s is None else timeout_s
        response = self._call(lambda: self._stub.Measure(requests(), timeout=timeout, metadata=self._metadata))
        return Measurement.from_wire(response, self.address)

    def build_engine(
        self,
        onnx_bytes: bytes,
        *,
        backend: str = "tensorrt",
        precision: str = "fp16",
        timeout_s: float | None = None,
    ) -> Engine:
        """Build a deployable engine for the agent's device from `onnx_bytes`."""
        header = pb.BuildEngineHeader(
            backend=backend, precision=_precision_to_wire(precision), model_size=len(onnx_bytes)
        )

        def requests() -> Iterator[pb.BuildEngineRequest]:
            yield pb.BuildEngineRequest(header=header)
            for chunk in self._chunks(onnx_bytes):
                yield pb.BuildEngineRequest(model_chunk=chunk)

        timeout = self.timeout_s if timeout_s is None else timeout_s

        def receive() -> Engine:
            stream = self._stub.BuildEngine(requests(), timeout=timeout, metadata=self._metadata)
            first = next(stream, None)
            if first is None or first.WhichOneof("payload") != "manifest":
                raise AgentError(self.address, grpc.StatusCode.DATA_LOSS, "engine stream did not start with a manifest")
            engine = bytearray()
            for message in stream:
                engine += message.engine_chunk
            manifest = first.manifest
            if len(engine) != manifest.engine_size or hashlib.sha256(engine).hexdigest() != manifest.engine_sha256:
                raise AgentError(self.address, grpc.StatusCode.DATA_LOSS, "engine size or checksum mismatch")
            return Engine(bytes(engine), dict(manifest.fields), _fingerprint_from_wire(manifest.fingerprint))

        return self._call(receive)
