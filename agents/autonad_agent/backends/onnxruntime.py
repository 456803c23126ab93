"""ONNX Runtime backend: CPU everywhere, the CUDA execution provider where it is installed."""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import Sequence

import numpy as np

from autonad_agent.backends.base import (
    Backend,
    BackendCapabilities,
    LoadedModel,
    ModelRejected,
    Precision,
    TensorSpec,
)
from autonad_agent.fingerprint import usable_cpu_count

try:
    import onnxruntime as ort
except ImportError as _import_error:  # reported by probe(); the agent still starts
    ort = None
    _IMPORT_ERROR: str = str(_import_error)
else:
    _IMPORT_ERROR = ""


def session_options(threads: int) -> "ort.SessionOptions":
    """The options every model this backend times runs with (benchmarks use them too)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: warnings would flood the agent log
    only_onnx(options)
    return options


def only_onnx(options: "ort.SessionOptions") -> "ort.SessionOptions":
    """Load the bytes as an ONNX protobuf, never as an ORT-format flatbuffer: ORT picks the
    format from bytes 4..7 ("ORTM"), which an ONNX file can hold (in its producer name or doc
    string), so a file the agent's checks passed as ONNX could run as another model."""
    options.add_session_config_entry("session.load_model_format", "ONNX")
    return options


def _gpu_description() -> dict[str, str]:
    """GPU name and driver via nvidia-smi (no CUDA bindings needed); empty if unavailable."""
    if shutil.which("nvidia-smi") is None:
        return {}
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader", "-i", "0"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    name, _, driver = out.strip().partition(",")
    return {"device": name.strip(), "driver": driver.strip()} if name.strip() else {}


class OnnxRuntimeModel(LoadedModel):
    def __init__(self, session: "ort.InferenceSession", feed: dict[str, np.ndarray]) -> None:
        self._session: ort.InferenceSession | None = session
        self._feed = feed
        self._outputs = [output.name for output in session.get_outputs()]

    def run_once(self) -> float:
        assert self._session is not None, "model is closed"
        # session.run is synchronous (it returns host arrays), so wall time is device time.
        start = time.perf_counter_ns()
        self._session.run(self._outputs, self._feed)
        return (time.perf_counter_ns() - start) / 1e6

    def close(self) -> None:
        self._session = None


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, threads: int | None = None) -> None:
        # Pin the intra-op thread count: ORT's default depends on the machine and is what
        # the latency depends on most on a CPU, so it must be explicit and reported.
        super().__init__(threads or usable_cpu_count())
        available = ort.get_available_providers() if ort is not None else []
        self.provider = "CUDAExecutionProvider" if "CUDAExecutionProvider" in available else "CPUExecutionProvider"

    @classmethod
    def probe(cls) -> tuple[bool, str]:
        if ort is None:
            return False, f"onnxruntime does not import: {_IMPORT_ERROR}"
        return True, f"onnxruntime {ort.__version__}"

    def fingerprint(self) -> dict[str, str]:
        fields = {
            "runtime": "onnxruntime",
            "runtime_version": ort.__version__,
            "execution_provider": self.provider,
            "threads": str(self.threads),
        }
        if self.provider == "CUDAExecutionProvider":
            fields.update(_gpu_description())
        return fields

    def capabilities(self) -> BackendCapabilities:
        return BackendCapabilities(
            precisions=(Precision.FP32,),
            details={"execution_provider": self.provider, "intra_op_threads": str(self.threads)},
        )

    def load(self, model_bytes: bytes, inputs: Sequence[TensorSpec], precision: Precision) -> OnnxRuntimeModel:
        if precision is not Precision.FP32:
            raise ModelRejected(
                f"the onnxruntime backend measures fp32 only (got {precision.value}); "
                "use the tensorrt backend for fp16"
            )
        options = session_options(self.threads)
        try:
            session = ort.InferenceSession(model_bytes, sess_options=options, providers=[self.provider])
        except Exception as exc:  # ORT raises its own pybind exception types (Fail, InvalidGraph, ...)
            raise _rejection("onnxruntime cannot load the model", exc) from None
        rng = np.random.default_rng(0)
        feed = {spec.name: spec.random_array(rng) for spec in inputs}
        model = OnnxRuntimeModel(session, feed)
        try:
            self.first_run(model)  # shape/dtype mismatches surface here, as a rejection
        except Exception as exc:
            raise _rejection(f"onnxruntime cannot run the model with inputs {list(inputs)}", exc) from None
        return model


def _rejection(context: str, exc: Exception) -> Exception:
    """ModelRejected, or MemoryError when ORT failed to allocate (the worker's memory
    limit or the device's memory, not a fault of the model's structure)."""
    message = str(exc)
    if "Failed to allocate memory" in message or "bad_alloc" in message or "bad allocation" in message:
        return MemoryError(f"{context}: {message}")
    return ModelRejected(f"{context}: {message}")
