"""The gRPC latency agent: authentication, limits, the device lock, the result cache.

Only the server lives in this process; every model is handled by a `WorkerProcess`.
Requests are serialised on the device by one lock, so concurrent callers never disturb
each other's timings; uploads happen before the lock is taken, so a slow upload does not
hold the device.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import logging
import threading
import time
from collections import OrderedDict
from concurrent import futures
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from autonad_agent import __version__
from autonad_agent.backends import BACKENDS
from autonad_agent.backends.base import MAX_INPUTS, Precision, TensorSpec
from autonad_agent.fingerprint import fingerprint_hash
from autonad_agent.host_state import read_host_state
from autonad_agent.measure import MeasurementPolicy
from autonad_agent.proto import latency_agent_pb2 as pb
from autonad_agent.proto import latency_agent_pb2_grpc as pb_grpc
from autonad_agent.worker import WorkerError, WorkerProcess, clip_message, probe_backends

log = logging.getLogger("autonad_agent")

SERVICE_NAME = "autonad.agent.v1.LatencyAgent"
# Models are streamed, so one message never needs to be large: clients send 1 MiB chunks.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
ENGINE_CHUNK_BYTES = 1024 * 1024
TOKEN_MIN_LENGTH = 16
# A stream must send its header this soon: until it does it holds an RPC thread but no upload
# slot, so the whole-upload deadline (a minute) would let idle streams take every thread.
HEADER_TIMEOUT_S = 10.0
# A request waiting for the device checks this often whether its caller is still there, so a
# cancelled one frees its thread and upload at once instead of at its deadline.
DEVICE_WAIT_STEP_S = 0.2

_PRECISION_FROM_WIRE = {
    pb.PRECISION_UNSPECIFIED: Precision.FP32,
    pb.PRECISION_FP32: Precision.FP32,
    pb.PRECISION_FP16: Precision.FP16,
}
PRECISION_TO_WIRE = {Precision.FP32: pb.PRECISION_FP32, Precision.FP16: pb.PRECISION_FP16}
_WORKER_ERROR_CODES = {
    "rejected": grpc.StatusCode.INVALID_ARGUMENT,
    "unavailable": grpc.StatusCode.FAILED_PRECONDITION,
    "memory": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "crashed": grpc.StatusCode.INTERNAL,
    "timeout": grpc.StatusCode.DEADLINE_EXCEEDED,
    "cancelled": grpc.StatusCode.CANCELLED,
    "internal": grpc.StatusCode.INTERNAL,
}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class AgentConfig:
    """Everything `autonad-agent serve` configures."""

    host: str = "127.0.0.1"
    port: int = 50051  # 0 picks a free port
    backend: str = "auto"
    # The bearer token callers must present; None only together with insecure_no_auth.
    token: str | None = None
    insecure_no_auth: bool = False
    tls_cert: bytes | None = None
    tls_key: bytes | None = None
    max_model_mb: int = 256
    threads: int | None = None
    worker_memory_mb: int = 8192  # 0: no limit
    # Device-time budget of one Measure request (parsing, loading, warm-up and timed runs),
    # whatever deadline the caller set; beyond it the worker is killed and restarted and the
    # caller gets DEADLINE_EXCEEDED. TensorRT builds an engine per request: keep it >= a minute.
    max_request_s: float = 120.0
    # A model's first inference must end this long after it starts (an endless Loop is stopped
    # here, not at the end of the request's budget).
    first_run_timeout_s: float = 20.0
    # Budget of one BuildEngine request: a full TensorRT build on a Jetson takes minutes.
    max_build_s: float = 1800.0
    shutdown_grace_s: float = 5.0
    cache_entries: int = 1024
    rpc_threads: int = 8
    # An upload's header must arrive this soon after the call starts, and the upload must be
    # complete receive_timeout_s after its header arrived; a stalled one is cut.
    header_timeout_s: float = HEADER_TIMEOUT_S
    receive_timeout_s: float = 60.0
    # Uploads received at once (None: half the RPC threads, so health checks and device info
    # always find a thread) and the bytes they may declare together (None: twice the model
    # limit): beyond either, RESOURCE_EXHAUSTED at once instead of a queue of idle streams.
    max_uploads: int | None = None
    max_upload_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.token is None and not self.insecure_no_auth:
            raise ValueError("no token configured: pass --token-file, or --insecure-no-auth to run without one")
        if self.token is None and not is_loopback(self.host):
            raise ValueError(f"--insecure-no-auth serves on loopback only (127.0.0.1, ::1, localhost), not "
                             f"{self.host!r}: anyone who can reach the agent could use it; pass --token-file")
        if self.token is not None and len(self.token) < TOKEN_MIN_LENGTH:
            raise ValueError(f"the token must be at least {TOKEN_MIN_LENGTH} characters")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and a key")
        if self.backend != "auto" and self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; choose auto or one of {', '.join(BACKENDS)}")
        if self.max_model_mb < 1:
            raise ValueError("max_model_mb must be >= 1")
        if self.receive_timeout_s <= 0 or self.header_timeout_s <= 0:
            raise ValueError("receive_timeout_s and header_timeout_s must be positive")
        if min(self.max_request_s, self.first_run_timeout_s, self.max_build_s) <= 0:
            raise ValueError("max_request_s, first_run_timeout_s and max_build_s must be positive")
        if self.upload_slots < 1:
            raise ValueError("max_uploads must be >= 1 (and rpc_threads >= 2)")

    @property
    def upload_slots(self) -> int:
        return self.max_uploads if self.max_uploads is not None else self.rpc_threads // 2

    @property
    def upload_byte_budget(self) -> int:
        return self.max_upload_bytes if self.max_upload_bytes is not None else 2 * self.max_model_bytes

    @property
    def max_model_bytes(self) -> int:
        return self.max_model_mb * 1024 * 1024


class _BearerTokenInterceptor(grpc.ServerInterceptor):
    """Rejects calls without `authorization: Bearer <token>`; health checks are exempt so
    load balancers and probes need no secret (they reveal only serving status)."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails):
        if handler_call_details.method.startswith("/grpc.health.v1.Health/"):
            return continuation(handler_call_details)
        presented = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                presented = value if isinstance(value, str) else ""
        if hmac.compare_digest(presented.encode(), self._expected):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        return _deny(handler, "missing or invalid bearer token" if presented else "missing bearer token")


