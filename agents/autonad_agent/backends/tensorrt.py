"""TensorRT backend: builds engines from ONNX on this device's GPU and times them with CUDA events.

* `tensorrt` and `pycuda` are imported lazily; `probe()` reports why the backend cannot run
  (package missing, TensorRT older than 10, no GPU) instead of raising.
* Custom ops: the ``autonad::SpatialShift`` plugin is loaded (ctypes) from the agent's own
  install only -- ``autonad_agent/plugins/lib``, written by ``autonad-agent build-plugin``
  -- never from a path, library or engine supplied by a caller.
* Two TensorRT tracks: 10.x builds weakly typed networks and gets fp16 from
  ``BuilderFlag.FP16``; 11.x removed the precision flags and builds strongly typed networks
  only, so an fp16 engine needs an fp16 ONNX model. Which path was taken is logged and
  written into every engine manifest.
* Engines are built with fixed shapes (the request's, or the model's static ones). A
  built engine is checked against ONNX Runtime on the same random input (with SpatialShift
  lowered to Slice/Concat for ONNX Runtime) and the maximum absolute error goes into the
  manifest.

Torch-free, like the whole agent.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import shutil
import subprocess
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from autonad_agent import plugin_build
from autonad_agent.plugin_identity import SPATIAL_SHIFT_PLUGIN
from autonad_agent.backends.base import (
    Backend,
    BackendCapabilities,
    BackendUnavailable,
    EngineArtifact,
    LoadedModel,
    ModelRejected,
    Precision,
    TensorSpec,
)

log = logging.getLogger(__name__)

PLUGIN_OP, PLUGIN_DOMAIN, PLUGIN_VERSION = SPATIAL_SHIFT_PLUGIN.name, SPATIAL_SHIFT_PLUGIN.namespace, SPATIAL_SHIFT_PLUGIN.version
# Fixed, so tactic choices (and thus latencies) do not depend on the free memory of the moment.
WORKSPACE_BYTES = 1 << 30
MANIFEST_WARMUP_RUNS = 10
MANIFEST_TIMED_RUNS = 50
ENGINE_CACHE_SIZE = 4
# Relative (to max |reference|) error above which the ONNX Runtime check says "mismatch".
# fp32 engines may use TF32 (TensorRT's default on Ampere and newer).
CHECK_TOLERANCE = {Precision.FP32: 1e-2, Precision.FP16: 5e-2}

_INIT_ERRORS = {1: "TensorRT returned no plugin registry", 2: "the registry refused the creator",
                3: f"another library already registered {SPATIAL_SHIFT_PLUGIN.op} v{PLUGIN_VERSION}", 4: "internal error"}


# ----------------------------------------------------------------------------- runtime import
@dataclass(frozen=True)
class _Runtime:
    trt: Any  # the tensorrt module
    cuda: Any  # pycuda.driver
    major: int

    @property
    def version(self) -> str:
        return str(self.trt.__version__)

    @property
    def strongly_typed_only(self) -> bool:
        return self.major >= 11


_runtime: Optional[_Runtime] = None
_runtime_error: Optional[str] = None
_lock = threading.Lock()


def _import_runtime() -> _Runtime:
    """Import tensorrt and pycuda once per process; BackendUnavailable saying what is missing."""
    global _runtime, _runtime_error
    with _lock:
        if _runtime is not None:
            return _runtime
        if _runtime_error is None:
            _runtime_error = _try_import_runtime()
        if _runtime is None:
            raise BackendUnavailable(_runtime_error or "TensorRT not available")
        return _runtime


def _try_import_runtime() -> Optional[str]:
    global _runtime
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or a missing libnvinfer.so surfacing as OSError
        return f"TensorRT not available: the tensorrt Python package does not import ({type(exc).__name__}: {exc})"
    version = str(getattr(trt, "__version__", "0"))
    try:
        major = int(version.split(".")[0])
    except ValueError:
        major = 0
    if major < plugin_build.MIN_TENSORRT_MAJOR:
        return (f"TensorRT not available: version {version} is too old (the agent needs TensorRT >= "
                f"{plugin_build.MIN_TENSORRT_MAJOR}, e.g. JetPack 6)")
    try:
        import pycuda.driver as cuda
    except Exception as exc:
        return f"pycuda not available: pycuda.driver does not import ({type(exc).__name__}: {exc})"
    try:
        cuda.init()
        count = cuda.Device.count()
    except Exception as exc:  # pycuda._driver.Error: no driver, no device, ...
        return f"no usable CUDA GPU: {exc}"
    if count < 1:
        return "no usable CUDA GPU: the CUDA driver reports no device"
    _runtime = _Runtime(trt=trt, cuda=cuda, major=major)
    return None


_trt_logger: Any = None


def _logger(rt: _Runtime) -> Any:
    """One TensorRT logger per process (TensorRT warns when builder and runtime loggers differ)."""
    global _trt_logger
    if _trt_logger is None:
        trt = rt.trt
        severity = trt.ILogger.Severity

        class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, level: Any, msg: str) -> None:
                if level in (severity.INTERNAL_ERROR, severity.ERROR):
                    self.errors = [*self.errors, msg][-20:]
                    log.error("TensorRT: %s", msg)
                elif level == severity.WARNING:
                    log.warning("TensorRT: %s", msg)
                else:
                    log.debug("TensorRT: %s", msg)

        _trt_logger = _Logger()
    return _trt_logger


# ----------------------------------------------------------------------------- the plugin
@dataclass(frozen=True)
class PluginStatus:
    loaded: bool
    path: Path
    detail: str  # build info when loaded, else why not
    sha256: str = ""


_plugin_status: Optional[PluginStatus] = None
_plugin_library: Optional[ctypes.CDLL] = None  # kept alive: the registry points into it


def _find_creator(trt: Any) -> Any:
    registry = trt.get_plugin_registry()
    getter = getattr(registry, "get_creator", None) or registry.get_plugin_creator
    try:
        return getter(PLUGIN_OP, PLUGIN_VERSION, PLUGIN_DOMAIN)
    except Exception:
        return None


def _load_plugin(rt: _Runtime) -> PluginStatus:
    """Load and register the agent's own plugin library, once per process."""
    global _plugin_status, _plugin_library
    with _lock:
        if _plugin_status is None:
            _plugin_status = _try_load_plugin(rt)
            if _plugin_status.loaded:
                log.info("SpatialShift plugin loaded from %s (%s, sha256 %s)", _plugin_status.path,
                         _plugin_status.detail, _plugin_status.sha256[:16])
            else:
                log.warning("SpatialShift plugin unavailable: %s", _plugin_status.detail)
        return _plugin_status


