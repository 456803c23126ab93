"""The spatial-shift CUDA kernel (agents/autonad_agent/plugins/spatial_shift).

Three layers, each running wherever its tools exist:

* compile: nvcc builds the kernel for the edge/desktop architectures we ship to (one nvcc
  call, one -gencode per arch), with ptxas reporting no register spills;
* emulate: a C++ compiler builds the kernel's own indexing core
  (``spatial_shift_core.h``: planning, vector width, grid-stride loop, borders) for the
  host, and the result is compared bit for bit with a NumPy transcription of the
  operator -- this checks the kernel's logic on machines without a GPU;
* run: on a machine with a CUDA GPU, the real kernel runs through a small ctypes
  harness and is compared bit for bit as well.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

PLUGIN_DIR = Path(__file__).resolve().parents[1] / "agents" / "autonad_agent" / "plugins" / "spatial_shift"
KERNEL_SRC = PLUGIN_DIR / "spatial_shift.cu"

# Jetson Xavier (72), Ampere desktop (86), Jetson Orin (87), Hopper (90).
TARGET_ARCHS = ("72", "86", "87", "90")

FP32, FP16 = 0, 1
INVALID, EMPTY = 1, 2  # emulator return codes


# --------------------------------------------------------------------------- reference
_PATTERNS = {1: ((2, +1), (2, -1), (3, +1), (3, -1)), 2: ((3, +1), (3, -1), (2, +1), (2, -1))}


def shift_reference(x: np.ndarray, pattern: int) -> np.ndarray:
    """NumPy transcription of the operator: y[i] = x[clamp(i - step)] along the group's axis."""
    c = x.shape[1]
    bounds = [(g * c) // 4 for g in range(5)]
    y = np.empty_like(x)
    for g, (axis, step) in enumerate(_PATTERNS[pattern]):
        lo, hi = bounds[g], bounds[g + 1]
        size = x.shape[axis]
        src = np.clip(np.arange(size) - step, 0, size - 1)
        y[:, lo:hi] = np.take(x[:, lo:hi], src, axis=axis)
    return y


def random_bits(shape: tuple[int, ...], dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    """Random raw bit patterns (NaN payloads, infinities, -0.0 included) viewed as `dtype`."""
    uint = np.uint32 if np.dtype(dtype).itemsize == 4 else np.uint16
    info = np.iinfo(uint)
    return rng.integers(0, int(info.max) + 1, size=shape, dtype=np.uint64).astype(uint).view(dtype)


def bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint32 if a.dtype.itemsize == 4 else np.uint16)


SHAPES = [
    (1, 1, 1, 1), (1, 2, 1, 1), (1, 3, 2, 2), (1, 4, 1, 1), (1, 4, 3, 1), (1, 4, 1, 7),
    (2, 5, 3, 4), (1, 6, 4, 4), (3, 7, 5, 9), (2, 8, 16, 16), (1, 9, 1, 16), (2, 10, 7, 1),
    (1, 13, 5, 12), (1, 16, 8, 24), (2, 3, 9, 33), (1, 12, 2, 2), (1, 31, 6, 10), (4, 17, 3, 8),
]


def test_numpy_transcription_matches_torch_reference() -> None:
    """The NumPy transcription the kernel is checked against is the project's operator."""
    torch = pytest.importorskip("torch", reason="torch not installed (host extra)")
    from autonad_edge.models.spatial_shift import spatial_shift_reference

    rng = np.random.default_rng(0)
    for shape in SHAPES:
        x = rng.standard_normal(shape).astype(np.float32)
        for pattern in (1, 2):
            want = spatial_shift_reference(torch.from_numpy(x), pattern).numpy()
            np.testing.assert_array_equal(shift_reference(x, pattern), want, err_msg=f"{shape} p{pattern}")


# --------------------------------------------------------------------------- compile
def _nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    return None


def _nvcc_archs(nvcc: str) -> set[str]:
    out = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, check=False).stdout
    return set(re.findall(r"compute_(\d+)", out))