def _deny(handler: grpc.RpcMethodHandler | None, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as `handler` that aborts UNAUTHENTICATED."""

    def abort(_request: Any, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler is None or (not handler.request_streaming and not handler.response_streaming):
        return grpc.unary_unary_rpc_method_handler(abort)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    return grpc.unary_stream_rpc_method_handler(abort)


class _ResultCache:
    """LRU cache of measurements of identical requests."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[tuple, pb.MeasureResponse] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> pb.MeasureResponse | None:
        with self._lock:
            response = self._entries.get(key)
            if response is not None:
                self._entries.move_to_end(key)
            return response

    def put(self, key: tuple, response: pb.MeasureResponse) -> None:
        with self._lock:
            self._entries[key] = response
            self._entries.move_to_end(key)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)


def _fingerprint_message(fields: dict[str, str]) -> pb.DeviceFingerprint:
    return pb.DeviceFingerprint(fields=fields, hash=fingerprint_hash(fields))


@contextlib.contextmanager
def _cancel_after(seconds: float, context: grpc.ServicerContext) -> Iterator[None]:
    """Cancel the RPC if the block has not ended within `seconds`: a blocked read of the
    request stream then ends, and its thread is free again."""
    cut = threading.Timer(seconds, context.cancel)
    cut.daemon = True
    cut.start()
    try:
        yield
    finally:
        cut.cancel()


@dataclass
class _Upload:
    header: Any  # pb.MeasureHeader or pb.BuildEngineHeader
    model: bytes
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        self.sha256 = hashlib.sha256(self.model).hexdigest()


