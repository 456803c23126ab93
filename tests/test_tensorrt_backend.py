"""The TensorRT backend, the SpatialShift plugin's host logic and `autonad-agent build-plugin`.

What runs where:

* everywhere: `probe()` explains why TensorRT is unavailable; `build_plugin` names what is
  missing in one line, without a traceback; the SpatialShift -> Slice/Concat lowering used
  for the ONNX Runtime reference is exact; the backend's Python control flow (precision
  paths of TensorRT 10 and 11, manifests, rejections) runs against a small fake of the
  documented tensorrt/pycuda API subset it uses;
* where TensorRT headers, CUDA headers and a C++ compiler exist: the plugin's C++ host
  logic (creator, fields, shapes, formats, serialisation, enqueue plumbing) runs under
  ASan/UBSan against those headers, with libnvinfer and the CUDA launcher stubbed;
* where a full TensorRT toolchain exists: `build_plugin` really builds the library;
* where `tensorrt` imports and a GPU is present: real engines are built, timed and
  checked, and the plugin (when installed) is checked bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import typer
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from autonad_agent import plugin_build
from autonad_agent.backends import base as backend_base
from autonad_agent.backends import tensorrt as trt_backend
from autonad_agent.backends.base import BackendUnavailable, ModelRejected, Precision, TensorSpec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_plugin_kernel import shift_reference  # the NumPy transcription of the operator

PLUGIN_DIR = plugin_build.PLUGIN_SOURCE_DIR


def _tensorrt_importable() -> tuple[bool, str]:
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:
        return False, f"tensorrt does not import here ({type(exc).__name__}: {exc})"
    return True, ""


# ----------------------------------------------------------------------------- models
def spatial_shift_model(pattern: int, shape: tuple[Any, ...] = ("N", "C", "H", "W"),
                        elem: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """One SpatialShift node, written the way the exporter writes it."""
    node = helper.make_node("SpatialShift", ["x"], ["y"], name="shift0", domain="autonad", pattern=pattern,
                            plugin_version="1", plugin_namespace="autonad")
    graph = helper.make_graph([node], "shift", [helper.make_tensor_value_info("x", elem, list(shape))],
                              [helper.make_tensor_value_info("y", elem, list(shape))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("autonad", 1)])


def small_cnn(shape: tuple[int, ...] = (1, 8, 16, 16), elem: int = TensorProto.FLOAT,
              with_shift: bool = False) -> onnx.ModelProto:
    """Conv -> Relu (-> SpatialShift) -> Conv: a realistic block with fixed shapes."""
    rng = np.random.default_rng(0)
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    c = shape[1]
    w1 = numpy_helper.from_array((rng.standard_normal((c, c, 3, 3)) * 0.2).astype(dtype), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((c, c, 1, 1)) * 0.2).astype(dtype), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a"], ["b"])]
    last = "b"
    if with_shift:
        nodes.append(helper.make_node("SpatialShift", ["b"], ["s"], domain="autonad", pattern=2, plugin_version="1",
                                      plugin_namespace="autonad"))
        last = "s"
    nodes.append(helper.make_node("Conv", [last, "w2"], ["y"]))
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", elem, list(shape))],
                              [helper.make_tensor_value_info("y", elem, list(shape))], initializer=[w1, w2])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("autonad", 1)] if with_shift else [])
    return helper.make_model(graph, opset_imports=opsets)


# ----------------------------------------------------------------------------- everywhere
def test_probe_without_tensorrt_says_why() -> None:
    importable, _ = _tensorrt_importable()
    if importable:
        pytest.skip("tensorrt imports here; the unavailable path is covered by the fake-runtime tests")
    ok, reason = trt_backend.TensorRTBackend.probe()
    assert ok is False
    assert reason.startswith("TensorRT not available: the tensorrt Python package does not import")
    with pytest.raises(BackendUnavailable, match="TensorRT not available"):
        trt_backend.TensorRTBackend()


def _expected_missing() -> list[str]:
    """What build_plugin must name on this machine, in its order."""
    missing = []
    if shutil.which("cmake") is None:
        missing.append("cmake")
    if plugin_build.find_nvcc() is None:
        missing.append("nvcc")
    _, trt_missing = plugin_build.find_tensorrt()
    missing += [item.split(" ")[0] for item in trt_missing]
    return missing


def test_build_plugin_names_what_is_missing(tmp_path: Path) -> None:
    missing = _expected_missing()
    if not missing:
        pytest.skip("this machine has cmake, nvcc and TensorRT: see test_build_plugin_builds_the_library")
    with pytest.raises(plugin_build.PluginBuildError) as info:
        plugin_build.build_plugin(out_dir=tmp_path / "out", log=lambda line: None)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("cannot build the TensorRT plugin: missing ")
    for item in missing:
        assert item in message
    if "NvInfer.h" in missing:
        assert "libnvinfer-dev" in message  # says how to get it
    assert not (tmp_path / "out").exists(), "nothing is installed when the build cannot start"


def test_build_plugin_command_fails_in_one_line_without_traceback(tmp_path: Path) -> None:
    if not _expected_missing():
        pytest.skip("this machine can build the plugin")
    app = typer.Typer()
    app.command("build-plugin")(plugin_build.build_plugin_command)
    app.command("noop")(lambda: None)  # two commands, so typer keeps the sub-command name
    result = CliRunner().invoke(app, ["build-plugin", "--out-dir", str(tmp_path / "out")])
    output = result.output  # stdout and stderr
    assert result.exit_code == 1
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot build the TensorRT plugin: missing ")


def test_build_plugin_argument_errors(tmp_path: Path) -> None:
    assert plugin_build.normalize_cuda_arch("8.7") == "87"
    assert plugin_build.normalize_cuda_arch("sm_90") == "90"
    assert plugin_build.normalize_cuda_arch("compute_72") == "72"
    assert plugin_build.normalize_cuda_arch(" 100 ") == "100"
    with pytest.raises(plugin_build.PluginBuildError, match="invalid CUDA architecture"):
        plugin_build.normalize_cuda_arch("orin")


def test_tensorrt_version_parsing_covers_both_tracks() -> None:
    ten = "#define NV_TENSORRT_MAJOR 10 //!< major\n#define NV_TENSORRT_MINOR 3\n#define NV_TENSORRT_PATCH 0\n"
    eleven = ("#define TRT_MAJOR_ENTERPRISE 11\n#define TRT_MINOR_ENTERPRISE 1\n#define TRT_PATCH_ENTERPRISE 0\n"
              "#define NV_TENSORRT_MAJOR TRT_MAJOR_ENTERPRISE //!< major\n"
              "#define NV_TENSORRT_MINOR TRT_MINOR_ENTERPRISE\n#define NV_TENSORRT_PATCH TRT_PATCH_ENTERPRISE\n")
    assert plugin_build.parse_tensorrt_version(ten) == (10, 3, 0)
    assert plugin_build.parse_tensorrt_version(eleven) == (11, 1, 0)
    assert plugin_build.parse_tensorrt_version("") is None


def test_plugin_is_looked_up_in_the_agent_install_only() -> None:
    install = plugin_build.plugin_install_dir()
    package = Path(plugin_build.__file__).resolve().parent
    assert install == package / "plugins" / "lib"
    assert plugin_build.installed_plugin_library().parent == install


@pytest.mark.parametrize("pattern", [1, 2])
def test_lowering_for_onnxruntime_matches_the_operator(pattern: int) -> None:
    lowered = trt_backend.lower_spatial_shift_for_onnxruntime(spatial_shift_model(pattern))
    onnx.checker.check_model(lowered, full_check=True)
    assert not trt_backend.uses_spatial_shift(lowered)
    assert "autonad" not in {opset.domain for opset in lowered.opset_import}
    session = ort.InferenceSession(lowered.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(pattern)
    for shape in [(1, 1, 1, 1), (1, 2, 1, 1), (1, 3, 2, 2), (2, 5, 3, 4), (1, 6, 4, 4), (3, 7, 5, 9),
                  (1, 13, 1, 12), (2, 8, 16, 1), (1, 17, 6, 10)]:
        x = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_array_equal(session.run(None, {"x": x})[0], shift_reference(x, pattern), err_msg=str(shape))


def test_lowering_refuses_a_malformed_node() -> None:
    model = spatial_shift_model(3)
    with pytest.raises(ModelRejected, match="pattern 1 or 2"):
        trt_backend.lower_spatial_shift_for_onnxruntime(model)


def test_model_inspection_helpers() -> None:
    assert trt_backend.uses_spatial_shift(small_cnn(with_shift=True))
    assert not trt_backend.uses_spatial_shift(small_cnn())
    assert trt_backend.is_fp16_model(small_cnn(elem=TensorProto.FLOAT16))
    assert not trt_backend.is_fp16_model(small_cnn())
    assert trt_backend.static_input_shapes(small_cnn((2, 4, 8, 8))) == {"x": (2, 4, 8, 8)}
    with pytest.raises(ModelRejected, match="dynamic dimension"):
        trt_backend.static_input_shapes(spatial_shift_model(1))


def test_plugin_status_when_not_built_or_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rt = trt_backend._Runtime(trt=types.SimpleNamespace(__version__="10.3.0"), cuda=None, major=10)
    library = tmp_path / plugin_build.PLUGIN_LIBRARY_NAME
    monkeypatch.setattr(plugin_build, "installed_plugin_library", lambda: library)
    monkeypatch.setattr(plugin_build, "installed_plugin_manifest", lambda: tmp_path / plugin_build.PLUGIN_MANIFEST_NAME)
    status = trt_backend._try_load_plugin(rt)
    assert not status.loaded and "autonad-agent build-plugin" in status.detail
    library.write_bytes(b"\x7fELF not really")
    (tmp_path / plugin_build.PLUGIN_MANIFEST_NAME).write_text(json.dumps({"tensorrt_version": "11.0.0"}))
    status = trt_backend._try_load_plugin(rt)
    assert not status.loaded and "built for TensorRT 11.0.0 but the runtime is 10.3.0" in status.detail
    (tmp_path / plugin_build.PLUGIN_MANIFEST_NAME).write_text(json.dumps({"tensorrt_version": "10.3.0",
                                                                           "sha256": "0" * 64}))
    status = trt_backend._try_load_plugin(rt)
    assert not status.loaded and "does not match its build manifest" in status.detail
    (tmp_path / plugin_build.PLUGIN_MANIFEST_NAME).unlink()
    status = trt_backend._try_load_plugin(rt)
    assert not status.loaded and "cannot be loaded" in status.detail
    # No manifest, but the library links another major's runtime: refused before loading it.
    library.write_bytes(b"\x7fELF...\x00libnvinfer.so.11\x00libcudart.so.12\x00...")
    status = trt_backend._try_load_plugin(rt)
    assert not status.loaded and "links TensorRT 11 but the runtime is 10.3.0" in status.detail


def test_find_tensorrt_refuses_headers_and_runtime_of_different_majors(tmp_path: Path) -> None:
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "NvInfer.h").write_text("// headers\n")
    (tmp_path / "include" / "NvInferVersion.h").write_text(
        "#define NV_TENSORRT_MAJOR 10\n#define NV_TENSORRT_MINOR 3\n#define NV_TENSORRT_PATCH 0\n")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libnvinfer.so.11.1.0").write_bytes(b"\x7fELF")
    (tmp_path / "lib" / "libnvinfer.so").symlink_to("libnvinfer.so.11.1.0")
    assert plugin_build.library_tensorrt_major(tmp_path / "lib" / "libnvinfer.so") == 11
    install, missing = plugin_build.find_tensorrt(tmp_path)
    assert install is None and any("TensorRT 10.3.0" in m and "is TensorRT 11" in m for m in missing)
    (tmp_path / "lib" / "libnvinfer.so").unlink()
    (tmp_path / "lib" / "libnvinfer.so").symlink_to("libnvinfer.so.10.3.0")
    (tmp_path / "lib" / "libnvinfer.so.10.3.0").write_bytes(b"\x7fELF")
    install, missing = plugin_build.find_tensorrt(tmp_path)
    assert missing == [] and install is not None and install.version == (10, 3, 0)


# ----------------------------------------------------------------------------- fake runtime
class FakeWorld:
    """A fake of the tensorrt/pycuda subset the backend uses, executing engines with ONNX
    Runtime. It checks the backend's control flow, not TensorRT itself."""

    def __init__(self, version: str = "10.3.0", plugin_registered: bool = False, engine_noise: float = 0.0) -> None:
        self.version = version
        self.major = int(version.split(".")[0])
        self.plugin_registered = plugin_registered
        self.engine_noise = engine_noise
        self.context_depth = 0
        self.memory: dict[int, np.ndarray] = {}
        self.configs: list[Any] = []
        self.profiles: list[dict[str, tuple]] = []
        self.trt = self._make_trt()
        self.cuda = self._make_cuda()

    # -- tensorrt -----------------------------------------------------------------------
    def _make_trt(self) -> types.ModuleType:
        world = self
        trt = types.ModuleType("tensorrt")
        trt.__version__ = self.version
        dtypes = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.INT64: "int64"}
        trt.nptype = lambda dt: np.dtype(dt)
        trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
        trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        trt.BuilderFlag = types.SimpleNamespace(**({"FP16": "FP16", "TF32": "TF32"} if self.major < 11 else
                                                   {"TF32": "TF32"}))
        trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)

        class ILogger:
            Severity = types.SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

            def __init__(self) -> None:
                pass

        trt.ILogger = ILogger

        class Registry:
            def get_creator(self, name: str, version: str, namespace: str) -> Any:
                ok = world.plugin_registered and (name, version, namespace) == ("SpatialShift", "1", "autonad")
                return object() if ok else None

        trt.get_plugin_registry = lambda: Registry()

        class Tensor:
            def __init__(self, name: str, shape: tuple[int, ...]) -> None:
                self.name, self.shape = name, shape

        class Network:
            def __init__(self, flags: int) -> None:
                self.flags, self.inputs, self.model = flags, [], None

            @property
            def num_inputs(self) -> int:
                return len(self.inputs)

            def get_input(self, i: int) -> Tensor:
                return self.inputs[i]

        class Parser:
            def __init__(self, network: Network, logger: Any) -> None:
                self.network, self.logger, self.errors = network, logger, []

            @property
            def num_errors(self) -> int:
                return len(self.errors)

            def get_error(self, i: int) -> str:
                return self.errors[i]

            def parse(self, data: bytes) -> bool:
                try:
                    model = onnx.load_model_from_string(data)
                except Exception:
                    self.errors.append("In node -1: protobuf parse failure")
                    return False
                if trt_backend.uses_spatial_shift(model) and not world.plugin_registered:
                    self.errors.append("In node 0 (importFallbackPluginImporter): UNSUPPORTED_NODE: Plugin not found")
                    return False
                self.network.model = model
                for value in model.graph.input:
                    dims = tuple(d.dim_value if d.HasField("dim_value") else -1
                                 for d in value.type.tensor_type.shape.dim)
                    self.network.inputs.append(Tensor(value.name, dims))
                return True

        class Profile:
            def __init__(self) -> None:
                self.shapes: dict[str, tuple] = {}

            def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
                assert lo == opt == hi, "fixed shapes only"
                self.shapes[name] = tuple(opt)

        class Config:
            def __init__(self) -> None:
                self.flags, self.pools, self.profiles = set(), {}, []

            def set_flag(self, flag: str) -> None:
                self.flags.add(flag)

            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                self.pools[pool] = size

            def add_optimization_profile(self, profile: Profile) -> int:
                self.profiles.append(profile)
                return 0

        class Builder:
            def __init__(self, logger: Any) -> None:
                assert world.context_depth > 0, "builder used without a current CUDA context"

            def create_network(self, flags: int = 0) -> Network:
                return Network(flags)

            def create_builder_config(self) -> Config:
                config = Config()
                world.configs.append(config)
                return config

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: Network, config: Config) -> bytes:
                shapes = {t.name: t.shape for t in network.inputs}
                for profile in config.profiles:
                    shapes.update(profile.shapes)
                world.profiles.append(shapes)
                header = json.dumps({"shapes": {k: list(v) for k, v in shapes.items()}}).encode()
                return b"FAKE" + len(header).to_bytes(4, "little") + header + network.model.SerializeToString()

        trt.Builder = Builder
        trt.OnnxParser = Parser

        class Engine:
            def __init__(self, data: bytes) -> None:
                size = int.from_bytes(data[4:8], "little")
                self.shapes = {k: tuple(v) for k, v in json.loads(data[8:8 + size])["shapes"].items()}
                self.model = onnx.load_model_from_string(data[8 + size:])
                lowered = trt_backend.lower_spatial_shift_for_onnxruntime(self.model)
                self.session = ort.InferenceSession(lowered.SerializeToString(), providers=["CPUExecutionProvider"])
                self.io = [(v.name, "INPUT", v) for v in self.model.graph.input] + [
                    (v.name, "OUTPUT", v) for v in self.model.graph.output]

            @property
            def num_io_tensors(self) -> int:
                return len(self.io)

            def get_tensor_name(self, i: int) -> str:
                return self.io[i][0]

            def _entry(self, name: str) -> Any:
                return next(e for e in self.io if e[0] == name)

            def get_tensor_mode(self, name: str) -> str:
                return self._entry(name)[1]

            def get_tensor_shape(self, name: str) -> tuple:
                if name in self.shapes:
                    return self.shapes[name]
                return tuple(self.shapes[self.io[0][0]])  # fake: outputs shaped like the first input

            def get_tensor_dtype(self, name: str) -> str:
                return dtypes[self._entry(name)[2].type.tensor_type.elem_type]

            def create_execution_context(self) -> Any:
                return ExecutionContext(self)

        class ExecutionContext:
            def __init__(self, engine: Engine) -> None:
                self.engine, self.addresses, self.input_shapes = engine, {}, {}

            def set_input_shape(self, name: str, shape: tuple) -> bool:
                self.input_shapes[name] = tuple(shape)
                return True

            def get_tensor_shape(self, name: str) -> tuple:
                return self.input_shapes.get(name) or self.engine.get_tensor_shape(name)

            def set_tensor_address(self, name: str, address: int) -> bool:
                self.addresses[name] = address
                return True

            def execute_async_v3(self, stream_handle: int) -> bool:
                assert world.context_depth > 0
                feed = {}
                for name, mode, _ in self.engine.io:
                    if mode == "INPUT":
                        dtype = np.dtype(self.engine.get_tensor_dtype(name))
                        feed[name] = world.memory[self.addresses[name]].view(dtype).reshape(self.get_tensor_shape(name))
                names = [o.name for o in self.engine.session.get_outputs()]
                for name, out in zip(names, self.engine.session.run(names, feed), strict=True):
                    out = out + np.asarray(world.engine_noise, dtype=out.dtype)
                    world.memory[self.addresses[name]][: out.nbytes] = out.reshape(-1).view(np.uint8)
                return True

        class Runtime:
            def __init__(self, logger: Any) -> None:
                pass

            def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
                return Engine(data) if data.startswith(b"FAKE") else None

        trt.Runtime = Runtime
        return trt

    # -- pycuda.driver ------------------------------------------------------------------
    def _make_cuda(self) -> types.ModuleType:
        world = self
        cuda = types.ModuleType("pycuda.driver")
        cuda.init = lambda: None
        cuda.get_driver_version = lambda: 12020

        class MemoryError(Exception):  # mirrors pycuda.driver.MemoryError
            pass

        cuda.MemoryError = MemoryError

        class PrimaryContext:
            def push(self) -> None:
                world.context_depth += 1

        class Context:
            @staticmethod
            def pop() -> None:
                assert world.context_depth > 0
                world.context_depth -= 1

        class Device:
            @staticmethod
            def count() -> int:
                return 1

            def __init__(self, index: int) -> None:
                assert index == 0

            def name(self) -> str:
                return "Fake Orin GPU"

            def compute_capability(self) -> tuple[int, int]:
                return (8, 7)

            def retain_primary_context(self) -> PrimaryContext:
                return PrimaryContext()

        class Allocation:
            def __init__(self, nbytes: int) -> None:
                self.key = len(world.memory) + 0x1000
                world.memory[self.key] = np.zeros(nbytes, dtype=np.uint8)

            def __int__(self) -> int:
                return self.key

            def free(self) -> None:
                world.memory.pop(self.key)

        def memcpy_htod(dst: Allocation, host: np.ndarray) -> None:
            world.memory[int(dst)][: host.nbytes] = np.ascontiguousarray(host).reshape(-1).view(np.uint8)

        def memcpy_dtoh(host: np.ndarray, src: Allocation) -> None:
            host.reshape(-1).view(np.uint8)[:] = world.memory[int(src)][: host.nbytes]

        class Stream:
            handle = 1

        class Event:
            def record(self, stream: Stream) -> None:
                assert world.context_depth > 0

            def synchronize(self) -> None:
                pass

            def time_till(self, other: Event) -> float:
                return 0.25

        cuda.Device, cuda.Context, cuda.Stream, cuda.Event = Device, Context, Stream, Event
        cuda.mem_alloc, cuda.memcpy_htod, cuda.memcpy_dtoh = Allocation, memcpy_htod, memcpy_dtoh
        return cuda


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> FakeWorld:
    params = getattr(request, "param", {})
    world = FakeWorld(**params)
    monkeypatch.setitem(sys.modules, "tensorrt", world.trt)
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = world.cuda
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", world.cuda)
    for name, value in (("_runtime", None), ("_runtime_error", None), ("_trt_logger", None),
                        ("_plugin_status", None), ("_plugin_library", None)):
        monkeypatch.setattr(trt_backend, name, value)
    monkeypatch.setattr(trt_backend, "_run", lambda cmd: None)  # no nvidia-smi / dpkg-query
    if world.plugin_registered:
        status = trt_backend.PluginStatus(True, Path("/agent/plugins/lib/libautonad_trt_plugins.so"),
                                          "autonad::SpatialShift v1 (IPluginV3); TensorRT test", "ab" * 32)
    else:
        status = trt_backend.PluginStatus(False, Path("/agent/plugins/lib/libautonad_trt_plugins.so"),
                                          "not built (run `autonad-agent build-plugin`)")
    monkeypatch.setattr(trt_backend, "_load_plugin", lambda rt: status)
    return world


