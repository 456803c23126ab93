"""Time per block-unit ONNX export, with the exporter's op registry cached (the default) and
rebuilt on every call (what `torch.onnx.export` does), and check both give identical bytes.

Export dominates block profiling on a small host (hundreds of units per search space), so this
is the figure that sets how long `latency profile` and the supernet stage's background
measurement take.

    python benchmarks/export_speed.py --space tiny --image-size 128 --archs 2 \\
        --out benchmarks/results/export_speed.json
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time

import torch

import autonad_edge.export.onnx_export as onnx_export
from autonad_edge.cli.common import load_space
from autonad_edge.io import atomic_write_json
from autonad_edge.latency.blocks import dedup, units_of
from autonad_edge.latency.profiler import EXPORT_CACHE, export_bytes


def timed_exports(units, flavor: str) -> tuple[list[float], list[bytes]]:
    times, blobs = [], []
    for unit in units:
        EXPORT_CACHE.clear()
        start = time.perf_counter()
        blobs.append(export_bytes(unit, flavor))
        times.append(time.perf_counter() - start)
    return times, blobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="tiny")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--archs", type=int, default=2, help="random subnets whose units are exported")
    parser.add_argument("--flavor", default="portable")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/export_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    space = load_space(args.space)
    rng = random.Random(args.seed)
    units = dedup(u for _ in range(args.archs) for u in units_of(space.sample(rng), space, 6, args.image_size))
    export_bytes(units[0], args.flavor)  # imports and first-call setup out of the timings

    cached, cached_blobs = timed_exports(units, args.flavor)
    key = (args.flavor, onnx_export.OPSET)
    saved = onnx_export._REGISTRIES.get(key)
    onnx_export._REGISTRIES[key] = None  # None: the public torch.onnx.export, which rebuilds it
    try:
        rebuilt, rebuilt_blobs = timed_exports(units, args.flavor)
    finally:
        onnx_export._REGISTRIES[key] = saved

    identical = sum(a == b for a, b in zip(cached_blobs, rebuilt_blobs))
    rows = [("cached registry", cached), ("torch.onnx.export (rebuilt)", rebuilt)]
    print(f"{len(units)} units of {args.archs} random '{args.space}' subnets at {args.image_size} px, "
          f"flavor {args.flavor}, 1 torch thread")
    print(f"{'path':<30}{'median s':>10}{'mean s':>10}{'total s':>10}")
    for name, t in rows:
        print(f"{name:<30}{statistics.median(t):>10.3f}{statistics.mean(t):>10.3f}{sum(t):>10.1f}")
    print(f"identical ONNX bytes: {identical}/{len(units)}")
    atomic_write_json(args.out, {
        "command": "python " + " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "torch": torch.__version__},
        "units": len(units),
        "cached_registry_s": {"median": statistics.median(cached), "mean": statistics.mean(cached)},
        "rebuilt_registry_s": {"median": statistics.median(rebuilt), "mean": statistics.mean(rebuilt)},
        "identical_bytes": identical,
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