class LatencyAgentService(pb_grpc.LatencyAgentServicer):
    def __init__(self, config: AgentConfig, probes: dict[str, tuple[bool, str]], default_backend: str) -> None:
        self.config = config
        self.probes = probes
        self.default_backend = default_backend
        self.workers: dict[str, WorkerProcess] = {}
        self._workers_lock = threading.Lock()
        # One request at a time on the device: concurrent timings would disturb each other.
        self.device_lock = threading.Lock()
        self.cache = _ResultCache(config.cache_entries)
        self._uploads_lock = threading.Lock()
        self._uploads = 0  # uploads in flight (received or waiting for the device)
        self._upload_bytes = 0  # bytes they declared

    # ------------------------------------------------------------------ helpers

    def worker(self, backend: str) -> WorkerProcess:
        with self._workers_lock:
            if backend not in self.workers:
                self.workers[backend] = WorkerProcess(
                    backend, threads=self.config.threads, memory_mb=self.config.worker_memory_mb
                )
            return self.workers[backend]

    def stop_workers(self) -> None:
        with self._workers_lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.stop()

    def _take_upload_slot(self, context: grpc.ServicerContext) -> None:
        """Take an upload slot, before the header says the model's size (`_release_upload`
        gives it back), or refuse at once."""
        with self._uploads_lock:
            full = self._uploads >= self.config.upload_slots
            if not full:
                self._uploads += 1
        if full:
            self._refuse_busy(context)

    def _reserve_upload_bytes(self, context: grpc.ServicerContext, size: int) -> None:
        """Take `size` bytes of the upload budget for the slot held, or refuse at once."""
        with self._uploads_lock:
            full = self._upload_bytes + size > self.config.upload_byte_budget
            if not full:
                self._upload_bytes += size
        if full:
            self._refuse_busy(context)

    def _refuse_busy(self, context: grpc.ServicerContext) -> None:
        """RESOURCE_EXHAUSTED "agent busy": the caller may retry or use another agent."""
        busy = f"{self._uploads} uploads ({self._upload_bytes} bytes) in flight"
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                      f"agent busy: {busy}, limits {self.config.upload_slots} uploads / "
                      f"{self.config.upload_byte_budget} bytes; retry later")

    def _release_upload(self, size: int) -> None:
        with self._uploads_lock:
            self._uploads -= 1
            self._upload_bytes -= size

    @contextlib.contextmanager
    def _upload(self, requests: Iterator, context: grpc.ServicerContext) -> Iterator[_Upload]:
        """Receive the header and the model chunks, enforcing the size limit as they arrive, the
        upload slots and byte budget, and the header and receive deadlines (a stalled stream is
        cancelled so that it frees its thread). The slot is taken before the header is read (a
        stream that sends none holds an RPC thread all the same: beyond the slots, streams are
        refused, so health checks and device info always find a thread) and held until the
        handler leaves the block, not until the RPC ends: a cancelled RPC whose handler still
        holds the model must keep counting against the limits."""
        self._take_upload_slot(context)
        declared = 0
        try:
            with _cancel_after(self.config.header_timeout_s, context):
                first = next(requests, None)
            if first is None or first.WhichOneof("payload") != "header":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be the header")
            header = first.header
            limit = self.config.max_model_bytes
            if header.model_size == 0:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "header.model_size must be the model's size in bytes")
            if header.model_size > limit:
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"model of {header.model_size} bytes exceeds this agent's limit of {limit} bytes",
                )
            self._reserve_upload_bytes(context, header.model_size)
            declared = header.model_size
            with _cancel_after(self.config.receive_timeout_s, context):
                upload = self._receive_chunks(header, requests, context)
            yield upload
        finally:
            self._release_upload(declared)

    def _receive_chunks(self, header, requests: Iterator, context: grpc.ServicerContext) -> _Upload:
        limit = self.config.max_model_bytes
        chunks = bytearray()
        for message in requests:
            if message.WhichOneof("payload") != "model_chunk":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "only model chunks may follow the header")
            chunks += message.model_chunk
            if len(chunks) > header.model_size:
                code = grpc.StatusCode.RESOURCE_EXHAUSTED if len(chunks) > limit else grpc.StatusCode.INVALID_ARGUMENT
                context.abort(code, f"received more than the declared {header.model_size} bytes")
        if len(chunks) != header.model_size:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"incomplete upload: {len(chunks)} of {header.model_size} declared bytes",
            )
        return _Upload(header, bytes(chunks))

    def _check_backend(self, requested: str, context: grpc.ServicerContext) -> str:
        name = requested or self.default_backend
        if name not in self.probes:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          clip_message(f"unknown backend {name!r}; known: {', '.join(self.probes)}"))
        available, reason = self.probes[name]
        if not available:
            label = "TensorRT" if name == "tensorrt" else name
            detail = reason.removeprefix(f"{label} not available: ")
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{label} not available on this agent: {detail}")
        return name

    def _timeout(self, context: grpc.ServicerContext, budget_s: float | None = None) -> float:
        """What is left of the request: the caller's deadline, capped at the agent's budget."""
        budget_s = self.config.max_request_s if budget_s is None else budget_s
        remaining = context.time_remaining()
        return budget_s if remaining is None else min(remaining, budget_s)

    @contextlib.contextmanager
    def _device(self, context: grpc.ServicerContext, budget_s: float | None = None) -> Iterator[None]:
        """Hold the device, waiting at most until the request's deadline (capped at `budget_s`,
        default the measurement budget: a build queued behind another waits up to the build
        budget) and only while the caller is there: a cancelled request must not park its
        thread and upload here."""
        deadline = time.monotonic() + max(self._timeout(context, budget_s), 0.0)
        while not self.device_lock.acquire(timeout=min(DEVICE_WAIT_STEP_S, max(deadline - time.monotonic(), 0.0))):
            if not context.is_active():
                context.abort(grpc.StatusCode.CANCELLED, "the caller is gone")
            if time.monotonic() >= deadline:
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "timed out waiting for the device (busy)")
        try:
            yield
        finally:
            self.device_lock.release()

    def _call_worker(self, context: grpc.ServicerContext, backend: str, request: dict, payload: bytes,
                     budget_s: float | None = None):
        """One worker request (caller holds the device), failures mapped to gRPC errors. A
        caller that cancels (or whose connection drops) stops the worker at once, so the
        device is free for the next request instead of timing a model for nobody."""
        worker = self.worker(backend)
        in_flight = threading.Event()
        ticket = object()  # this request's call: a late callback must not stop the next one

        def on_rpc_end() -> None:  # gRPC calls this when the RPC ends, however it ends
            if in_flight.is_set() and not context.is_active():
                worker.abort("the caller cancelled the request", ticket)

        in_flight.set()
        if not context.add_callback(on_rpc_end):  # the RPC has already ended
            in_flight.clear()
            context.abort(grpc.StatusCode.CANCELLED, "the caller is gone")
        try:
            return worker.call(request, payload, timeout_s=self._timeout(context, budget_s),
                               first_run_timeout_s=self.config.first_run_timeout_s, ticket=ticket)
        except WorkerError as exc:
            message = clip_message(exc.message)  # a model's own strings may be in it, at any size
            log.warning("%s request failed (%s): %s", request["op"], exc.kind, message)
            context.abort(_WORKER_ERROR_CODES.get(exc.kind, grpc.StatusCode.INTERNAL), message)
        finally:
            in_flight.clear()

    # ------------------------------------------------------------------ RPCs

    def Measure(self, request_iterator: Iterator[pb.MeasureRequest], context: grpc.ServicerContext) -> pb.MeasureResponse:
        with self._upload(request_iterator, context) as upload:
            header: pb.MeasureHeader = upload.header
            backend = self._check_backend(header.backend, context)
            try:
                precision = _PRECISION_FROM_WIRE[header.precision]
                if len(header.inputs) > MAX_INPUTS:
                    raise ValueError(f"{len(header.inputs)} input specs (at most {MAX_INPUTS})")
                inputs = [TensorSpec(s.name, tuple(s.shape), s.dtype or "float32") for s in header.inputs]
                policy = MeasurementPolicy.from_wire(
                    **{f.name: value for f, value in header.policy.ListFields()}
                )
            except (KeyError, ValueError, TypeError) as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, clip_message(f"invalid request: {exc}"))
            key = (upload.sha256, tuple(inputs), backend, precision, policy)
            cached = None if header.fresh else self.cache.get(key)
            if cached is None:
                with self._device(context):
                    # An identical request may have been measured while this one waited.
                    cached = None if header.fresh else self.cache.get(key)
                    if cached is None:
                        return self._measure(context, upload, backend, inputs, precision, policy, key)
        response = pb.MeasureResponse()
        response.CopyFrom(cached)
        response.cached = True
        return response

    def _measure(
        self,
        context: grpc.ServicerContext,
        upload: _Upload,
        backend: str,
        inputs: list[TensorSpec],
        precision: Precision,
        policy: MeasurementPolicy,
        cache_key: tuple,
    ) -> pb.MeasureResponse:
        request = {
            "op": "measure",
            "inputs": [asdict(spec) for spec in inputs],
            "precision": precision.value,
            "policy": policy.to_dict(),
        }
        started = time.monotonic()
        host = read_host_state()  # before the worker loads the device itself
        result, _ = self._call_worker(context, backend, request, upload.model)
        info = self.worker(backend).info
        assert info is not None
        response = pb.MeasureResponse(
            stats=pb.LatencyStats(**result["stats"]),
            stable=result["stable"],
            attempts=result["attempts"],
            backend=backend,
            precision=PRECISION_TO_WIRE[precision],
            inputs=[pb.TensorSpec(name=s["name"], shape=s["shape"], dtype=s["dtype"]) for s in result["inputs"]],
            policy=pb.MeasurementPolicy(**policy.to_dict()),
            fingerprint=_fingerprint_message(info.fingerprint),
            model_sha256=upload.sha256,
            warmup_runs=result["warmup_runs"],
            host=pb.HostState(**host.to_dict()),
        )
        # A noisy result is not cached, so asking again measures again.
        if response.stable:
            self.cache.put(cache_key, response)
        log.info(
            "measured %s on %s/%s: median %.3f ms, cv %.3f, %d runs, %.1f s (peer %s)",
            upload.sha256[:12], backend, precision.value, response.stats.median_ms,
            response.stats.cv, response.stats.runs, time.monotonic() - started, context.peer(),
        )
        return response

    def GetDeviceInfo(self, request: pb.GetDeviceInfoRequest, context: grpc.ServicerContext) -> pb.DeviceInfo:
        backends = []
        for name, (available, reason) in self.probes.items():
            backend_info = pb.BackendInfo(name=name, available=available, reason=reason)
            worker = self.workers.get(name)
            if available and worker is not None and worker.info is not None:
                caps = worker.info.capabilities
                backend_info.precisions.extend(PRECISION_TO_WIRE[Precision(p)] for p in caps["precisions"])
                backend_info.can_build_engine = caps["can_build_engine"]
                backend_info.custom_op_domains.extend(caps["custom_op_domains"])
                backend_info.details.update(caps["details"])
                backend_info.fingerprint.CopyFrom(_fingerprint_message(worker.info.fingerprint))
            backends.append(backend_info)
        return pb.DeviceInfo(
            agent_version=__version__,
            default_backend=self.default_backend,
            backends=backends,
            max_model_bytes=self.config.max_model_bytes,
            auth_required=self.config.token is not None,
            tls=self.config.tls_cert is not None,
            max_request_s=self.config.max_request_s,
            first_run_timeout_s=self.config.first_run_timeout_s,
            max_build_s=self.config.max_build_s,
        )

    def BuildEngine(self, request_iterator: Iterator[pb.BuildEngineRequest], context: grpc.ServicerContext):
        with self._upload(request_iterator, context) as upload:
            header: pb.BuildEngineHeader = upload.header
            # Engines are a TensorRT concept: an unnamed backend means TensorRT.
            backend = self._check_backend(header.backend or "tensorrt", context)
            precision = _PRECISION_FROM_WIRE.get(header.precision)
            if precision is None:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown precision {header.precision}")
            request = {"op": "build_engine", "precision": precision.value}
            with self._device(context, self.config.max_build_s):
                result, engine = self._call_worker(context, backend, request, upload.model,
                                                   budget_s=self.config.max_build_s)
            info = self.worker(backend).info
            assert info is not None
            manifest = dict(result["manifest"])
            manifest.setdefault("onnx_sha256", upload.sha256)
            yield pb.BuildEngineResponse(
                manifest=pb.EngineManifest(
                    fields=manifest,
                    engine_size=len(engine),
                    engine_sha256=hashlib.sha256(engine).hexdigest(),
                    fingerprint=_fingerprint_message(info.fingerprint),
                )
            )
            for offset in range(0, len(engine), ENGINE_CHUNK_BYTES):
                yield pb.BuildEngineResponse(engine_chunk=engine[offset : offset + ENGINE_CHUNK_BYTES])