def test_fake_tensorrt10_build_engine_fp32_and_fp16(fake: FakeWorld) -> None:
    ok, reason = trt_backend.TensorRTBackend.probe()
    assert ok and reason.startswith("TensorRT 10.3.0 (10.x track) on Fake Orin GPU (sm 8.7)")
    backend = trt_backend.TensorRTBackend()
    caps = backend.capabilities()
    assert caps.can_build_engine and caps.precisions == (Precision.FP32, Precision.FP16)
    assert caps.custom_op_domains == ()
    assert "BuilderFlag.FP16" in caps.details["precision_path"]
    fp = backend.fingerprint()
    assert fp["runtime"] == "tensorrt" and fp["runtime_version"] == "10.3.0" and fp["compute_capability"] == "8.7"
    assert fp["driver"] == "CUDA driver API 12.2"

    model = small_cnn().SerializeToString()
    artifact = backend.build_engine(model, Precision.FP32)
    manifest = artifact.manifest
    assert all(isinstance(v, str) for v in manifest.values())
    assert manifest["backend"] == "tensorrt" and manifest["precision"] == "fp32"
    assert manifest["precision_path"].startswith("weakly typed (TensorRT 10.3.0), fp32")
    assert manifest["output_check"].startswith("ok") and float(manifest["ort_max_abs_err"]) == 0.0
    assert manifest["latency_ms_median"] == "0.250000" and manifest["latency_runs"] == "50"
    assert manifest["plugin_library"] == "none" and manifest["uses_spatial_shift_plugin"] == "false"
    bindings = json.loads(manifest["bindings"])
    assert bindings[0] == {"name": "x", "mode": "input", "shape": [1, 8, 16, 16], "dtype": "float32"}
    assert artifact.engine.startswith(b"FAKE")
    assert "FP16" not in fake.configs[-1].flags
    assert fake.configs[-1].pools == {"WORKSPACE": trt_backend.WORKSPACE_BYTES}

    fp16 = backend.build_engine(model, Precision.FP16)
    assert "FP16" in fake.configs[-1].flags
    assert fp16.manifest["precision_path"] == "weakly typed (TensorRT 10.3.0) with BuilderFlag.FP16"
    assert fake.context_depth == 0, "every CUDA context push is popped"
    assert not fake.memory, "every device buffer is freed"


