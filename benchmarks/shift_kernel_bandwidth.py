"""Effective memory bandwidth of the spatial-shift CUDA kernel.

For each NCHW shape and dtype it times, with CUDA events on one stream:

* the kernel (``autonad_spatial_shift`` from agents/autonad_agent/plugins/spatial_shift),
* a device-to-device copy of the same bytes (cudaMemcpyAsync): the practical ceiling for
  an op that reads and writes every element once,
* the same shift lowered to standard ops (slices + concatenations, as TensorRT runs the
  portable ONNX export and as ``spatial_shift_reference`` computes it),

and reports effective bandwidth = (bytes read + bytes written) / time. Target: the kernel
reaches >= 80 % of the copy bandwidth on tensors large enough to be bandwidth-bound. The
kernel's output is checked bit for bit against the lowered ops before timing.

Needs a CUDA GPU, nvcc, and torch with CUDA or cupy (torch preferred). Without a GPU it
prints one line and exits 0, so it can sit in scripts that also run on CPU machines.

    python benchmarks/shift_kernel_bandwidth.py --out results.json
    python benchmarks/shift_kernel_bandwidth.py --shapes 1x64x256x256 8x256x64x64 --dtypes fp16
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parents[1]
KERNEL_DIR = REPO / "agents" / "autonad_agent" / "plugins" / "spatial_shift"
TARGET_FRACTION = 0.80
DEFAULT_SHAPES = [
    "1x64x256x256", "1x128x128x128", "1x256x64x64", "8x64x128x128", "16x256x56x56",
    "32x128x64x64", "1x512x32x32", "4x96x30x30", "2x48x75x75",  # last two: W not a multiple of 4/8
]
FP32, FP16 = 0, 1


@dataclass
class Row:
    shape: tuple[int, int, int, int]
    dtype: str
    megabytes: float
    kernel_us: float
    kernel_gbps: float
    copy_us: float
    copy_gbps: float
    fraction_of_copy: float
    lowered_us: float
    lowered_gbps: float
    speedup_vs_lowered: float
    bandwidth_bound: bool  # large enough that launch latency does not dominate
    meets_target: Optional[bool]


# ----------------------------------------------------------------------------- GPU access
class Gpu:
    """The few things the benchmark needs from torch or cupy."""

    name: str
    library: str

    def compute_capability(self) -> tuple[int, int]: ...
    def device_name(self) -> str: ...
    def random(self, shape: tuple[int, ...], dtype: str) -> Any: ...
    def empty_like(self, x: Any) -> Any: ...
    def ptr(self, x: Any) -> int: ...
    def nbytes(self, x: Any) -> int: ...
    def stream(self) -> int: ...
    def copy(self, dst: Any, src: Any) -> None: ...
    def lowered(self, x: Any, pattern: int) -> Any: ...
    def equal_bits(self, a: Any, b: Any) -> bool: ...
    def time_ms(self, fn: Callable[[], None], iters: int, repeats: int) -> float: ...


class TorchGpu(Gpu):
    library = "torch"

    def __init__(self) -> None:
        import torch

        sys.path.insert(0, str(REPO))
        from autonad_edge.models.spatial_shift import spatial_shift_reference

        self.torch = torch
        self.reference = spatial_shift_reference
        self.version = torch.__version__

    def compute_capability(self) -> tuple[int, int]:
        return tuple(self.torch.cuda.get_device_capability())  # type: ignore[return-value]

    def device_name(self) -> str:
        return self.torch.cuda.get_device_name()

    def random(self, shape: tuple[int, ...], dtype: str) -> Any:
        return self.torch.randn(shape, device="cuda", dtype=getattr(self.torch, dtype))

    def empty_like(self, x: Any) -> Any:
        return self.torch.empty_like(x)

    def ptr(self, x: Any) -> int:
        return int(x.data_ptr())

    def nbytes(self, x: Any) -> int:
        return x.numel() * x.element_size()

    def stream(self) -> int:
        return int(self.torch.cuda.current_stream().cuda_stream)

    def copy(self, dst: Any, src: Any) -> None:
        dst.copy_(src)  # contiguous, same dtype: cudaMemcpyAsync device-to-device

    def lowered(self, x: Any, pattern: int) -> Any:
        return self.reference(x, pattern)

    def equal_bits(self, a: Any, b: Any) -> bool:
        view = self.torch.int32 if a.element_size() == 4 else self.torch.int16
        return bool(self.torch.equal(a.contiguous().view(view), b.contiguous().view(view)))

    def time_ms(self, fn: Callable[[], None], iters: int, repeats: int) -> float:
        torch = self.torch
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        samples = []
        for _ in range(repeats):
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / iters)
        return statistics.median(samples)


class CupyGpu(Gpu):
    library = "cupy"

    def __init__(self) -> None:
        import cupy

        self.cp = cupy
        self.version = cupy.__version__

    def compute_capability(self) -> tuple[int, int]:
        cc = self.cp.cuda.Device().compute_capability  # e.g. "87"
        return int(cc[:-1]), int(cc[-1])

    def device_name(self) -> str:
        props = self.cp.cuda.runtime.getDeviceProperties(self.cp.cuda.Device().id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)

    def random(self, shape: tuple[int, ...], dtype: str) -> Any:
        return self.cp.random.standard_normal(shape, dtype=self.cp.float32).astype(dtype)

    def empty_like(self, x: Any) -> Any:
        return self.cp.empty_like(x)

    def ptr(self, x: Any) -> int:
        return int(x.data.ptr)

    def nbytes(self, x: Any) -> int:
        return int(x.nbytes)

    def stream(self) -> int:
        return int(self.cp.cuda.get_current_stream().ptr)

    def copy(self, dst: Any, src: Any) -> None:
        device_to_device = 3
        self.cp.cuda.runtime.memcpyAsync(dst.data.ptr, src.data.ptr, src.nbytes, device_to_device, self.stream())

    def lowered(self, x: Any, pattern: int) -> Any:
        cp = self.cp
        table = {1: ((2, 1), (2, -1), (3, 1), (3, -1)), 2: ((3, 1), (3, -1), (2, 1), (2, -1))}[pattern]
        c = x.shape[1]
        bounds = [(g * c) // 4 for g in range(5)]
        pieces = []
        for g, (axis, step) in enumerate(table):
            part = x[:, bounds[g]:bounds[g + 1]]
            n = part.shape[axis]
            if part.shape[1] == 0 or n <= 1:
                pieces.append(part)
                continue
            idx = [slice(None)] * 4
            if step > 0:
                head, body = list(idx), list(idx)
                head[axis], body[axis] = slice(0, 1), slice(0, n - 1)
                pieces.append(cp.concatenate([part[tuple(head)], part[tuple(body)]], axis=axis))
            else:
                body, tail = list(idx), list(idx)
                body[axis], tail[axis] = slice(1, n), slice(n - 1, n)
                pieces.append(cp.concatenate([part[tuple(body)], part[tuple(tail)]], axis=axis))
        return cp.concatenate(pieces, axis=1)

    def equal_bits(self, a: Any, b: Any) -> bool:
        view = self.cp.int32 if a.dtype.itemsize == 4 else self.cp.int16
        return bool((a.view(view) == b.view(view)).all())

    def time_ms(self, fn: Callable[[], None], iters: int, repeats: int) -> float:
        cp = self.cp
        start, end = cp.cuda.Event(), cp.cuda.Event()
        samples = []
        for _ in range(repeats):
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            samples.append(cp.cuda.get_elapsed_time(start, end) / iters)
        return statistics.median(samples)


def open_gpu() -> tuple[Optional[Gpu], str]:
    reasons = []
    try:
        import torch

        if torch.cuda.is_available():
            return TorchGpu(), ""
        reasons.append(f"torch {torch.__version__} sees no CUDA device")
    except ImportError:
        reasons.append("torch not installed")
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return CupyGpu(), ""
        reasons.append("cupy sees no CUDA device")
    except ImportError:
        reasons.append("cupy not installed")
    except Exception as exc:  # cupy raises CUDARuntimeError without a driver
        reasons.append(f"cupy: {exc}")
    return None, "; ".join(reasons)


# ----------------------------------------------------------------------------- the kernel
def build_kernel(cc: tuple[int, int], workdir: Path) -> ctypes.CDLL:
    sys.path.insert(0, str(REPO / "agents"))
    from autonad_agent.plugin_build import find_nvcc

    nvcc = find_nvcc()
    if nvcc is None:
        raise SystemExit("shift_kernel_bandwidth: nvcc not found (set CUDA_HOME); nothing measured")
    arch = f"{cc[0]}{cc[1]}"
    library = workdir / "libshift.so"
    cmd = [str(nvcc), "-std=c++17", "-O3", "--shared", "-Xcompiler", "-fPIC", "-gencode",
           f"arch=compute_{arch},code=sm_{arch}", str(KERNEL_DIR / "spatial_shift.cu"), "-o", str(library)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"shift_kernel_bandwidth: nvcc failed for sm_{arch}: {proc.stderr.strip()[-500:]}")
    lib = ctypes.CDLL(str(library))
    lib.autonad_spatial_shift.restype = ctypes.c_int
    lib.autonad_spatial_shift.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int] * 6 + [ctypes.c_void_p]
    return lib


def parse_shape(text: str) -> tuple[int, int, int, int]:
    parts = tuple(int(p) for p in text.lower().split("x"))
    if len(parts) != 4 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"shape must be NxCxHxW with positive extents, got {text!r}")
    return parts  # type: ignore[return-value]


def measure(gpu: Gpu, lib: ctypes.CDLL, shape: tuple[int, int, int, int], dtype: str, pattern: int,
            iters: int, repeats: int) -> Row:
    x = gpu.random(shape, dtype)
    y = gpu.empty_like(x)
    nbytes = gpu.nbytes(x)
    code = FP32 if dtype == "float32" else FP16
    stream = gpu.stream()

    def kernel() -> None:
        status = lib.autonad_spatial_shift(gpu.ptr(x), gpu.ptr(y), *shape, pattern, code, stream)
        if status != 0:
            raise RuntimeError(f"autonad_spatial_shift returned CUDA error {status}")

    kernel()
    if not gpu.equal_bits(y, gpu.lowered(x, pattern)):
        raise SystemExit(f"shift_kernel_bandwidth: kernel output differs from the standard-op lowering for "
                         f"{shape} {dtype} pattern {pattern}")
    for fn in (kernel, lambda: gpu.copy(y, x), lambda: gpu.lowered(x, pattern)):  # warm-up
        for _ in range(3):
            fn()
    kernel_ms = gpu.time_ms(kernel, iters, repeats)
    copy_ms = gpu.time_ms(lambda: gpu.copy(y, x), iters, repeats)
    lowered_ms = gpu.time_ms(lambda: gpu.lowered(x, pattern), max(1, iters // 4), repeats)

    moved = 2 * nbytes  # every element read once and written once

    def gbps(ms: float) -> float:
        return moved / (ms * 1e-3) / 1e9

    bound = nbytes >= 16 * 1024 * 1024  # below ~16 MB launch latency and caches dominate
    fraction = copy_ms / kernel_ms
    return Row(
        shape=shape, dtype=dtype, megabytes=nbytes / 2**20,
        kernel_us=kernel_ms * 1e3, kernel_gbps=gbps(kernel_ms),
        copy_us=copy_ms * 1e3, copy_gbps=gbps(copy_ms), fraction_of_copy=fraction,
        lowered_us=lowered_ms * 1e3, lowered_gbps=gbps(lowered_ms), speedup_vs_lowered=lowered_ms / kernel_ms,
        bandwidth_bound=bound, meets_target=(fraction >= TARGET_FRACTION) if bound else None,
    )


def print_table(rows: list[Row]) -> None:
    header = (f"{'shape':>18} {'dtype':>7} {'MiB':>8} | {'kernel us':>10} {'GB/s':>7} | {'copy us':>9} {'GB/s':>7} "
              f"{'%copy':>6} | {'lowered us':>10} {'GB/s':>7} {'speedup':>7} | target")
    print(header)
    print("-" * len(header))
    for r in rows:
        verdict = "n/a (small)" if r.meets_target is None else ("ok" if r.meets_target else "BELOW")
        print(f"{'x'.join(map(str, r.shape)):>18} {r.dtype:>7} {r.megabytes:8.1f} | {r.kernel_us:10.1f} "
              f"{r.kernel_gbps:7.1f} | {r.copy_us:9.1f} {r.copy_gbps:7.1f} {100 * r.fraction_of_copy:5.1f}% | "
              f"{r.lowered_us:10.1f} {r.lowered_gbps:7.1f} {r.speedup_vs_lowered:6.2f}x | {verdict}")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", type=parse_shape, default=[parse_shape(s) for s in DEFAULT_SHAPES],
                        metavar="NxCxHxW")
    parser.add_argument("--dtypes", nargs="+", choices=["fp32", "fp16"], default=["fp32", "fp16"])
    parser.add_argument("--pattern", type=int, choices=[1, 2], default=1)
    parser.add_argument("--iters", type=int, default=50, help="launches per timed batch")
    parser.add_argument("--repeats", type=int, default=7, help="timed batches (the median is reported)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)

    gpu, why = open_gpu()
    if gpu is None:
        print(f"shift_kernel_bandwidth: no CUDA GPU here ({why}); nothing measured")
        return 0
    cc = gpu.compute_capability()
    with tempfile.TemporaryDirectory(prefix="shift-bench-") as tmp:
        lib = build_kernel(cc, Path(tmp))
        print(f"{gpu.device_name()} (sm_{cc[0]}{cc[1]}), {gpu.library} {gpu.version}, pattern {args.pattern}, "
              f"median of {args.repeats} x {args.iters} launches\n")
        dtypes = {"fp32": "float32", "fp16": "float16"}
        rows = [measure(gpu, lib, shape, dtypes[d], args.pattern, args.iters, args.repeats)
                for d in args.dtypes for shape in args.shapes]
    print_table(rows)
    bound = [r for r in rows if r.bandwidth_bound]
    worst = min((r.fraction_of_copy for r in bound), default=None)
    summary = {
        "bandwidth_bound_rows": len(bound),
        "rows_meeting_target": sum(bool(r.meets_target) for r in bound),
        "worst_fraction_of_copy": worst,
        "median_speedup_vs_lowered": statistics.median(r.speedup_vs_lowered for r in rows),
        "target_fraction_of_copy": TARGET_FRACTION,
    }
    if worst is not None:
        print(f"\nbandwidth-bound shapes: worst {100 * worst:.1f}% of copy bandwidth (target "
              f"{100 * TARGET_FRACTION:.0f}%); median speedup over standard ops "
              f"{summary['median_speedup_vs_lowered']:.2f}x")
    if args.out:
        report = {
            "device": gpu.device_name(), "compute_capability": f"{cc[0]}.{cc[1]}", "library": gpu.library,
            "library_version": gpu.version, "host": platform.node(), "pattern": args.pattern,
            "iters": args.iters, "repeats": args.repeats,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "summary": summary, "rows": [asdict(r) for r in rows],
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