@pytest.fixture(scope="module")
def kernel_build(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Compile the kernel once for every target arch this nvcc supports (parallel gencode)."""
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (no CUDA toolkit on this machine)")
    supported = _nvcc_archs(nvcc)
    archs = [a for a in TARGET_ARCHS if a in supported]
    if not archs:
        pytest.skip(f"this nvcc supports none of sm_{', sm_'.join(TARGET_ARCHS)}")
    obj = tmp_path_factory.mktemp("kernel") / "spatial_shift.o"
    cmd = [nvcc, "-std=c++17", "-O3", "-c", str(KERNEL_SRC), "-o", str(obj), "--threads", "0",
           "-Xcompiler", "-fPIC,-fvisibility=hidden,-Wall,-Wextra", "-Werror", "all-warnings", "-Xptxas", "-v"]
    for arch in archs:
        cmd += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"nvcc failed:\n{proc.stderr[-4000:]}"
    return {"nvcc": nvcc, "archs": archs, "supported": supported, "log": proc.stdout + proc.stderr, "obj": obj}


@pytest.mark.parametrize("arch", TARGET_ARCHS)
def test_kernel_compiles_for_arch(kernel_build: dict, arch: str) -> None:
    if arch not in kernel_build["supported"]:
        release = re.search(r"release (\S+),", subprocess.run([kernel_build["nvcc"], "--version"], capture_output=True,
                                                               text=True, check=False).stdout)
        why = " (CUDA 13 dropped Volta: Xavier's sm_72 needs CUDA <= 12, as on JetPack 5)" if arch == "72" else ""
        pytest.skip(f"nvcc {release.group(1) if release else ''} cannot target sm_{arch}{why}")
    log = kernel_build["log"]
    entries = re.findall(r"Compiling entry function '(\w+)' for 'sm_(\d+)'", log)
    kernels = {name for name, a in entries if a == arch and "spatial_shift_kernel" in name}
    # 2 dtypes x vector widths (fp32: 4, 2, 1; fp16: 8, 4, 2, 1) x 2 index widths.
    assert len(kernels) == 14, f"sm_{arch}: expected 14 kernel instantiations, ptxas compiled {len(kernels)}"
    # ptxas prints one usage block per entry, in order; no instantiation may spill.
    per_arch = [block for block in re.split(r"(?=ptxas info\s*: Compiling entry function)", log)
                if f"for 'sm_{arch}'" in block]
    spills = [b for b in per_arch if re.search(r"[1-9]\d* bytes spill (stores|loads)", b)]
    assert not spills, f"sm_{arch}: register spills:\n{spills[0]}"


def test_kernel_exports_only_the_launcher(kernel_build: dict) -> None:
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm not found")
    out = subprocess.run([nm, "-g", "--defined-only", str(kernel_build["obj"])], capture_output=True, text=True,
                         check=True).stdout
    exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
    # C-linkage symbols; C++ ones are anonymous-namespace internals (made local in the plugin
    # library by its version script) and DW.ref.* is compiler-generated unwind data.
    c_symbols = {s for s in exported if not s.startswith(("_Z", "DW.ref.", "__"))}
    assert c_symbols == {"autonad_spatial_shift"}


# --------------------------------------------------------------------------- emulate
EMULATOR_SRC = r"""
#include "spatial_shift_core.h"
#include <cstdint>
using namespace autonad::shift;

extern "C" int emu_shift(const void* x, void* y, long long n, long long c, long long h, long long w, int pattern,
                         int dtype, int sm_count, int blocks_per_sm, int force_wide, int* vec_out)
{
    Plan plan{};
    const PlanStatus st = make_plan(reinterpret_cast<uintptr_t>(x), reinterpret_cast<uintptr_t>(y), n, c, h, w,
                                    pattern, dtype, plan);
    if (st == PlanStatus::kInvalid) return 1;
    if (st == PlanStatus::kEmpty) return 2;
    if (force_wide) plan.wideIndex = true;
    *vec_out = plan.vec;
    const unsigned blocks = grid_blocks(plan.params.items, sm_count, blocks_per_sm);
    dispatch(plan, [&](auto tt, auto vt, auto it) {
        using T = typename decltype(tt)::type;
        constexpr int V = decltype(vt)::value;
        using Index = typename decltype(it)::type;
        const Index nthreads = static_cast<Index>(blocks) * kBlockThreads;
        for (Index t = 0; t < nthreads; ++t)
            shift_thread<T, V, Index>(static_cast<const T*>(x), static_cast<T*>(y), plan.params, t, nthreads);
    });
    return 0;
}

extern "C" long long emu_fastdiv_mismatches(const uint32_t* ds, int nd, const uint32_t* ns, int nn)
{
    long long bad = 0;
    for (int i = 0; i < nd; ++i) {
        const FastDivmod d(ds[i]);
        for (int j = 0; j < nn; ++j) {
            uint32_t q, r;
            divmod(ns[j], d, q, r);
            bad += (q != ns[j] / ds[i]) || (r != ns[j] % ds[i]);
        }
    }
    return bad;
}
"""


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    cxx = next((c for c in (os.environ.get("CXX"), "c++", "g++", "clang++") if c and shutil.which(c)), None)
    if cxx is None:
        pytest.skip("no C++ compiler to build the host emulation of the kernel core")
    if sys.platform == "win32":
        pytest.skip("the host emulation build is POSIX-only")
    d = tmp_path_factory.mktemp("emu")
    src, lib = d / "emu.cpp", d / "libemu.so"
    src.write_text(EMULATOR_SRC)
    proc = subprocess.run([cxx, "-std=c++17", "-O2", "-shared", "-fPIC", "-fno-strict-aliasing", "-Wall",
                           "-Wextra", "-Werror", f"-I{PLUGIN_DIR}", str(src), "-o", str(lib)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"emulator build failed:\n{proc.stderr[-4000:]}"
    emu = ctypes.CDLL(str(lib))
    emu.emu_shift.restype = ctypes.c_int
    emu.emu_shift.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_longlong] * 4 + [ctypes.c_int] * 5 + [
        ctypes.POINTER(ctypes.c_int)]
    emu.emu_fastdiv_mismatches.restype = ctypes.c_longlong
    emu.emu_fastdiv_mismatches.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    return emu


GUARD = 64  # bytes of sentinel around the output: catches any out-of-bounds store


def _aligned_buffer(nbytes: int, offset: int) -> tuple[np.ndarray, int]:
    """A byte buffer whose payload starts `offset` bytes past a 64-byte boundary."""
    raw = np.empty(nbytes + 2 * GUARD + 128, dtype=np.uint8)
    start = (-raw.ctypes.data) % 64 + GUARD + offset
    return raw, start


def run_emulated(emu: ctypes.CDLL, x: np.ndarray, pattern: int, offset_elems: int = 0, sm_count: int = 2,
                 blocks_per_sm: int = 1, force_wide: bool = False) -> tuple[np.ndarray, int]:
    n, c, h, w = x.shape
    dtype = FP32 if x.dtype == np.float32 else FP16
    nbytes = x.nbytes
    off = offset_elems * x.itemsize
    xraw, xs = _aligned_buffer(nbytes, off)
    yraw, ys = _aligned_buffer(nbytes, off)
    xraw[xs:xs + nbytes] = np.ascontiguousarray(x).view(np.uint8).reshape(-1)
    yraw[:] = 0xA5
    vec = ctypes.c_int(0)
    rc = emu.emu_shift(xraw.ctypes.data + xs, yraw.ctypes.data + ys, n, c, h, w, pattern, dtype, sm_count,
                       blocks_per_sm, int(force_wide), ctypes.byref(vec))
    assert rc == 0, f"emulator rejected {x.shape} pattern {pattern}: rc={rc}"
    assert (yraw[:ys] == 0xA5).all() and (yraw[ys + nbytes:] == 0xA5).all(), "store outside the output"
    y = yraw[ys:ys + nbytes].copy().view(x.dtype).reshape(x.shape)
    return y, vec.value


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("pattern", [1, 2])
def test_emulated_kernel_bit_exact(emulator: ctypes.CDLL, dtype: type, pattern: int) -> None:
    rng = np.random.default_rng(pattern * 10 + (dtype == np.float16))
    shapes = SHAPES + [tuple(int(v) for v in rng.integers(1, 12, size=4)) for _ in range(12)]
    vecs_seen = set()
    for shape in shapes:
        x = random_bits(shape, dtype, rng)
        want = bits(shift_reference(x, pattern))
        # Offsets select every vector width (16 B down to scalar) on the same shape.
        for offset in (0, 1, 2, 4):
            y, vec = run_emulated(emulator, x, pattern, offset_elems=offset)
            vecs_seen.add(vec)
            np.testing.assert_array_equal(bits(y), want, err_msg=f"{shape} pattern {pattern} offset {offset}")
    expected = {4, 2, 1} if dtype == np.float32 else {8, 4, 2, 1}
    assert vecs_seen == expected, f"vector widths exercised: {sorted(vecs_seen)}"


@pytest.mark.parametrize("force_wide", [False, True], ids=["index32", "index64"])
@pytest.mark.parametrize("grid", [(1, 1), (4, 3), (132, 8)], ids=["1blk", "12blk", "h100"])
def test_emulated_grid_stride_and_index_widths(emulator: ctypes.CDLL, grid: tuple[int, int], force_wide: bool) -> None:
    """Tiny grids force many grid-stride trips with ragged tails; large ones leave threads idle."""
    rng = np.random.default_rng(7)
    for shape, dtype in (((2, 11, 13, 24), np.float32), ((1, 6, 5, 40), np.float16), ((3, 5, 4, 3), np.float32)):
        x = random_bits(shape, dtype, rng)
        for pattern in (1, 2):
            y, _ = run_emulated(emulator, x, pattern, sm_count=grid[0], blocks_per_sm=grid[1], force_wide=force_wide)
            np.testing.assert_array_equal(bits(y), bits(shift_reference(x, pattern)))


def test_emulated_argument_checks(emulator: ctypes.CDLL) -> None:
    buf = np.zeros(4096, dtype=np.uint8)
    base = buf.ctypes.data + (-buf.ctypes.data) % 64
    vec = ctypes.c_int(0)

    def call(x: int, y: int, shape: tuple[int, int, int, int], pattern: int = 1, dtype: int = FP32) -> int:
        return emulator.emu_shift(x, y, *shape, pattern, dtype, 1, 1, 0, ctypes.byref(vec))

    ok_shape = (1, 4, 4, 4)  # 256 bytes in fp32
    assert call(base, base + 1024, ok_shape) == 0
    assert call(base, base, ok_shape) == INVALID, "in place must be refused"
    assert call(base, base + 128, ok_shape) == INVALID, "overlap must be refused"
    assert call(base + 128, base, ok_shape) == INVALID, "overlap must be refused"
    assert call(base, base + 1024, ok_shape, pattern=0) == INVALID
    assert call(base, base + 1024, ok_shape, pattern=3) == INVALID
    assert call(base, base + 1024, ok_shape, dtype=2) == INVALID
    assert call(0, base + 1024, ok_shape) == INVALID
    assert call(base + 2, base + 1024, ok_shape) == INVALID, "fp32 pointer not 4-byte aligned"
    assert call(base + 2, base + 1026, ok_shape, dtype=FP16) == 0, "fp16 needs only 2-byte alignment"
    assert call(base, base + 1024, (1, -1, 4, 4)) == INVALID
    assert call(base, base + 1024, (2 ** 31, 1, 1, 1)) == INVALID, "extent beyond int32"
    assert call(base, base + 1024, (0, 4, 4, 4)) == EMPTY
    assert call(base, base + 1024, (1, 4, 0, 4)) == EMPTY


def test_fast_divmod_exact(emulator: ctypes.CDLL) -> None:
    rng = np.random.default_rng(3)
    ds = np.concatenate([np.arange(1, 300), [2 ** k for k in range(31)], [2 ** k - 1 for k in range(2, 32)],
                         [2 ** k + 1 for k in range(1, 31)], rng.integers(1, 2 ** 31, 200)]).astype(np.uint32)
    ds = ds[(ds >= 1) & (ds < 2 ** 31)]
    ns = np.concatenate([np.arange(0, 2000), [2 ** 31 - 1, 2 ** 31 - 2, 2 ** 30, 2 ** 30 - 1],
                         rng.integers(0, 2 ** 31, 3000)]).astype(np.uint32)
    ds, ns = np.ascontiguousarray(ds), np.ascontiguousarray(ns)
    assert emulator.emu_fastdiv_mismatches(ds.ctypes.data, len(ds), ns.ctypes.data, len(ns)) == 0


# --------------------------------------------------------------------------- run on a GPU
def _gpu_compute_cap() -> tuple[str | None, str]:
    """This machine's GPU architecture ("87") via nvidia-smi, pycuda or the Jetson device
    tree (the agent's own detection), or None and why not."""
    sys.path.insert(0, str(PLUGIN_DIR.parents[2]))
    from autonad_agent.plugin_build import detect_compute_capability

    nvcc = _nvcc()
    return detect_compute_capability(Path(nvcc) if nvcc else None)


HARNESS_SRC = r"""
#include "spatial_shift.h"
#include <cuda_runtime.h>
#include <cstddef>

// Copies x to the device at `offset` bytes past an allocation (to exercise unaligned
// vector fallbacks), runs the launcher on a non-default stream, copies y back. The output
// is pre-filled with a sentinel; `guard` bytes after it must stay untouched.
extern "C" int harness_run(const void* hx, void* hy, size_t bytes, size_t offset, size_t guard, int n, int c, int h,
                           int w, int pattern, int dtype, int* guard_ok)
{
    char* dx = nullptr;
    char* dy = nullptr;
    unsigned char* tail = nullptr;
    cudaStream_t stream = nullptr;
    int rc = 0;
    size_t total = offset + bytes + guard;
#define CHECK(call) do { cudaError_t e_ = (call); if (e_ != cudaSuccess) { rc = (int)e_; goto done; } } while (0)
    CHECK(cudaMalloc(&dx, total));
    CHECK(cudaMalloc(&dy, total));
    CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    CHECK(cudaMemset(dy, 0xA5, total));
    CHECK(cudaMemcpy(dx + offset, hx, bytes, cudaMemcpyHostToDevice));
    CHECK((cudaError_t)autonad_spatial_shift(dx + offset, dy + offset, n, c, h, w, pattern, dtype, stream));
    CHECK(cudaStreamSynchronize(stream));
    CHECK(cudaMemcpy(hy, dy + offset, bytes, cudaMemcpyDeviceToHost));
    CHECK(cudaMallocHost(&tail, guard + 1));
    CHECK(cudaMemcpy(tail, dy + offset + bytes, guard, cudaMemcpyDeviceToHost));
    *guard_ok = 1;
    for (size_t i = 0; i < guard; ++i) *guard_ok &= tail[i] == 0xA5;
done:
#undef CHECK
    if (tail) cudaFreeHost(tail);
    if (stream) cudaStreamDestroy(stream);
    cudaFree(dx);
    cudaFree(dy);
    return rc;
}

extern "C" int harness_launch_raw(const void* x, void* y, int n, int c, int h, int w, int pattern, int dtype)
{
    return autonad_spatial_shift(x, y, n, c, h, w, pattern, dtype, nullptr);
}
"""


@pytest.fixture(scope="module")
def gpu_harness(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    cap, why = _gpu_compute_cap()
    if cap is None:
        pytest.skip(f"no CUDA GPU here ({why}): the kernel is only compiled and emulated")
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("a CUDA GPU is present but nvcc is not")
    if cap not in _nvcc_archs(nvcc):
        pytest.skip(f"nvcc cannot target this GPU's sm_{cap}")
    d = tmp_path_factory.mktemp("gpu")
    src, lib = d / "harness.cu", d / "libharness.so"
    src.write_text(HARNESS_SRC)
    proc = subprocess.run([nvcc, "-std=c++17", "-O3", "--shared", "-Xcompiler", "-fPIC", f"-I{PLUGIN_DIR}",
                           "-gencode", f"arch=compute_{cap},code=sm_{cap}", str(KERNEL_SRC), str(src), "-o", str(lib)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"harness build failed:\n{proc.stderr[-4000:]}"
    harness = ctypes.CDLL(str(lib))
    harness.harness_run.restype = ctypes.c_int
    harness.harness_run.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t,
                                    ctypes.c_size_t] + [ctypes.c_int] * 6 + [ctypes.POINTER(ctypes.c_int)]
    harness.harness_launch_raw.restype = ctypes.c_int
    harness.harness_launch_raw.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int] * 6
    return harness


def run_on_gpu(harness: ctypes.CDLL, x: np.ndarray, pattern: int, offset_elems: int = 0) -> np.ndarray:
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    guard_ok = ctypes.c_int(0)
    rc = harness.harness_run(x.ctypes.data, y.ctypes.data, x.nbytes, offset_elems * x.itemsize, 256, *x.shape,
                             pattern, FP32 if x.dtype == np.float32 else FP16, ctypes.byref(guard_ok))
    assert rc == 0, f"CUDA error {rc} for {x.shape} pattern {pattern}"
    assert guard_ok.value == 1, "kernel wrote past the output"
    return y


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("pattern", [1, 2])
def test_gpu_kernel_bit_exact(gpu_harness: ctypes.CDLL, dtype: type, pattern: int) -> None:
    rng = np.random.default_rng(100 + pattern)
    shapes = SHAPES + [tuple(int(v) for v in rng.integers(1, 40, size=4)) for _ in range(40)]
    shapes += [(1, 64, 56, 56), (2, 130, 28, 30), (1, 3, 512, 512), (8, 96, 14, 14), (1, 1, 1, 100_003)]
    for shape in shapes:
        x = random_bits(shape, dtype, rng)
        want = bits(shift_reference(x, pattern))
        for offset in (0, 1, 2):
            got = bits(run_on_gpu(gpu_harness, x, pattern, offset))
            np.testing.assert_array_equal(got, want, err_msg=f"{shape} pattern {pattern} offset {offset}")


@pytest.mark.gpu
def test_gpu_launcher_rejects_bad_arguments(gpu_harness: ctypes.CDLL) -> None:
    cuda_error_invalid_value = 1
    fake = 1 << 20  # never dereferenced: validation happens before any launch
    assert gpu_harness.harness_launch_raw(fake, fake, 1, 4, 4, 4, 1, FP32) == cuda_error_invalid_value
    assert gpu_harness.harness_launch_raw(fake, fake + 4096, 1, 4, 4, 4, 5, FP32) == cuda_error_invalid_value
    assert gpu_harness.harness_launch_raw(fake, fake + 4096, 1, 4, 4, 4, 1, 7) == cuda_error_invalid_value
    assert gpu_harness.harness_launch_raw(fake, fake + 4096, 0, 4, 4, 4, 1, FP32) == 0, "empty tensor is a no-op"