@pytest.mark.parametrize("fake", [{"version": "11.1.0"}], indirect=True)
def test_fake_tensorrt11_is_strongly_typed(fake: FakeWorld) -> None:
    backend = trt_backend.TensorRTBackend()
    assert "strongly typed" in backend.capabilities().details["precision_path"]
    with pytest.raises(ModelRejected, match="an fp16 engine needs an fp16 ONNX model"):
        backend.build_engine(small_cnn().SerializeToString(), Precision.FP16)
    with pytest.raises(ModelRejected, match="this ONNX model is fp16"):
        backend.build_engine(small_cnn(elem=TensorProto.FLOAT16).SerializeToString(), Precision.FP32)
    artifact = backend.build_engine(small_cnn(elem=TensorProto.FLOAT16).SerializeToString(), Precision.FP16)
    assert artifact.manifest["precision_path"].startswith("strongly typed (TensorRT 11.1.0): fp16")
    assert "FP16" not in fake.configs[-1].flags
    assert json.loads(artifact.manifest["bindings"])[0]["dtype"] == "float16"
    assert artifact.manifest["output_check"].startswith("ok")


@pytest.mark.parametrize("fake", [{"plugin_registered": True}], indirect=True)
def test_fake_plugin_model_builds_and_matches_the_reference(fake: FakeWorld) -> None:
    backend = trt_backend.TensorRTBackend()
    assert backend.capabilities().custom_op_domains == ("autonad",)
    assert backend.fingerprint()["trt_plugin_sha256"] == "ab" * 32
    artifact = backend.build_engine(small_cnn(with_shift=True).SerializeToString(), Precision.FP32)
    assert artifact.manifest["uses_spatial_shift_plugin"] == "true"
    assert artifact.manifest["plugin_sha256"] == "ab" * 32
    assert artifact.manifest["output_check"].startswith("ok")