def _try_load_plugin(rt: _Runtime) -> PluginStatus:
    global _plugin_library
    path = plugin_build.installed_plugin_library()
    if not path.is_file():
        return PluginStatus(False, path, f"not built (run `autonad-agent build-plugin`; looked for {path})")
    manifest: dict[str, Any] = {}
    manifest_path = plugin_build.installed_plugin_manifest()
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            manifest = {}
    built_for = str(manifest.get("tensorrt_version", ""))
    if built_for and built_for.split(".")[0] != str(rt.major):
        return PluginStatus(False, path, f"{path} was built for TensorRT {built_for} but the runtime is "
                                         f"{rt.version}: rebuild it with `autonad-agent build-plugin`")
    # Without a manifest (copied by hand, or the manifest lost) the library itself says which
    # libnvinfer it links: loading one of another major would bind a second TensorRT.
    linked = plugin_build.library_tensorrt_major(path)
    if linked is not None and linked != rt.major:
        return PluginStatus(False, path, f"{path} links TensorRT {linked} but the runtime is {rt.version}: "
                                         "rebuild it with `autonad-agent build-plugin`")
    sha256 = plugin_build.sha256_file(path)
    if manifest.get("sha256") and manifest["sha256"] != sha256:
        return PluginStatus(False, path, f"{path} does not match its build manifest: rebuild it with "
                                         "`autonad-agent build-plugin`")
    try:
        # `tensorrt` is imported already, so the library's libnvinfer dependency binds to
        # the very copy the Python bindings use (one plugin registry).
        library = ctypes.CDLL(str(path))
        library.initAutonadPlugins.restype = ctypes.c_int32
        library.initAutonadPlugins.argtypes = []
        library.autonadPluginBuildInfo.restype = ctypes.c_char_p
        library.autonadPluginBuildInfo.argtypes = []
    except (OSError, AttributeError) as exc:
        return PluginStatus(False, path, f"{path} cannot be loaded: {exc}")
    code = int(library.initAutonadPlugins())
    if code != 0:
        return PluginStatus(False, path, f"registering {path} failed: {_INIT_ERRORS.get(code, f'code {code}')}")
    if _find_creator(rt.trt) is None:
        return PluginStatus(False, path, f"{path} registered, but TensorRT's registry has no {PLUGIN_DOMAIN}::"
                                         f"{PLUGIN_OP} v{PLUGIN_VERSION} (linked to another libnvinfer?)")
    _plugin_library = library
    info = (library.autonadPluginBuildInfo() or b"").decode(errors="replace")
    return PluginStatus(True, path, info, sha256)


