"""The interface every latency backend implements (ONNX Runtime, TensorRT, ...).

A backend knows how to load a model on this device and time ONE inference. Everything
else -- warm-up, the timed-run loop, statistics, outliers, caching, process isolation --
is shared code in `autonad_agent.measure` and `autonad_agent.worker`, so every backend is
measured the same way.

Backends are constructed and used inside the agent's worker process (never in the gRPC
server process), so a runtime that crashes while parsing or running a model only takes
the worker down. They must not import torch.

Contract for implementers:

* `probe()` is a cheap classmethod: can this backend run here? It must not raise; it
  returns `(False, "why")` when e.g. the runtime does not import or there is no GPU.
* `load()` raises `ModelRejected` for a model the runtime refuses (parse error, unknown
  op, unsupported precision) and `BackendUnavailable` when the runtime itself cannot
  work. Any other exception is reported to the caller as an internal error.
* `LoadedModel.run_once()` runs one inference on pre-allocated inputs and returns its
  latency in milliseconds, measured the most precise way the device allows (CUDA events
  around the enqueue + sync for TensorRT, `time.perf_counter_ns` for a CPU runtime). It
  must include the wait for the result, and nothing else (no host-side input creation).
* `build_engine()` is optional: the default raises `BackendUnavailable`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, ClassVar, Sequence

import numpy as np


class Precision(str, Enum):
    """Numeric precision the backend is asked to run the model in."""

    FP32 = "fp32"
    FP16 = "fp16"


MAX_NAME_CHARS = 1024
MAX_RANK = 8
MAX_DIM = 1 << 20  # per dimension; a tensor's total size is bounded by the worker's memory limit
MAX_INPUTS = 256


@dataclass(frozen=True)
class TensorSpec:
    """One model input: its graph name, a fully static shape and a numpy dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("tensor name must not be empty")
        if len(self.name) > MAX_NAME_CHARS:
            raise ValueError(f"input name of {len(self.name)} characters (at most {MAX_NAME_CHARS})")
        if any(int(d) <= 0 for d in self.shape):
            raise ValueError(f"input {self.name!r}: shape {self.shape} must be fully static and positive")
        if len(self.shape) > MAX_RANK or any(int(d) > MAX_DIM for d in self.shape):
            raise ValueError(f"input {self.name!r}: shape {self.shape} beyond rank {MAX_RANK} or side {MAX_DIM}")
        try:
            dtype = np.dtype(self.dtype)
        except TypeError:
            raise ValueError(f"input {self.name!r}: unknown dtype {self.dtype!r}") from None
        # Only what `random_array` can fill: no object, complex, string or void inputs.
        if dtype.kind not in "fiub":
            raise ValueError(f"input {self.name!r}: unsupported dtype {self.dtype} (numbers and bool only)")

    def random_array(self, rng: np.random.Generator) -> np.ndarray:
        """A random tensor of this spec (values do not affect latency for dense conv nets)."""
        dtype = np.dtype(self.dtype)
        if dtype.kind == "f":
            return rng.standard_normal(self.shape).astype(dtype)
        if dtype.kind in "iu":
            return rng.integers(0, 2, size=self.shape).astype(dtype)
        if dtype.kind == "b":
            return rng.integers(0, 2, size=self.shape).astype(bool)
        raise ValueError(f"input {self.name!r}: unsupported dtype {self.dtype}")


class BackendError(Exception):
    """Base class of the errors a backend reports on purpose."""


class BackendUnavailable(BackendError):
    """The runtime cannot do this here (not installed, no GPU, feature unsupported).

    The agent maps it to gRPC FAILED_PRECONDITION. Start the message with what is missing,
    e.g. "TensorRT not available: libnvinfer.so.10 not found".
    """


class ModelRejected(BackendError):
    """The runtime refuses this model or request (parse error, unknown op, bad precision).

    The agent maps it to gRPC INVALID_ARGUMENT.
    """


@dataclass(frozen=True)
class BackendCapabilities:
    """What a backend can do on this device (reported by GetDeviceInfo)."""

    precisions: tuple[Precision, ...]
    can_build_engine: bool = False
    # Custom ONNX op domains (besides the standard ones) the backend accepts; the agent
    # refuses any other custom domain before the model reaches the runtime.
    custom_op_domains: tuple[str, ...] = ()
    # Free-form, human-readable details: execution providers, plugin versions, ...
    details: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineArtifact:
    """A serialized, device-specific engine plus a manifest describing how it was built."""

    engine: bytes
    # At least: backend, runtime_version, precision, device, and the ONNX sha256.
    manifest: dict[str, str]


class LoadedModel(abc.ABC):
    """A model loaded on the device with its inputs already allocated."""

    @abc.abstractmethod
    def run_once(self) -> float:
        """Run one inference and return its latency in milliseconds (device timing)."""

    def close(self) -> None:
        """Release the session/engine and device buffers. Idempotent."""

    def __enter__(self) -> LoadedModel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Backend(abc.ABC):
    """A latency backend. Subclasses set `name` and implement the abstract methods."""

    # Stable identifier used on the wire and in latency tables: "onnxruntime", "tensorrt".
    name: ClassVar[str]
    # The worker caps its address space (RLIMIT_AS) so a runaway model fails cleanly. CUDA
    # reserves a huge virtual range at context creation, so GPU backends set this False and
    # the worker caps the data segment (RLIMIT_DATA) instead.
    supports_address_space_limit: ClassVar[bool] = True

    def __init__(self, threads: int | None = None) -> None:
        # Intra-op CPU threads; None lets the backend choose, but it must then report
        # the number it actually uses in `fingerprint()["threads"]`.
        self.threads = threads
        # Called just before a loaded model's first inference: the worker reports it, so that
        # the agent can stop a first run that never ends (see `first_run`).
        self.before_first_run: Callable[[], None] | None = None
        # Called once it returned: the first-run limit no longer applies to the runs after it.
        self.after_first_run: Callable[[], None] | None = None

    def first_run(self, model: "LoadedModel") -> float:
        """A freshly loaded model's first inference (backends' `load` ends with it, an engine
        build's timing starts with it)."""
        if self.before_first_run is not None:
            self.before_first_run()
        latency = model.run_once()
        if self.after_first_run is not None:
            self.after_first_run()
        return latency

    @classmethod
    @abc.abstractmethod
    def probe(cls) -> tuple[bool, str]:
        """Whether this backend can run here, and a reason (version string or what is missing)."""

    @abc.abstractmethod
    def fingerprint(self) -> dict[str, str]:
        """Backend part of the device fingerprint.

        Keys (include those that are readable): "runtime", "runtime_version", "device"
        (e.g. GPU name; omit for CPU runtimes, the agent adds the CPU model), "driver",
        "jetpack", "power_mode", "clocks", "execution_provider", "threads".
        Values must be stable across agent restarts on an unchanged device (no current
        clock readings, no temperatures): a change means the latency table is stale.
        """

    @abc.abstractmethod
    def capabilities(self) -> BackendCapabilities:
        """What this backend supports on this device."""

    @abc.abstractmethod
    def load(self, model_bytes: bytes, inputs: Sequence[TensorSpec], precision: Precision) -> LoadedModel:
        """Parse `model_bytes` (ONNX), build a session/engine for `precision`, allocate inputs."""

    def build_engine(self, onnx_bytes: bytes, precision: Precision) -> EngineArtifact:
        """Compile `onnx_bytes` into a deployable engine for this device."""
        raise BackendUnavailable(f"{self.name} cannot build engines")