@pytest.mark.parametrize("fake", [{"engine_noise": 1.0}], indirect=True)
def test_fake_engine_mismatch_is_reported(fake: FakeWorld) -> None:
    artifact = trt_backend.TensorRTBackend().build_engine(small_cnn().SerializeToString(), Precision.FP32)
    assert artifact.manifest["output_check"].startswith("mismatch")
    assert float(artifact.manifest["ort_max_abs_err"]) == pytest.approx(1.0)


@pytest.mark.parametrize("fake", [{"engine_noise": 0.0}, {"engine_noise": 1.0}], indirect=True)
def test_host_decides_on_the_agents_output_check(fake: FakeWorld) -> None:
    """The host's `build_engine` decision reads the verdict this backend writes: a matching
    engine passes without a warning, a mismatching one is refused (never written or bundled)."""
    from autonad_edge.export.engine import EngineBuildError, output_check_warning

    artifact = trt_backend.TensorRTBackend().build_engine(small_cnn().SerializeToString(), Precision.FP32)
    if fake.engine_noise == 0.0:
        assert output_check_warning(artifact.manifest) is None
    else:
        with pytest.raises(EngineBuildError, match="differ from ONNX Runtime.*mismatch"):
            output_check_warning(artifact.manifest)


def test_fake_rejections(fake: FakeWorld) -> None:
    backend = trt_backend.TensorRTBackend()
    with pytest.raises(ModelRejected, match=r"TensorRT plugin is unavailable.*autonad-agent build-plugin"):
        backend.build_engine(small_cnn(with_shift=True).SerializeToString(), Precision.FP32)
    with pytest.raises(ModelRejected, match="not a valid ONNX model"):
        backend.build_engine(b"\x00not onnx", Precision.FP32)
    with pytest.raises(ModelRejected, match="dynamic dimension"):
        backend.build_engine(spatial_shift_model(1).SerializeToString(), Precision.FP32)
    with pytest.raises(ModelRejected, match="does not fit"):
        backend.load(small_cnn((1, 8, 16, 16)).SerializeToString(), [TensorSpec("x", (1, 8, 32, 32))], Precision.FP32)
    with pytest.raises(ModelRejected, match="do not match"):
        backend.load(small_cnn().SerializeToString(), [TensorSpec("other", (1, 8, 16, 16))], Precision.FP32)
    assert fake.context_depth == 0