class AgentServer:
    """A running agent: probes backends, starts the default backend's worker, serves gRPC.

        server = AgentServer(AgentConfig(port=0, token=...)).start()
        ... server.port ...
        server.stop()
    """

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.port: int | None = None
        self._server: grpc.Server | None = None
        self._health = health.HealthServicer(experimental_non_blocking=True)
        self.service: LatencyAgentService | None = None

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    def start(self) -> AgentServer:
        config = self.config
        probes = probe_backends()
        if config.backend == "auto":
            default = next((name for name, (ok, _) in probes.items() if ok), None)
            if default is None:
                raise RuntimeError("no latency backend available: " + "; ".join(f"{n}: {r}" for n, (_, r) in probes.items()))
        else:
            ok, reason = probes[config.backend]
            if not ok:
                raise RuntimeError(f"backend {config.backend} not available: {reason}")
            default = config.backend
        self.service = LatencyAgentService(config, probes, default)
        # Start a worker per available backend before accepting calls: no request pays
        # for importing a runtime, GetDeviceInfo can report every backend's fingerprint,
        # and a broken default runtime fails the start instead of the first request.
        for name, (available, _) in probes.items():
            if not available:
                continue
            try:
                self.service.worker(name).start()
            except WorkerError as exc:
                if name == default:
                    self.service.stop_workers()
                    raise RuntimeError(exc.message) from None
                probes[name] = (False, exc.message)
                log.warning("backend %s disabled: %s", name, exc.message)

        interceptors = [] if config.token is None else [_BearerTokenInterceptor(config.token)]
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.rpc_threads, thread_name_prefix="agent-rpc"),
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                # Fail loudly if the port is taken instead of sharing it with another agent.
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=4 * config.rpc_threads,
        )
        pb_grpc.add_LatencyAgentServicer_to_server(self.service, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        bind = f"{config.host}:{config.port}"
        try:
            if config.tls_cert is not None:
                credentials = grpc.ssl_server_credentials([(config.tls_key, config.tls_cert)])
                self.port = self._server.add_secure_port(bind, credentials)
            else:
                self.port = self._server.add_insecure_port(bind)
            if not self.port:  # older grpcio returns 0 where newer raises
                raise RuntimeError(f"cannot listen on {bind}")
            self._server.start()
        except BaseException:
            # The workers started above hold the device (a CUDA context on TensorRT): an
            # embedding process that catches this must not keep them.
            self.service.stop_workers()
            self._server = None
            raise
        for service in ("", SERVICE_NAME):
            self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "autonad-agent %s serving on %s (backend %s, auth %s, TLS %s)", __version__, self.address,
            default, "on" if config.token else "OFF", "on" if config.tls_cert else "off",
        )
        return self

    def stop(self, grace_s: float | None = None) -> None:
        """Report NOT_SERVING, let in-flight calls finish for `grace_s`, stop the workers.

        For the first part of the grace (at most 1 s) the server still accepts calls, so a
        health check in that window is answered NOT_SERVING (what load balancers and pools
        look for) rather than refused; then new calls are refused and in-flight ones finish."""
        if self._server is None:
            return
        self._health.enter_graceful_shutdown()
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        drain = min(1.0, grace / 2)
        if drain > 0:
            time.sleep(drain)
        self._server.stop(grace - drain).wait()
        assert self.service is not None
        self.service.stop_workers()
        self._server = None
        log.info("agent stopped")

    def __enter__(self) -> AgentServer:
        return self.start() if self._server is None else self

    def __exit__(self, *exc_info: object) -> None:
        self.stop(grace_s=0)
