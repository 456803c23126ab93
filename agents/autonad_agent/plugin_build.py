"""`autonad-agent build-plugin`: compile the TensorRT plugins on this device and install them.

The plugin library (``libautonad_trt_plugins.so``, holding ``autonad::SpatialShift`` v1) is
built from the sources shipped in ``autonad_agent/plugins/spatial_shift`` with CMake, against
the TensorRT and CUDA found on this machine, for this GPU's compute capability. It is
installed into the agent's own install directory (``autonad_agent/plugins/lib``), the only
place the TensorRT backend loads plugins from.

Two TensorRT tracks are supported and reported: 10.x (JetPack 6; fp16 engines from the
FP16 builder flag) and 11.x (strongly typed networks only; fp16 engines need an fp16 ONNX
model). The plugin source is the same for both: IPluginV3 did not change between them.

Torch-free, like the whole agent.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import typer

from autonad_agent.plugin_identity import SPATIAL_SHIFT_PLUGIN

PLUGIN_SOURCE_DIR = Path(__file__).resolve().parent / "plugins" / "spatial_shift"
PLUGIN_LIBRARY_NAME = "libautonad_trt_plugins.so"
PLUGIN_MANIFEST_NAME = "libautonad_trt_plugins.json"
PLUGIN_IDENTITY = SPATIAL_SHIFT_PLUGIN.to_dict()
MIN_TENSORRT_MAJOR = 10

_CMAKE_TIMEOUT_S = 1800  # a cold CUDA build on a Jetson Orin Nano takes a few minutes


class PluginBuildError(RuntimeError):
    """The plugin could not be built; the message is one line saying what is missing or failed."""


def plugin_install_dir() -> Path:
    """Where the agent installs, and the only place it loads, its TensorRT plugin libraries."""
    return Path(__file__).resolve().parent / "plugins" / "lib"


def installed_plugin_library() -> Path:
    return plugin_install_dir() / PLUGIN_LIBRARY_NAME


def installed_plugin_manifest() -> Path:
    return plugin_install_dir() / PLUGIN_MANIFEST_NAME


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- TensorRT
@dataclass(frozen=True)
class TensorRTInstall:
    include_dir: Path
    library: Path
    version: tuple[int, int, int]

    @property
    def version_str(self) -> str:
        return ".".join(str(v) for v in self.version)

    @property
    def track(self) -> str:
        return f"{self.version[0]}.x"

    def describe(self) -> str:
        if self.version[0] >= 11:
            typing = "strongly typed networks only; fp16 engines need an fp16 ONNX model"
        else:
            typing = "fp16 engines via BuilderFlag.FP16"
        return f"TensorRT {self.version_str}: {self.track} track (IPluginV3 plugin; {typing})"


def parse_tensorrt_version(header_text: str) -> Optional[tuple[int, int, int]]:
    """Version from NvInferVersion.h: ``NV_TENSORRT_MAJOR 10`` (10.x) or, in 11.x,
    ``NV_TENSORRT_MAJOR TRT_MAJOR_ENTERPRISE`` with ``TRT_MAJOR_ENTERPRISE 11``."""
    defines = dict(re.findall(r"^\s*#\s*define\s+(\w+)[ \t]+(\w+)", header_text, flags=re.MULTILINE))

    def resolve(name: str) -> Optional[int]:
        value = defines.get(name)
        for _ in range(4):  # follow a short chain of macro aliases
            if value is None:
                return None
            if value.isdigit():
                return int(value)
            value = defines.get(value)
        return None

    parts = [resolve(f"NV_TENSORRT_{p}") for p in ("MAJOR", "MINOR", "PATCH")]
    if parts[0] is None:
        return None
    return (parts[0], parts[1] or 0, parts[2] or 0)


def _pip_tensorrt_lib_dirs() -> list[Path]:
    """The library directory of a pip-installed TensorRT (``tensorrt_libs``), without importing it."""
    dirs = []
    for module in ("tensorrt_libs", "tensorrt_lean_libs"):
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            continue
        if spec is not None and spec.submodule_search_locations:
            dirs.extend(Path(p) for p in spec.submodule_search_locations)
    return dirs


def _candidate_roots(tensorrt_root: Optional[Path]) -> list[Path]:
    roots = []
    if tensorrt_root is not None:
        roots.append(Path(tensorrt_root).expanduser())
    for var in ("TensorRT_ROOT", "TENSORRT_ROOT", "TRT_ROOT"):
        if os.environ.get(var):
            roots.append(Path(os.environ[var]).expanduser())
    return roots


def _tensorrt_include_candidates(tensorrt_root: Optional[Path]) -> list[Path]:
    dirs = [root / "include" for root in _candidate_roots(tensorrt_root)]
    dirs += [Path("/usr/include/aarch64-linux-gnu"), Path("/usr/include/x86_64-linux-gnu"),
             Path("/usr/local/TensorRT/include"), Path("/opt/tensorrt/include"), Path("/usr/include")]
    for lib_dir in _pip_tensorrt_lib_dirs():  # headers are not in the pip wheels, but look anyway
        dirs.append(lib_dir / "include")
    return list(dict.fromkeys(dirs))


def _tensorrt_library_candidates(tensorrt_root: Optional[Path]) -> list[Path]:
    dirs = []
    for root in _candidate_roots(tensorrt_root):
        dirs += [root / "lib", root / "lib64", root / "targets" / f"{platform.machine()}-linux" / "lib"]
    dirs += [Path("/usr/lib/aarch64-linux-gnu"), Path("/usr/lib/x86_64-linux-gnu"),
             Path("/usr/local/TensorRT/lib"), Path("/opt/tensorrt/lib")]
    dirs += _pip_tensorrt_lib_dirs()
    return list(dict.fromkeys(dirs))


def _find_libnvinfer(dirs: list[Path], major: Optional[int]) -> Optional[Path]:
    """libnvinfer.so, or libnvinfer.so.<major> (pip wheels ship only the versioned name)."""
    names = ["libnvinfer.so"] + ([f"libnvinfer.so.{major}"] if major is not None else [])
    for d in dirs:
        for name in names:
            if (d / name).is_file():
                return d / name
        if major is None:
            versioned = sorted(d.glob("libnvinfer.so.[0-9]*")) if d.is_dir() else []
            if versioned:
                return versioned[0]
    return None


_LIBNVINFER_MAJOR = re.compile(rb"libnvinfer\.so\.(\d+)")


def library_tensorrt_major(path: Path) -> Optional[int]:
    """The TensorRT major a shared library belongs to, without loading it: from the versioned
    name it resolves to (``libnvinfer.so -> libnvinfer.so.10.3.0``), else from the one
    ``libnvinfer.so.<major>`` it names (its SONAME, or the dependency a plugin links against,
    both in its dynamic string table). None when that cannot be told."""
    match = _LIBNVINFER_MAJOR.search(Path(path).resolve().name.encode())
    if match:
        return int(match.group(1))
    try:
        majors = {int(m) for m in _LIBNVINFER_MAJOR.findall(Path(path).read_bytes())}
    except OSError:
        return None
    return majors.pop() if len(majors) == 1 else None


def _short(paths: list[Path]) -> str:
    return ", ".join(str(p) for p in paths)


def find_tensorrt(tensorrt_root: Optional[Path] = None) -> tuple[Optional[TensorRTInstall], list[str]]:
    """Locate NvInfer.h and libnvinfer. Returns the install, or None and what is missing."""
    missing = []
    include_dirs = _tensorrt_include_candidates(tensorrt_root)
    include_dir = next((d for d in include_dirs if (d / "NvInfer.h").is_file()), None)
    version = None
    if include_dir is None:
        missing.append(f"NvInfer.h (TensorRT headers, e.g. package libnvinfer-dev; searched {_short(include_dirs)})")
    else:
        version_header = include_dir / "NvInferVersion.h"
        text = version_header.read_text(errors="replace") if version_header.is_file() else ""
        version = parse_tensorrt_version(text)
        if version is None:
            missing.append(f"a readable TensorRT version in {version_header}")
    lib_dirs = _tensorrt_library_candidates(tensorrt_root)
    library = _find_libnvinfer(lib_dirs, version[0] if version else None)
    if library is None:
        missing.append(f"libnvinfer (TensorRT runtime library; searched {_short(lib_dirs)})")
    if library is not None and version is not None:
        library_major = library_tensorrt_major(library)
        if library_major is not None and library_major != version[0]:
            # A plugin compiled against one major's headers and linked to another's runtime
            # loads, then breaks at engine build: refuse the mix here.
            missing.append(f"headers and runtime of one TensorRT: {include_dir} has TensorRT "
                           f"{'.'.join(map(str, version))}, {library} is TensorRT {library_major}")
    if missing or include_dir is None or library is None or version is None:
        return None, missing
    return TensorRTInstall(include_dir=include_dir, library=library, version=version), []


# ----------------------------------------------------------------------------- CUDA
def find_nvcc() -> Optional[Path]:
    candidates = []
    if os.environ.get("CUDACXX"):
        candidates.append(Path(os.environ["CUDACXX"]))
    for var in ("CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]) / "bin" / "nvcc")
    found = shutil.which("nvcc")
    if found:
        candidates.append(Path(found))
    candidates.append(Path("/usr/local/cuda/bin/nvcc"))
    candidates += sorted(Path("/usr/local").glob("cuda-*/bin/nvcc"), reverse=True)
    return next((c for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)


def normalize_cuda_arch(value: str) -> str:
    """'8.7', '87', 'sm_87', 'compute_87' -> '87'."""
    text = value.strip().lower()
    text = re.sub(r"^(sm_|compute_)", "", text)
    match = re.fullmatch(r"(\d+)\.(\d+)|(\d{2,3})", text)
    if match is None:
        raise PluginBuildError(f"invalid CUDA architecture {value!r}: expected e.g. 87, 8.7 or sm_87")
    return match.group(1) + match.group(2) if match.group(1) else match.group(3)


def _run_quiet(cmd: list[str], timeout: float = 30) -> Optional[str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def detect_compute_capability(nvcc: Optional[Path] = None) -> tuple[Optional[str], str]:
    """This machine's GPU compute capability ('87') and how it was found, or (None, why not)."""
    smi = shutil.which("nvidia-smi")
    if smi:
        out = _run_quiet([smi, "--query-gpu=compute_cap", "--format=csv,noheader"])
        caps = [line.strip() for line in (out or "").splitlines() if line.strip()]
        if caps:
            try:
                archs = {normalize_cuda_arch(c) for c in caps}
            except PluginBuildError:
                archs = set()
            if len(archs) == 1:
                return archs.pop(), "nvidia-smi"
            if archs:
                return None, f"GPUs of different compute capabilities ({', '.join(sorted(archs))}): pass --cuda-arch"
    if importlib.util.find_spec("pycuda") is not None:
        try:
            import pycuda.driver as cuda  # lazy: optional dependency

            cuda.init()
            major, minor = cuda.Device(0).compute_capability()
            return f"{major}{minor}", "pycuda"
        except Exception:  # any driver failure just means "not found this way"
            pass
    compatible = Path("/proc/device-tree/compatible")
    if compatible.is_file():  # Jetson: the SoC fixes the GPU
        soc = compatible.read_bytes().decode(errors="replace")
        for tag, arch in (("tegra264", "110"), ("tegra234", "87"), ("tegra194", "72")):
            if tag in soc:
                return arch, f"Jetson SoC {tag}"
    if nvcc is not None:  # what `nvcc -arch=native` uses
        query = nvcc.parent / "__nvcc_device_query"
        if query.is_file():
            out = (_run_quiet([str(query)]) or "").split(",")
            archs = {a.strip() for a in out if a.strip().isdigit()}
            if len(archs) == 1:
                return archs.pop(), "__nvcc_device_query"
    return None, "no GPU found by nvidia-smi, pycuda or the Jetson device tree"