@pytest.mark.parametrize("fake", [{"plugin_registered": True}], indirect=True)
def test_fake_load_pins_dynamic_shapes_and_times_runs(fake: FakeWorld) -> None:
    backend = trt_backend.TensorRTBackend()
    model = spatial_shift_model(2).SerializeToString()
    with backend.load(model, [TensorSpec("x", (2, 6, 5, 7))], Precision.FP32) as loaded:
        assert fake.profiles[-1] == {"x": (2, 6, 5, 7)}
        assert loaded.run_once() == 0.25
        x = loaded.read_tensor("x")
        assert x.shape == (2, 6, 5, 7) and x.dtype == np.float32
        np.testing.assert_array_equal(loaded.outputs()["y"], shift_reference(x, 2))
    loaded.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        loaded.run_once()
    builds = len(fake.profiles)
    backend.load(model, [TensorSpec("x", (2, 6, 5, 7))], Precision.FP32).close()
    assert len(fake.profiles) == builds, "the same model, shapes and precision reuse the cached engine"
    assert fake.context_depth == 0 and not fake.memory


@pytest.mark.parametrize("fake", [{"version": "8.6.1"}], indirect=True)
def test_fake_old_tensorrt_is_unavailable(fake: FakeWorld) -> None:
    ok, reason = trt_backend.TensorRTBackend.probe()
    assert not ok and "8.6.1 is too old" in reason and ">= 10" in reason


