"""The worker process: everything that touches an untrusted model runs here.

Parsing, session/engine creation and timing all happen in a child process with a
memory limit, so a model that crashes the runtime (ONNX Runtime segfaults on some fuzzed
graphs) or exhausts memory takes down only the worker; the gRPC server reports a clear
error and starts a fresh worker. One warm worker per backend is kept and reused, since
importing a runtime and creating a CUDA context take seconds.

Parent and worker talk over the worker's stdin/stdout with length-prefixed frames: a JSON
header plus an optional binary payload. JSON rather than pickle, because a worker that a
hostile model compromised must not be able to run code in the server by what it sends back.
The worker moves its stdout to stderr first, so stray prints from a runtime cannot corrupt
the channel.

    python -m autonad_agent.worker --backend onnxruntime [--threads N] [--memory-mb M]
    python -m autonad_agent.worker --probe
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    import onnx

_FRAME_HEAD = struct.Struct(">IQ")  # JSON header length, payload length
MAX_HEADER_BYTES = 1 << 20
# Test-only hook, never reachable by a caller: it is read from the agent's own
# environment at worker start. A worker started with it aborts (like a runtime segfault)
# while loading a model that has an input of this name.
TEST_ABORT_ENV = "AUTONAD_AGENT_TESTING_ABORT_ON_INPUT"

log = logging.getLogger("autonad_agent.worker")


FIRST_RUN_PHASE = "running the model once"
AFTER_FIRST_RUN_PHASE = "running the model"


# Error messages are cut to this many UTF-8 bytes. A message may echo a hostile model's own
# strings (a 2 MB op domain): it must fit a frame header (MAX_HEADER_BYTES) and, once in the
# gRPC status, the client's metadata limit (8 KiB soft, 16 KiB hard; non-ASCII bytes are
# percent-encoded to 3 each), so it is capped in bytes, not characters.
MAX_ERROR_BYTES = 2000


def clip_message(message: str, limit: int = MAX_ERROR_BYTES) -> str:
    """`message` cut to about `limit` UTF-8 bytes, its start and its end kept (what went wrong
    is often said after the echoed string) and the cut marked; always encodable (a lone
    surrogate becomes "?")."""
    encoded = message.encode("utf-8", "replace")
    if len(encoded) <= limit:
        return encoded.decode("utf-8")
    # A character split by a cut is dropped (and counted as cut).
    head = encoded[: limit * 3 // 4].decode("utf-8", "ignore")
    tail = encoded[len(encoded) - limit // 4 :].decode("utf-8", "ignore")
    return f"{head} ... ({len(message) - len(head) - len(tail)} characters cut) ... {tail}"


def error_message(kind: str, message: str) -> dict[str, Any]:
    """The frame that reports a failed request (or start) to the agent."""
    return {"type": "error", "kind": kind, "message": clip_message(message)}


class WorkerError(Exception):
    """A request the worker could not complete. `kind` selects the gRPC status:
    rejected, unavailable, memory, crashed, timeout, cancelled or internal."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class FrameTooLarge(ValueError):
    """A frame header over MAX_HEADER_BYTES, refused before a byte is written (the channel stays
    in step)."""


def write_frame(stream: BinaryIO, header: dict[str, Any], payload: bytes = b"") -> None:
    head = json.dumps(header).encode()
    if len(head) > MAX_HEADER_BYTES:
        # Checked here, not only by the reader: names within their character limit can still
        # encode past it (a non-ASCII character is 6-12 bytes of JSON escape).
        raise FrameTooLarge(f"frame header of {len(head)} bytes (at most {MAX_HEADER_BYTES})")
    stream.write(_FRAME_HEAD.pack(len(head), len(payload)))
    stream.write(head)
    stream.write(payload)
    stream.flush()