def nvcc_info(nvcc: Path) -> tuple[str, set[str]]:
    """nvcc's release ('12.2') and the real architectures it can compile for."""
    version_out = _run_quiet([str(nvcc), "--version"]) or ""
    match = re.search(r"release (\d+\.\d+)", version_out)
    archs_out = _run_quiet([str(nvcc), "--list-gpu-arch"]) or ""
    return (match.group(1) if match else "unknown"), set(re.findall(r"compute_(\d+)", archs_out))


def _installed_tensorrt_python_version() -> Optional[str]:
    """The `tensorrt` Python package's version, read from its metadata without importing it."""
    from importlib import metadata

    for dist in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt_cu12", "tensorrt-cu11"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _source_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(PLUGIN_SOURCE_DIR.iterdir()):
        if path.is_file() and path.suffix in {".cu", ".h", ".cpp", ".txt", ".map"}:
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _last_error_line(log: str) -> str:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.search(r"error|fatal|not found|undefined", line, flags=re.IGNORECASE):
            return line[:300]
    return lines[-1][:300] if lines else "no output"


# ----------------------------------------------------------------------------- build
def build_plugin(
    out_dir: Optional[Path] = None,
    cuda_arch: Optional[str] = None,
    tensorrt_root: Optional[Path] = None,
    *,
    log: Callable[[str], None] = print,
    jobs: Optional[int] = None,
) -> Path:
    """Build the plugin library for this device and install it; returns the installed path.

    `out_dir` defaults to the agent's install (`plugin_install_dir()`); the TensorRT
    backend loads plugins from there only. `cuda_arch` overrides the detected compute
    capability ("87", "8.7", "sm_87"); `tensorrt_root` is searched before the standard
    locations (TensorRT_ROOT, JetPack's /usr/include/<arch>-linux-gnu, ...).
    Raises PluginBuildError with a one-line message.
    """
    missing = []
    cmake = shutil.which("cmake")
    if cmake is None:
        missing.append("cmake (apt-get install cmake, or pip install cmake)")
    nvcc = find_nvcc()
    if nvcc is None:
        missing.append("nvcc (the CUDA toolkit: JetPack's nvidia-cuda-dev / cuda-toolkit; or set CUDA_HOME)")
    trt, trt_missing = find_tensorrt(tensorrt_root)
    missing += trt_missing
    if missing or trt is None or nvcc is None or cmake is None:
        raise PluginBuildError("cannot build the TensorRT plugin: missing " + "; ".join(missing))

    if trt.version[0] < MIN_TENSORRT_MAJOR:
        raise PluginBuildError(
            f"TensorRT {trt.version_str} at {trt.include_dir} is too old: the SpatialShift plugin is an IPluginV3 "
            f"plugin and needs TensorRT >= {MIN_TENSORRT_MAJOR} (JetPack 6); Jetson Xavier stops at JetPack 5 "
            "(TensorRT 8.5), so its models must use the portable Slice/Concat export")
    python_trt = _installed_tensorrt_python_version()
    if python_trt is not None and python_trt.split(".")[0] != str(trt.version[0]):
        raise PluginBuildError(
            f"TensorRT headers at {trt.include_dir} are {trt.version_str} but the Python tensorrt package is "
            f"{python_trt}: build against the TensorRT the agent runs (pass --tensorrt-root)")
    log(trt.describe())
    log(f"  headers {trt.include_dir}, library {trt.library}"
        + (f", Python tensorrt {python_trt}" if python_trt else ", Python tensorrt not installed"))

    nvcc_version, nvcc_archs = nvcc_info(nvcc)
    if cuda_arch is not None:
        arch, arch_source = normalize_cuda_arch(cuda_arch), "--cuda-arch"
    else:
        detected, arch_source = detect_compute_capability(nvcc)
        if detected is None:
            raise PluginBuildError(f"cannot determine the GPU's compute capability ({arch_source}); "
                                   "pass --cuda-arch, e.g. 87 for Jetson Orin")
        arch = detected
    if nvcc_archs and arch not in nvcc_archs:
        raise PluginBuildError(f"nvcc {nvcc_version} at {nvcc} cannot compile for sm_{arch} (from {arch_source}); "
                               f"it supports sm_{', sm_'.join(sorted(nvcc_archs, key=int))}")
    log(f"CUDA {nvcc_version} ({nvcc}), building for sm_{arch} (from {arch_source})")

    install_dir = Path(out_dir).expanduser().resolve() if out_dir is not None else plugin_install_dir()
    try:
        install_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PluginBuildError(f"cannot create the install directory {install_dir}: {exc.strerror}") from None
    log_path = install_dir / "build-plugin.log"

    with tempfile.TemporaryDirectory(prefix="autonad-plugin-build-") as tmp:
        build_dir = Path(tmp)
        configure = [
            cmake, "-S", str(PLUGIN_SOURCE_DIR), "-B", str(build_dir),
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DCMAKE_CUDA_COMPILER={nvcc}",
            f"-DCMAKE_CUDA_ARCHITECTURES={arch}",
            f"-DTENSORRT_INCLUDE_DIR={trt.include_dir}",
            f"-DTENSORRT_LIBRARY={trt.library}",
        ]
        build = [cmake, "--build", str(build_dir), "--parallel", str(jobs or os.cpu_count() or 2)]
        transcript = []
        for step, cmd in (("configure", configure), ("build", build)):
            started = time.monotonic()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_CMAKE_TIMEOUT_S, check=False)
            except subprocess.TimeoutExpired:
                raise PluginBuildError(f"cmake {step} timed out after {_CMAKE_TIMEOUT_S} s") from None
            transcript.append(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
            log_path.write_text("\n".join(transcript))
            if proc.returncode != 0:
                raise PluginBuildError(f"cmake {step} failed: {_last_error_line(proc.stdout + proc.stderr)} "
                                       f"(full log: {log_path})")
            log(f"cmake {step}: ok ({time.monotonic() - started:.1f} s)")
        built = build_dir / PLUGIN_LIBRARY_NAME
        if not built.is_file():
            raise PluginBuildError(f"the build produced no {PLUGIN_LIBRARY_NAME} (full log: {log_path})")

        # Atomic install: a backend loading the library concurrently sees the old or the new file.
        target = install_dir / PLUGIN_LIBRARY_NAME
        staging = install_dir / f".{PLUGIN_LIBRARY_NAME}.{os.getpid()}.tmp"
        shutil.copyfile(built, staging)
        os.chmod(staging, 0o755)
        os.replace(staging, target)

    manifest = {
        "library": PLUGIN_LIBRARY_NAME,
        "sha256": sha256_file(target),
        "plugins": [PLUGIN_IDENTITY],
        "tensorrt_version": trt.version_str,
        "tensorrt_track": trt.track,
        "tensorrt_include_dir": str(trt.include_dir),
        "tensorrt_library": str(trt.library),
        "cuda_version": nvcc_version,
        "cuda_arch": arch,
        "cuda_arch_source": arch_source,
        "source_sha256": _source_digest(),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": sys.version.split()[0],
    }
    manifest_path = install_dir / PLUGIN_MANIFEST_NAME
    staging_manifest = install_dir / f".{PLUGIN_MANIFEST_NAME}.{os.getpid()}.tmp"
    staging_manifest.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(staging_manifest, manifest_path)
    log(f"installed {target} (sha256 {manifest['sha256'][:16]}...)")
    return target


def build_plugin_command(
    cuda_arch: Optional[str] = typer.Option(
        None, "--cuda-arch", help="Compute capability to build for (87, 8.7 or sm_87); default: this GPU's."),
    tensorrt_root: Optional[Path] = typer.Option(
        None, "--tensorrt-root", help="TensorRT install prefix to search first (holds include/ and lib/)."),
    out_dir: Optional[Path] = typer.Option(
        None, "--out-dir", help="Install somewhere else (packaging only: the agent loads plugins from its own "
                                "install directory)."),
) -> None:
    """Build the TensorRT plugins (autonad::SpatialShift) for this device and install them into the agent."""
    try:
        build_plugin(out_dir=out_dir, cuda_arch=cuda_arch, tensorrt_root=tensorrt_root,
                     log=lambda line: typer.echo(line))
    except PluginBuildError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None
    except OSError as exc:  # disk full, permissions, ...: still one line, no traceback
        typer.echo(f"error: cannot build the TensorRT plugin: {exc}", err=True)
        raise typer.Exit(code=1) from None