def test_backend_declares_it_needs_no_address_space_limit() -> None:
    assert trt_backend.TensorRTBackend.supports_address_space_limit is False
    assert issubclass(trt_backend.TensorRTBackend, backend_base.Backend)
    assert trt_backend.TensorRTBackend.name == "tensorrt"


# ----------------------------------------------------------------------------- plugin host logic
PLUGIN_HARNESS = PLUGIN_DIR / "tests" / "plugin_host_test.cpp"


def _cuda_include_dir() -> Path | None:
    nvcc = plugin_build.find_nvcc()
    candidates = [Path(os.environ[v]) / "include" for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    candidates += ([nvcc.resolve().parent.parent / "include"] if nvcc else []) + [Path("/usr/local/cuda/include")]
    return next((d for d in candidates if (d / "cuda_runtime_api.h").is_file()), None)


def test_plugin_host_logic_against_tensorrt_headers(tmp_path: Path) -> None:
    trt, missing = plugin_build.find_tensorrt()
    if trt is None:
        pytest.skip("no TensorRT headers here (" + "; ".join(m.split(" (")[0] for m in missing) + ")")
    cuda_include = _cuda_include_dir()
    cxx = next((c for c in (os.environ.get("CXX"), "c++", "g++", "clang++") if c and shutil.which(c)), None)
    if cuda_include is None or cxx is None:
        pytest.skip("needs the CUDA headers and a C++ compiler")
    exe = tmp_path / "plugin_harness"
    base_cmd = [cxx, "-std=c++17", "-g", "-O1", "-Wall", "-Wextra", "-Werror", f"-I{PLUGIN_DIR}",
                "-isystem", str(trt.include_dir), "-isystem", str(cuda_include), str(PLUGIN_HARNESS),
                str(PLUGIN_DIR / "spatial_shift_plugin.cpp"), "-o", str(exe)]
    sanitizers = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
    proc = subprocess.run(base_cmd[:1] + sanitizers + base_cmd[1:], capture_output=True, text=True, check=False)
    if proc.returncode != 0 and "sanitize" in proc.stderr:
        proc = subprocess.run(base_cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"harness build failed against {trt.describe()}:\n{proc.stderr[-4000:]}"
    run = subprocess.run([str(exe)], capture_output=True, text=True, check=False, timeout=120)
    assert run.returncode == 0, f"plugin harness failed:\n{run.stdout}\n{run.stderr[-4000:]}"
    assert f"TensorRT {trt.version_str}" in run.stdout


@pytest.mark.slow
def test_build_plugin_builds_the_library(tmp_path: Path) -> None:
    if _expected_missing():
        pytest.skip("cannot build the plugin here: missing " + ", ".join(_expected_missing()))
    nvcc = plugin_build.find_nvcc()
    assert nvcc is not None
    arch, _ = plugin_build.detect_compute_capability(nvcc)
    if arch is None:  # no GPU: build for Orin, the main edge target, if this nvcc can
        _, archs = plugin_build.nvcc_info(nvcc)
        arch = "87" if "87" in archs else sorted(archs, key=int)[-1]
    lines: list[str] = []
    library = plugin_build.build_plugin(out_dir=tmp_path, cuda_arch=arch, log=lines.append)
    assert library == tmp_path / plugin_build.PLUGIN_LIBRARY_NAME and library.is_file()
    assert any("track" in line for line in lines), "says which TensorRT path it took"
    manifest = json.loads((tmp_path / plugin_build.PLUGIN_MANIFEST_NAME).read_text())
    assert manifest["sha256"] == plugin_build.sha256_file(library) and manifest["cuda_arch"] == arch
    nm = shutil.which("nm")
    if nm:
        out = subprocess.run([nm, "-D", "--defined-only", str(library)], capture_output=True, text=True).stdout
        exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
        assert {"getCreators", "setLoggerFinder", "initAutonadPlugins", "autonad_spatial_shift"} <= exported


# ----------------------------------------------------------------------------- real TensorRT
@pytest.fixture(scope="module")
def real_backend() -> trt_backend.TensorRTBackend:
    importable, why = _tensorrt_importable()
    if not importable:
        pytest.skip(why)
    ok, reason = trt_backend.TensorRTBackend.probe()
    if not ok:
        pytest.skip(f"TensorRT imports but cannot run here: {reason}")
    return trt_backend.TensorRTBackend()


@pytest.mark.gpu
@pytest.mark.slow
def test_real_build_engine_fp32_and_fp16(real_backend: trt_backend.TensorRTBackend) -> None:
    fp32 = real_backend.build_engine(small_cnn().SerializeToString(), Precision.FP32)
    assert fp32.manifest["output_check"].startswith("ok"), fp32.manifest
    assert float(fp32.manifest["latency_ms_median"]) > 0
    if Precision.FP16 in real_backend.capabilities().precisions:
        elem = TensorProto.FLOAT16 if real_backend._rt.strongly_typed_only else TensorProto.FLOAT
        fp16 = real_backend.build_engine(small_cnn(elem=elem).SerializeToString(), Precision.FP16)
        assert fp16.manifest["output_check"].startswith("ok"), fp16.manifest


@pytest.mark.gpu
@pytest.mark.parametrize("pattern", [1, 2])
def test_real_plugin_is_bit_exact(real_backend: trt_backend.TensorRTBackend, pattern: int) -> None:
    if not real_backend.plugin.loaded:
        pytest.skip(f"SpatialShift plugin not installed: {real_backend.plugin.detail}")
    for shape in [(1, 6, 5, 7), (2, 13, 8, 16), (1, 3, 1, 9), (1, 64, 56, 56)]:
        for elem, dtype in ((TensorProto.FLOAT, "float32"), (TensorProto.FLOAT16, "float16")):
            precision = Precision.FP16 if elem == TensorProto.FLOAT16 else Precision.FP32
            if precision not in real_backend.capabilities().precisions:
                continue
            model = spatial_shift_model(pattern, shape, elem).SerializeToString()
            with real_backend.load(model, [TensorSpec("x", shape, dtype)], precision) as loaded:
                x, got = loaded.read_tensor("x"), loaded.outputs()["y"]
            np.testing.assert_array_equal(got, shift_reference(x, pattern), err_msg=f"{shape} {dtype}")