def _read_exact_blocking(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if data is None or len(data) != size:
        raise EOFError("channel closed")
    return data


def read_frame_blocking(stream: BinaryIO) -> tuple[dict[str, Any], bytes]:
    head_len, payload_len = _FRAME_HEAD.unpack(_read_exact_blocking(stream, _FRAME_HEAD.size))
    if head_len > MAX_HEADER_BYTES:
        raise ValueError(f"frame header of {head_len} bytes is too large")
    header = json.loads(_read_exact_blocking(stream, head_len))
    payload = _read_exact_blocking(stream, payload_len) if payload_len else b""
    return header, payload


# --------------------------------------------------------------------------- worker side


def _limit_memory(memory_mb: int, address_space: bool) -> None:
    import resource

    limit = memory_mb * 1024 * 1024
    which = resource.RLIMIT_AS if address_space else resource.RLIMIT_DATA
    soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(which, (limit, hard))


def _probe_all() -> dict[str, Any]:
    from autonad_agent.backends import BACKENDS, probe_backend

    return {"probes": {name: list(probe_backend(name)) for name in BACKENDS}}


class _WorkerLoop:
    def __init__(self, channel: BinaryIO, backend_name: str, threads: int | None) -> None:
        from autonad_agent.backends import backend_class
        from autonad_agent.fingerprint import host_fingerprint

        self.channel = channel
        self.backend = backend_class(backend_name)(threads=threads)
        self.capabilities = self.backend.capabilities()
        # The agent stops a model whose first inference never ends (an endless Loop, a
        # pathological graph) long before the request's budget.
        self.backend.before_first_run = lambda: self._phase(FIRST_RUN_PHASE)
        self.backend.after_first_run = lambda: self._phase(AFTER_FIRST_RUN_PHASE)
        self.fingerprint = {**host_fingerprint(), **self.backend.fingerprint(), "backend": backend_name}
        self.abort_on_input = os.environ.get(TEST_ABORT_ENV) or None

    def ready_message(self) -> dict[str, Any]:
        caps = asdict(self.capabilities)
        caps["precisions"] = [p.value for p in self.capabilities.precisions]
        return {"type": "ready", "fingerprint": self.fingerprint, "capabilities": caps}

    def _phase(self, phase: str) -> None:
        write_frame(self.channel, {"type": "phase", "phase": phase})

    def _checked_model(self, model_bytes: bytes) -> onnx.ModelProto:
        from autonad_agent.validation import check_model, parse_model

        self._phase("parsing the model")
        model = parse_model(model_bytes)
        check_model(model, self.capabilities.custom_op_domains)
        return model

    def measure(self, request: dict[str, Any], model_bytes: bytes) -> tuple[dict[str, Any], bytes]:
        from autonad_agent.backends.base import Precision, TensorSpec
        from autonad_agent.measure import MeasurementPolicy, measure_latency
        from autonad_agent.validation import resolve_inputs

        model = self._checked_model(model_bytes)
        requested = [TensorSpec(s["name"], tuple(s["shape"]), s["dtype"]) for s in request["inputs"]]
        inputs = resolve_inputs(model, requested)
        del model
        policy = MeasurementPolicy(**request["policy"])
        self._phase("loading the model")
        if self.abort_on_input and any(spec.name == self.abort_on_input for spec in inputs):
            os.abort()
        with self.backend.load(model_bytes, inputs, Precision(request["precision"])) as loaded:
            self._phase("timing the model")
            result = measure_latency(loaded.run_once, policy)
        return {
            "stats": asdict(result.stats),
            "stable": result.stable,
            "attempts": result.attempts,
            "warmup_runs": result.warmup_runs,
            "inputs": [asdict(spec) for spec in inputs],
        }, b""

    def build_engine(self, request: dict[str, Any], model_bytes: bytes) -> tuple[dict[str, Any], bytes]:
        from autonad_agent.backends.base import Precision

        self._checked_model(model_bytes)
        self._phase("building the engine")
        artifact = self.backend.build_engine(model_bytes, Precision(request["precision"]))
        return {"manifest": {str(k): str(v) for k, v in artifact.manifest.items()}}, artifact.engine

    def serve(self) -> None:
        from autonad_agent.backends.base import BackendUnavailable, ModelRejected

        handlers = {"measure": self.measure, "build_engine": self.build_engine}
        while True:
            try:
                request, payload = read_frame_blocking(sys.stdin.buffer)
            except EOFError:
                return  # the server closed the channel: shut down
            try:
                header, result_payload = handlers[request["op"]](request, payload)
                header["type"] = "result"
            except ModelRejected as exc:
                header, result_payload = error_message("rejected", str(exc)), b""
            except BackendUnavailable as exc:
                header, result_payload = error_message("unavailable", str(exc)), b""
            except MemoryError as exc:
                header, result_payload = error_message("memory", str(exc)), b""
            except Exception as exc:
                log.exception("request failed")
                header, result_payload = error_message("internal", f"{type(exc).__name__}: {exc}"), b""
            write_frame(self.channel, header, result_payload)


PARENT_POLL_S = 0.5


def _exit_with_parent(parent_pid: int) -> None:
    """Exit at once when the agent that started this worker is gone, even mid-measurement: a
    SIGKILLed agent must not leave a worker timing a model for nobody (the worker is reparented,
    so its parent pid changes). A thread, because a measurement does not return to the loop."""

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(3)
            time.sleep(PARENT_POLL_S)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def worker_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="autonad agent worker (started by the agent)")
    parser.add_argument("--backend")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--memory-mb", type=int, default=0)
    parser.add_argument("--parent-pid", type=int, default=0, help="exit when this process is gone")
    parser.add_argument("--probe", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    if args.parent_pid:
        _exit_with_parent(args.parent_pid)

    # Keep a private handle on the real stdout for frames; point fd 1 at stderr.
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    if args.probe:
        write_frame(channel, _probe_all())
        return 0
    from autonad_agent.backends import backend_class

    cls = backend_class(args.backend)
    if args.memory_mb:
        _limit_memory(args.memory_mb, cls.supports_address_space_limit)
    try:
        loop = _WorkerLoop(channel, args.backend, args.threads or None)
    except Exception as exc:
        write_frame(channel, error_message("unavailable", f"{type(exc).__name__}: {exc}"))
        return 1
    write_frame(channel, loop.ready_message())
    loop.serve()
    return 0


# --------------------------------------------------------------------------- server side


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker reported at start: the device fingerprint and backend capabilities."""

    fingerprint: dict[str, str]
    capabilities: dict[str, Any]


def _worker_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "autonad_agent.worker", *args]


class _Channel:
    """Reads frames from a worker's stdout with a deadline (select + os.read)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()

    def _read_exact(self, size: int, deadline: float) -> bytes:
        chunks = bytearray()
        while len(chunks) < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if not ready:
                raise TimeoutError
            data = os.read(self.fd, min(size - len(chunks), 1 << 20))
            if not data:
                raise EOFError
            chunks += data
        return bytes(chunks)

    def read_frame(self, deadline: float) -> tuple[dict[str, Any], bytes]:
        head_len, payload_len = _FRAME_HEAD.unpack(self._read_exact(_FRAME_HEAD.size, deadline))
        if head_len > MAX_HEADER_BYTES:
            raise EOFError  # a corrupt channel is treated like a dead worker
        header = json.loads(self._read_exact(head_len, deadline))
        payload = self._read_exact(payload_len, deadline) if payload_len else b""
        return header, payload


def probe_backends(timeout_s: float = 120.0) -> dict[str, tuple[bool, str]]:
    """Which backends can run on this machine, probed in a throwaway process (importing a
    runtime into the server process could crash it, and costs memory there)."""
    proc = subprocess.Popen(_worker_command("--probe"), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        header, _ = _Channel(proc).read_frame(time.monotonic() + timeout_s)
    except (EOFError, TimeoutError) as exc:
        raise RuntimeError(f"probing the backends failed ({type(exc).__name__}, exit {proc.poll()})") from None
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    return {name: (bool(ok), str(reason)) for name, (ok, reason) in header["probes"].items()}


class WorkerProcess:
    """One warm worker for one backend. Not for concurrent use: the agent serialises
    requests with its device lock (and so does the lock here, defensively)."""

    def __init__(self, backend: str, *, threads: int | None, memory_mb: int, startup_timeout_s: float = 120.0) -> None:
        self.backend = backend
        self.threads = threads
        self.memory_mb = memory_mb
        self.startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen | None = None
        self._channel: _Channel | None = None
        self._info: WorkerInfo | None = None
        self._lock = threading.Lock()
        self._aborted: str | None = None  # why the request in flight was stopped
        # The ticket of the call in flight, and a lock that makes "is it still that call?" and
        # the kill one step: a caller's late abort must not kill the next caller's request.
        self._ticket: object | None = None
        self._abort_lock = threading.Lock()

    def abort(self, reason: str, ticket: object | None = None) -> None:
        """Stop the request in flight now (from another thread: the caller gave up): the worker
        is killed, `call` raises WorkerError("cancelled"), the next call starts a fresh one.
        With `ticket` (the one given to `call`), only while that call is in flight."""
        with self._abort_lock:
            if ticket is not None and self._ticket is not ticket:
                return
            proc = self._proc
            if proc is not None and proc.poll() is None:
                self._aborted = reason
                proc.kill()

    @property
    def pid(self) -> int | None:
        """The running worker's process id (None when none runs)."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def info(self) -> WorkerInfo | None:
        """What the current (or last) worker reported at start; None before the first start."""
        return self._info

    def start(self) -> WorkerInfo:
        with self._lock:
            return self._ensure_started()

    def _ensure_started(self) -> WorkerInfo:
        if self._proc is not None and self._proc.poll() is None:
            assert self._info is not None
            return self._info
        self._discard()
        args = ["--backend", self.backend, "--memory-mb", str(self.memory_mb), "--parent-pid", str(os.getpid())]
        if self.threads:
            args += ["--threads", str(self.threads)]
        self._proc = subprocess.Popen(_worker_command(*args), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._channel = _Channel(self._proc)
        try:
            header, _ = self._channel.read_frame(time.monotonic() + self.startup_timeout_s)
        except (EOFError, TimeoutError):
            self._discard()
            raise WorkerError("unavailable", f"the {self.backend} worker failed to start") from None
        if header.get("type") != "ready":
            self._discard()
            raise WorkerError("unavailable", f"the {self.backend} worker failed to start: {header.get('message')}")
        self._info = WorkerInfo(fingerprint=header["fingerprint"], capabilities=header["capabilities"])
        log.info("%s worker started (pid %d)", self.backend, self._proc.pid)
        return self._info

    def call(self, request: dict[str, Any], payload: bytes, timeout_s: float,
             first_run_timeout_s: float | None = None, ticket: object | None = None) -> tuple[dict[str, Any], bytes]:
        """Send one request and wait for its result, at most `timeout_s` in all and at most
        `first_run_timeout_s` for a model's first inference. Raises WorkerError; a crashed or
        timed-out worker is killed here and replaced on the next call. `ticket`: what an
        `abort` of this call names."""
        with self._lock:
            with self._abort_lock:
                self._ticket, self._aborted = ticket, None
            try:
                return self._call(request, payload, timeout_s, first_run_timeout_s)
            finally:
                with self._abort_lock:
                    self._ticket = None

    def _call(self, request: dict[str, Any], payload: bytes, timeout_s: float,
              first_run_timeout_s: float | None) -> tuple[dict[str, Any], bytes]:
        # The caller holds self._lock.
        self._ensure_started()
        assert self._proc is not None and self._proc.stdin is not None and self._channel is not None
        deadline = time.monotonic() + timeout_s
        first_run_deadline = None
        wait_until = deadline
        phase = "receiving the request"
        try:
            try:
                write_frame(self._proc.stdin, request, payload)
            except FrameTooLarge as exc:
                raise WorkerError("rejected", f"request too large for the worker: {exc}; use shorter "
                                              "input names") from None
            while True:
                wait_until = deadline if first_run_deadline is None else min(deadline, first_run_deadline)
                header, result = self._channel.read_frame(wait_until)
                if header["type"] == "phase":
                    phase = header["phase"]
                    first_run_deadline = (time.monotonic() + first_run_timeout_s
                                          if phase == FIRST_RUN_PHASE and first_run_timeout_s else None)
                    continue
                if header["type"] == "error":
                    if header["kind"] == "memory":
                        self._discard()  # state after an allocation failure is suspect
                        limit = f"worker memory limit ({self.memory_mb} MiB)" if self.memory_mb else "memory"
                        raise WorkerError("memory", f"out of {limit} while {phase}")
                    raise WorkerError(header["kind"], header["message"])
                return header, result
        except TimeoutError:
            self._discard()
            if wait_until < deadline:  # the first-run limit, not the request's budget, ran out
                raise WorkerError("timeout", f"the model's first inference did not finish within "
                                             f"{first_run_timeout_s:g} s; worker restarted") from None
            raise WorkerError("timeout", f"worker timed out after {timeout_s:.0f} s (the request's budget) "
                                         f"while {phase}; restarted") from None
        except (EOFError, BrokenPipeError, json.JSONDecodeError, KeyError):
            reason = self._exit_reason()
            if self._aborted is not None:
                raise WorkerError("cancelled", f"stopped while {phase}: {self._aborted}") from None
            raise WorkerError("crashed", f"worker crashed ({reason}) while {phase}") from None

    def _exit_reason(self) -> str:
        assert self._proc is not None
        try:
            code = self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._discard()
            return "channel broken"
        self._discard()
        if code < 0:
            try:
                return f"signal {-code}, {signal.Signals(-code).name}"
            except ValueError:
                return f"signal {-code}"
        return f"exit code {code}"

    def _discard(self) -> None:
        proc, self._proc, self._channel = self._proc, None, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass

    def stop(self) -> None:
        """Kill the worker now, even mid-request (that request then fails as crashed)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
        with self._lock:
            self._discard()


if __name__ == "__main__":
    sys.exit(worker_main())