# ----------------------------------------------------------------------------- ONNX helpers
def _parse_onnx(model_bytes: bytes) -> onnx.ModelProto:
    try:
        return onnx.load_model_from_string(model_bytes)
    except Exception as exc:
        raise ModelRejected(f"not a valid ONNX model ({type(exc).__name__}: {exc})") from None


def _all_nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    def walk(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
        for node in graph.node:
            yield node
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    yield from walk(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for sub in attr.graphs:
                        yield from walk(sub)

    yield from walk(model.graph)
    for function in model.functions:
        yield from function.node


def uses_spatial_shift(model: onnx.ModelProto) -> bool:
    return any(node.op_type == PLUGIN_OP and node.domain == PLUGIN_DOMAIN for node in _all_nodes(model))


def is_fp16_model(model: onnx.ModelProto) -> bool:
    """Whether the model was exported in fp16 (fp16 inputs or weights), as TensorRT 11 needs."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    if any(v.type.tensor_type.elem_type == TensorProto.FLOAT16 for v in inputs):
        return True
    return any(init.data_type == TensorProto.FLOAT16 for init in model.graph.initializer)


def static_input_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """The model's input shapes, which must all be static (ModelRejected otherwise)."""
    initializers = {init.name for init in model.graph.initializer}
    shapes = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") or d.dim_value <= 0 for d in dims):
            raise ModelRejected(f"input {value.name!r} has a dynamic dimension: an engine is built for fixed shapes, "
                                "so export the model with static input shapes")
        shapes[value.name] = tuple(int(d.dim_value) for d in dims)
    return shapes


_INT64_MAX = np.iinfo(np.int64).max
# (axis, step) of groups 0..3; +1 is down/right (y[i] = x[i-1]), -1 is up/left.
_SHIFT_TABLE = {1: ((2, +1), (2, -1), (3, +1), (3, -1)), 2: ((3, +1), (3, -1), (2, +1), (2, -1))}


def _spatial_shift_nodes(x: str, y: str, pattern: int, prefix: str) -> list[onnx.NodeProto]:
    """Standard-op form of one SpatialShift node (Shape/Gather/Mul/Div/Slice/Concat), valid
    for any NCHW shape: channel bounds floor(g*C/4) are computed from the runtime shape."""
    nodes: list[onnx.NodeProto] = []

    def const(name: str, values: list[int]) -> str:
        out = prefix + name
        tensor = numpy_helper.from_array(np.asarray(values, dtype=np.int64), out)
        nodes.append(helper.make_node("Constant", [], [out], value=tensor))
        return out

    def node(op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        out = prefix + name
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    zero, one, four = const("zero", [0]), const("one", [1]), const("four", [4])
    minus_one, end = const("minus_one", [-1]), const("end", [_INT64_MAX])
    axis = {1: const("axis1", [1]), 2: const("axis2", [2]), 3: const("axis3", [3])}
    channels = node("Gather", [node("Shape", [x], "shape"), one], "channels", axis=0)
    bounds = [zero] + [node("Div", [node("Mul", [channels, const(f"g{g}", [g])], f"gc{g}"), four], f"b{g}")
                       for g in (1, 2, 3)] + [channels]
    pieces = []
    for g, (dim, step) in enumerate(_SHIFT_TABLE[pattern]):
        group = node("Slice", [x, bounds[g], bounds[g + 1], axis[1]], f"group{g}")
        if step > 0:  # y[0] = x[0], y[i] = x[i-1]
            parts = [node("Slice", [group, zero, one, axis[dim]], f"head{g}"),
                     node("Slice", [group, zero, minus_one, axis[dim]], f"body{g}")]
        else:  # y[i] = x[i+1], y[-1] = x[-1]
            parts = [node("Slice", [group, one, end, axis[dim]], f"body{g}"),
                     node("Slice", [group, minus_one, end, axis[dim]], f"tail{g}")]
        pieces.append(node("Concat", parts, f"shifted{g}", axis=dim))
    nodes.append(helper.make_node("Concat", pieces, [y], axis=1))
    return nodes


def lower_spatial_shift_for_onnxruntime(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with every autonad::SpatialShift node (top-level graph) replaced by
    standard ops, so ONNX Runtime can compute the reference output of a plugin model."""
    lowered = onnx.ModelProto()
    lowered.CopyFrom(model)
    nodes: list[onnx.NodeProto] = []
    count = 0
    for original in lowered.graph.node:
        if original.op_type != PLUGIN_OP or original.domain != PLUGIN_DOMAIN:
            nodes.append(original)
            continue
        pattern = next((helper.get_attribute_value(a) for a in original.attribute if a.name == "pattern"), None)
        if pattern not in _SHIFT_TABLE or len(original.input) != 1 or len(original.output) != 1:
            raise ModelRejected(f"SpatialShift node {original.name!r} needs one input, one output and pattern 1 or 2")
        nodes.extend(_spatial_shift_nodes(original.input[0], original.output[0], int(pattern),
                                          prefix=f"__autonad_shift{count}_"))
        count += 1
    del lowered.graph.node[:]
    lowered.graph.node.extend(nodes)
    if not uses_spatial_shift(lowered):
        kept = [opset for opset in lowered.opset_import if opset.domain != PLUGIN_DOMAIN]
        del lowered.opset_import[:]
        lowered.opset_import.extend(kept)
    return lowered


# ----------------------------------------------------------------------------- device info
def _run(cmd: list[str]) -> Optional[str]:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    out = proc.stdout.strip()
    return out if proc.returncode == 0 and out else None


@dataclass(frozen=True)
class _GpuInfo:
    name: str
    compute_capability: tuple[int, int]
    driver: str
    jetpack: Optional[str]

    @property
    def cc(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"

    @property
    def fast_fp16(self) -> bool:
        # Pascal consumer parts (6.1) run fp16 at 1/64 rate; everything else we target is fast.
        return self.compute_capability in {(5, 3), (6, 0), (6, 2)} or self.compute_capability >= (7, 0)


def _gpu_info(rt: _Runtime, device: Any) -> _GpuInfo:
    driver = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i", "0"])
    if driver is None:  # Jetson without nvidia-smi: the driver API version is what we can read
        version = int(rt.cuda.get_driver_version())
        driver = f"CUDA driver API {version // 1000}.{(version % 1000) // 10}"
    jetpack = _run(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"])
    return _GpuInfo(name=str(device.name()), compute_capability=tuple(device.compute_capability()),  # type: ignore[arg-type]
                    driver=driver.splitlines()[0], jetpack=jetpack)


# ----------------------------------------------------------------------------- engines
@dataclass(frozen=True)
class _BuiltEngine:
    serialized: bytes
    typing: str  # which precision path was taken, in words
    build_s: float


@dataclass(frozen=True)
class Binding:
    name: str
    mode: str  # "input" or "output"
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "mode": self.mode, "shape": list(self.shape), "dtype": self.dtype}


class TensorRTModel(LoadedModel):
    """A deserialized engine with device buffers for every I/O tensor, inputs filled."""

    def __init__(self, backend: TensorRTBackend, serialized: bytes, inputs: Mapping[str, np.ndarray]) -> None:
        self._backend = backend
        rt = backend._rt
        trt, cuda = rt.trt, rt.cuda
        self._buffers: dict[str, Any] = {}
        self._engine: Any = None
        self._context: Any = None
        self.bindings: list[Binding] = []
        with backend._cuda():
            self._engine = backend._trt_runtime.deserialize_cuda_engine(serialized)
            if self._engine is None:
                raise ModelRejected("TensorRT could not deserialize the engine it built: "
                                    + ("; ".join(backend._log.errors[-3:]) or "see the agent log"))
            try:
                self._context = self._engine.create_execution_context()
                if self._context is None:
                    raise MemoryError("TensorRT could not create an execution context (GPU memory?)")
                self._stream = cuda.Stream()
                self._start, self._end = cuda.Event(), cuda.Event()
                names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
                modes = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
                missing = sorted(n for n in names if modes[n] and n not in inputs)
                if missing:
                    raise ModelRejected(f"no data for engine inputs {missing}")
                for name in names:
                    if modes[name] and any(d < 0 for d in self._engine.get_tensor_shape(name)):
                        self._context.set_input_shape(name, tuple(inputs[name].shape))
                for name in names:
                    shape = tuple(int(d) for d in self._context.get_tensor_shape(name))
                    dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
                    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                    try:
                        buffer = cuda.mem_alloc(max(nbytes, 1))
                    except cuda.MemoryError as exc:
                        raise MemoryError(f"GPU out of memory allocating {name!r} ({nbytes} bytes): {exc}") from None
                    self._buffers[name] = buffer
                    self._context.set_tensor_address(name, int(buffer))
                    self.bindings.append(Binding(name, "input" if modes[name] else "output", shape, dtype.name))
                    if modes[name]:
                        host = np.ascontiguousarray(inputs[name], dtype=dtype)
                        if host.shape != shape:
                            raise ModelRejected(f"input {name!r}: got shape {host.shape}, the engine needs {shape}")
                        cuda.memcpy_htod(buffer, host)
            except BaseException:
                self._release()
                raise

    def run_once(self) -> float:
        if self._context is None:
            raise RuntimeError("model is closed")
        with self._backend._cuda():
            self._start.record(self._stream)
            ok = self._context.execute_async_v3(self._stream.handle)
            self._end.record(self._stream)
            self._end.synchronize()
            if not ok:
                raise RuntimeError("TensorRT execute_async_v3 failed: "
                                   + ("; ".join(self._backend._log.errors[-3:]) or "see the agent log"))
            return float(self._start.time_till(self._end))

    def read_tensor(self, name: str) -> np.ndarray:
        """Copy one I/O tensor (an input as fed, an output of the last run) to the host."""
        if self._context is None:
            raise RuntimeError("model is closed")
        binding = next((b for b in self.bindings if b.name == name), None)
        if binding is None:
            raise KeyError(f"the engine has no tensor {name!r}")
        host = np.empty(binding.shape, dtype=np.dtype(binding.dtype))
        with self._backend._cuda():
            self._backend._rt.cuda.memcpy_dtoh(host, self._buffers[name])
        return host

    def outputs(self) -> dict[str, np.ndarray]:
        """The output tensors of the last run, copied to the host."""
        return {b.name: self.read_tensor(b.name) for b in self.bindings if b.mode == "output"}

    def _release(self) -> None:
        # Execution context before engine before buffers, with the CUDA context current.
        self._context = None
        self._engine = None
        for buffer in self._buffers.values():
            buffer.free()
        self._buffers.clear()

    def close(self) -> None:
        if self._context is None and self._engine is None and not self._buffers:
            return
        with self._backend._cuda():
            self._release()


class TensorRTBackend(Backend):
    name = "tensorrt"
    supports_address_space_limit: ClassVar[bool] = False  # CUDA reserves huge virtual ranges

    def __init__(self, threads: Optional[int] = None) -> None:
        super().__init__(threads)
        self._rt = _import_runtime()
        self._log = _logger(self._rt)
        cuda = self._rt.cuda
        try:
            self._device = cuda.Device(0)
            self._cuda_context = self._device.retain_primary_context()
        except Exception as exc:
            raise BackendUnavailable(f"no usable CUDA GPU: {exc}") from None
        self._gpu = _gpu_info(self._rt, self._device)
        self.plugin = _load_plugin(self._rt)  # after `import tensorrt`: see _try_load_plugin
        with self._cuda():
            self._trt_runtime = self._rt.trt.Runtime(self._log)
        self._engines: OrderedDict[tuple[Any, ...], _BuiltEngine] = OrderedDict()
        log.info("TensorRT %s (%s track: %s) on %s (sm %s)", self._rt.version, f"{self._rt.major}.x",
                 self._precision_path(), self._gpu.name, self._gpu.cc)

    # -- Backend interface ------------------------------------------------------------
    @classmethod
    def probe(cls) -> tuple[bool, str]:
        try:
            rt = _import_runtime()
        except BackendUnavailable as exc:
            return False, str(exc)
        try:
            device = rt.cuda.Device(0)
            gpu = f"{device.name()} (sm {'.'.join(map(str, device.compute_capability()))})"
        except Exception as exc:
            return False, f"no usable CUDA GPU: {exc}"
        library = plugin_build.installed_plugin_library()
        plugin = f"plugin library {library}" if library.is_file() else "plugin not built (autonad-agent build-plugin)"
        return True, f"TensorRT {rt.version} ({rt.major}.x track) on {gpu}; SpatialShift {plugin}"

    def fingerprint(self) -> dict[str, str]:
        fields = {
            "runtime": "tensorrt",
            "runtime_version": self._rt.version,
            "device": self._gpu.name,
            "compute_capability": self._gpu.cc,
            "driver": self._gpu.driver,
            "threads": "n/a (GPU runtime)",
            "tensorrt_workspace_bytes": str(WORKSPACE_BYTES),
        }
        if self._gpu.jetpack:
            fields["jetpack"] = self._gpu.jetpack
        if self.plugin.loaded:
            fields["trt_plugin_sha256"] = self.plugin.sha256
        return fields

    def capabilities(self) -> BackendCapabilities:
        precisions = (Precision.FP32, Precision.FP16) if self._gpu.fast_fp16 else (Precision.FP32,)
        details = {
            "tensorrt": self._rt.version,
            "tensorrt_track": f"{self._rt.major}.x",
            "precision_path": self._precision_path(),
            "gpu": f"{self._gpu.name} (sm {self._gpu.cc})",
            "spatial_shift_plugin": (f"{self.plugin.detail}; {self.plugin.path}" if self.plugin.loaded
                                     else f"unavailable: {self.plugin.detail}"),
        }
        return BackendCapabilities(
            precisions=precisions,
            can_build_engine=True,
            custom_op_domains=(PLUGIN_DOMAIN,) if self.plugin.loaded else (),
            details=details,
        )

    def load(self, model_bytes: bytes, inputs: Sequence[TensorSpec], precision: Precision) -> TensorRTModel:
        shapes = {spec.name: tuple(int(d) for d in spec.shape) for spec in inputs}
        built = self._build_cached(model_bytes, precision, shapes)
        rng = np.random.default_rng(0)
        feed = {spec.name: spec.random_array(rng) for spec in inputs}
        model = TensorRTModel(self, built.serialized, feed)
        try:
            self.first_run(model)  # runtime failures surface here, as a rejection
        except MemoryError:  # the device's state, not the model's fault: reported as memory
            model.close()
            raise
        except Exception as exc:
            model.close()
            raise ModelRejected(f"TensorRT cannot run the model: {exc}") from None
        return model

    def build_engine(self, onnx_bytes: bytes, precision: Precision) -> EngineArtifact:
        model = _parse_onnx(onnx_bytes)
        shapes = static_input_shapes(model)
        # The inputs the engine is timed on, checked before the (minutes-long) build: an input
        # type or size no array can be drawn for is the model's fault (INVALID_ARGUMENT).
        specs = []
        initializers = {init.name for init in model.graph.initializer}
        try:
            for value in model.graph.input:
                if value.name not in initializers:
                    dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
                    specs.append(TensorSpec(value.name, shapes[value.name], np.dtype(dtype).name))
        except (ValueError, TypeError, KeyError) as exc:
            raise ModelRejected(f"cannot feed the model's inputs: {exc}") from None
        built = self._build_cached(onnx_bytes, precision, shapes)
        rng = np.random.default_rng(0)
        feed = {spec.name: spec.random_array(rng) for spec in specs}
        with TensorRTModel(self, built.serialized, feed) as engine_model:
            # The first under the agent's first-run limit: an engine that never returns must not
            # hold the device for the whole build budget.
            self.first_run(engine_model)
            for _ in range(MANIFEST_WARMUP_RUNS - 1):
                engine_model.run_once()
            times = np.array([engine_model.run_once() for _ in range(MANIFEST_TIMED_RUNS)])
            outputs = engine_model.outputs()
            bindings = list(engine_model.bindings)
        check = self._check_against_onnxruntime(model, feed, outputs, precision)
        manifest = {
            "backend": self.name,
            "runtime_version": self._rt.version,
            "tensorrt_track": f"{self._rt.major}.x",
            "precision": precision.value,
            "precision_path": built.typing,
            "device": self._gpu.name,
            "compute_capability": self._gpu.cc,
            "driver": self._gpu.driver,
            "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
            "engine_sha256": hashlib.sha256(built.serialized).hexdigest(),
            "bindings": json.dumps([b.to_dict() for b in bindings]),
            "latency_ms_median": f"{float(np.median(times)):.6f}",
            "latency_ms_min": f"{float(times.min()):.6f}",
            "latency_runs": str(len(times)),
            "build_seconds": f"{built.build_s:.1f}",
            "workspace_bytes": str(WORKSPACE_BYTES),
            "plugin_library": str(self.plugin.path) if self.plugin.loaded else "none",
            "plugin_sha256": self.plugin.sha256 if self.plugin.loaded else "none",
            "plugin_build_info": self.plugin.detail if self.plugin.loaded else "none",
            "uses_spatial_shift_plugin": str(uses_spatial_shift(model)).lower(),
            **check,
        }
        if self._gpu.jetpack:
            manifest["jetpack"] = self._gpu.jetpack
        return EngineArtifact(engine=built.serialized, manifest=manifest)

    # -- internals ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _cuda(self) -> Iterator[None]:
        """Make the GPU's primary context current on the calling thread for the duration."""
        self._cuda_context.push()
        try:
            yield
        finally:
            self._rt.cuda.Context.pop()

    def _precision_path(self) -> str:
        if self._rt.strongly_typed_only:
            return ("strongly typed networks (TensorRT 11+): precision comes from the ONNX model; "
                    "fp16 needs an fp16 export")
        return "weakly typed networks (TensorRT 10): fp16 via BuilderFlag.FP16"

    def _build_cached(
        self, model_bytes: bytes, precision: Precision, shapes: dict[str, tuple[int, ...]]
    ) -> _BuiltEngine:
        key = (hashlib.sha256(model_bytes).hexdigest(), precision.value, tuple(sorted(shapes.items())))
        if key in self._engines:
            self._engines.move_to_end(key)
            return self._engines[key]
        built = self._build(model_bytes, precision, shapes)
        self._engines[key] = built
        while len(self._engines) > ENGINE_CACHE_SIZE:
            self._engines.popitem(last=False)
        return built

    def _build(self, model_bytes: bytes, precision: Precision, shapes: dict[str, tuple[int, ...]]) -> _BuiltEngine:
        trt = self._rt.trt
        model = _parse_onnx(model_bytes)
        if uses_spatial_shift(model) and not self.plugin.loaded:
            raise ModelRejected(f"the model uses {PLUGIN_DOMAIN}::{PLUGIN_OP} but the TensorRT plugin is unavailable "
                                f"on this device: {self.plugin.detail}")
        if precision is Precision.FP16 and not self._gpu.fast_fp16:
            raise ModelRejected(f"{self._gpu.name} (sm {self._gpu.cc}) has no fast fp16: measure fp32")
        fp16_model = is_fp16_model(model)
        if self._rt.strongly_typed_only:
            if precision is Precision.FP16 and not fp16_model:
                raise ModelRejected(f"TensorRT {self._rt.version} builds strongly typed networks only: an fp16 engine "
                                    "needs an fp16 ONNX model (export it in fp16); this model is fp32")
            if precision is Precision.FP32 and fp16_model:
                raise ModelRejected(f"TensorRT {self._rt.version} builds strongly typed networks only and this ONNX "
                                    "model is fp16: ask for fp16, or send an fp32 export")
            typing = f"strongly typed (TensorRT {self._rt.version}): {precision.value} from the ONNX model's types"
        elif precision is Precision.FP16:
            typing = f"weakly typed (TensorRT {self._rt.version}) with BuilderFlag.FP16"
        else:
            typing = f"weakly typed (TensorRT {self._rt.version}), fp32 (TF32 allowed)"
        log.info("building a %s engine: %s", precision.value, typing)

        with self._cuda():
            builder = trt.Builder(self._log)
            # 10.x: 0 = weakly typed (explicit batch is the only mode since 10.0);
            # 11.x: strongly typed is always on and its flag is deprecated.
            network = builder.create_network(0)
            parser = trt.OnnxParser(network, self._log)
            self._log.errors = []
            if not parser.parse(model_bytes):
                errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
                raise ModelRejected(f"TensorRT {self._rt.version} cannot parse the model: {errors or 'unknown error'}")
            config = builder.create_builder_config()
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
            if precision is Precision.FP16 and not self._rt.strongly_typed_only:
                config.set_flag(trt.BuilderFlag.FP16)
            self._fix_input_shapes(builder, network, config, shapes)
            started = time.monotonic()
            serialized = builder.build_serialized_network(network, config)
            elapsed = time.monotonic() - started
            if serialized is None:
                raise ModelRejected("TensorRT could not build an engine: "
                                    + ("; ".join(self._log.errors[-3:]) or "see the agent log"))
            engine_bytes = bytes(memoryview(serialized))
        log.info("engine built in %.1f s (%d bytes)", elapsed, len(engine_bytes))
        return _BuiltEngine(serialized=engine_bytes, typing=typing, build_s=elapsed)

    @staticmethod
    def _fix_input_shapes(builder: Any, network: Any, config: Any, shapes: dict[str, tuple[int, ...]]) -> None:
        """Pin every input to its requested shape; dynamic dims get a min=opt=max profile."""
        names = [network.get_input(i).name for i in range(network.num_inputs)]
        if set(names) != set(shapes):
            raise ModelRejected(f"inputs {sorted(shapes)} do not match the network's inputs {sorted(names)}")
        profile = None
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            declared = tuple(int(d) for d in tensor.shape)
            wanted = shapes[tensor.name]
            if len(declared) != len(wanted) or any(d >= 0 and d != w for d, w in zip(declared, wanted)):
                raise ModelRejected(f"input {tensor.name!r}: shape {wanted} does not fit the model's {declared}")
            if any(d < 0 for d in declared):
                profile = profile or builder.create_optimization_profile()
                profile.set_shape(tensor.name, wanted, wanted, wanted)
        if profile is not None:
            config.add_optimization_profile(profile)

    def _check_against_onnxruntime(self, model: onnx.ModelProto, feed: Mapping[str, np.ndarray],
                                   outputs: Mapping[str, np.ndarray], precision: Precision) -> dict[str, str]:
        """Max abs error of the engine's outputs vs ONNX Runtime (CPU) on the same input."""
        try:
            import onnxruntime as ort

            reference_model = lower_spatial_shift_for_onnxruntime(model)
            from autonad_agent.backends.onnxruntime import only_onnx

            options = only_onnx(ort.SessionOptions())
            options.log_severity_level = 3
            session = ort.InferenceSession(reference_model.SerializeToString(), sess_options=options,
                                           providers=["CPUExecutionProvider"])
            names = [o.name for o in session.get_outputs()]
            reference = dict(zip(names, session.run(names, dict(feed))))
        except Exception as exc:
            log.warning("ONNX Runtime reference check skipped: %s", exc)
            return {"output_check": f"skipped: ONNX Runtime could not run the model ({type(exc).__name__}: {exc})"}
        max_err = 0.0
        max_ref = 0.0
        for name, want in reference.items():
            got = outputs.get(name)
            if got is None or got.shape != want.shape:
                return {"output_check": f"mismatch: output {name!r} missing or of another shape in the engine"}
            want64, got64 = want.astype(np.float64), got.astype(np.float64)
            if not np.array_equal(np.isfinite(want64), np.isfinite(got64)):
                return {"output_check": f"mismatch: non-finite values differ in output {name!r}"}
            finite = np.isfinite(want64)
            if finite.any():
                max_err = max(max_err, float(np.abs(got64 - want64)[finite].max()))
                max_ref = max(max_ref, float(np.abs(want64)[finite].max()))
        tolerance = CHECK_TOLERANCE[precision]
        relative = max_err / max(max_ref, 1e-12)
        verdict = "ok" if relative <= tolerance else "mismatch"
        if verdict != "ok":
            log.warning("engine output differs from ONNX Runtime: max abs err %.3g (max |ref| %.3g)", max_err, max_ref)
        return {
            "output_check": f"{verdict} (relative error {relative:.3g}, tolerance {tolerance:g})",
            "ort_max_abs_err": f"{max_err:.6g}",
            "ort_max_abs_ref": f"{max_ref:.6g}",
        }
