"""Block export cost cold and warm, in this process and in the export workers, and what a
second target costs (issue 15).

For each (space, image size): a sample of the space's units is exported
1. cold, in this process, one at a time (what block timing did before the workers), and again
   in bundles of `export_pool.BUNDLE_SIZE` (one torch.export call each);
2. cold, through `export_pool.export_units` (the worker processes, several at once);
3. warm: a new "run" (in-memory cache cleared) finds every unit in the on-disk cache.
Then the units are timed on two local agents with different fingerprints (1 and 2 ONNX
Runtime threads: two targets as the latency table sees them) and the exports each needed are
counted (the disk cache's misses).

    python benchmarks/export_cache.py --units 24 --json benchmarks/results/export_cache.json
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time

import torch

from autonad_edge.io import atomic_write_json
from autonad_edge.latency import export_pool, profiler
from autonad_edge.latency.blocks import space_units
from autonad_edge.latency.table import LatencyTable
from autonad_edge.latency.targets import open_target
from autonad_edge.search.pipeline import measurement_policy
from autonad_edge.space import SearchSpace


def per_unit(seconds: float, n: int) -> float:
    return seconds / max(n, 1)


def bench_space(name: str, size: int, n: int, seed: int, cache_root: str) -> dict:
    units = space_units(SearchSpace.resolve(name), 6, (size, size))
    sample = random.Random(seed).sample(units, min(n, len(units)))
    cache = profiler.use_export_cache(os.path.join(cache_root, f"{name}{size}-inproc"))
    profiler.EXPORT_CACHE.clear()
    t0 = time.perf_counter()
    for unit in sample:
        profiler.export_bytes(unit, "portable")
    inproc = time.perf_counter() - t0

    profiler.use_export_cache(os.path.join(cache_root, f"{name}{size}-bundled"))
    profiler.EXPORT_CACHE.clear()
    t0 = time.perf_counter()
    for start in range(0, len(sample), export_pool.BUNDLE_SIZE):
        profiler.export_bundle_bytes(sample[start : start + export_pool.BUNDLE_SIZE], "portable")
    bundled = time.perf_counter() - t0

    cache = profiler.use_export_cache(os.path.join(cache_root, f"{name}{size}-workers"))
    workers = export_pool.start("portable")
    profiler.EXPORT_CACHE.clear()
    t0 = time.perf_counter()
    export_pool.export_units(sample, "portable")
    pooled = time.perf_counter() - t0

    profiler.EXPORT_CACHE.clear()  # a new run: only the disk cache is left
    misses = cache.misses
    t0 = time.perf_counter()
    export_pool.export_units(sample, "portable")
    warm = time.perf_counter() - t0
    row = {
        "space": name, "image_size": size, "units_in_space": len(units), "units_timed": len(sample),
        "workers": workers,
        "cold_in_process_s_per_unit": per_unit(inproc, len(sample)),
        "cold_in_process_bundled_s_per_unit": per_unit(bundled, len(sample)),
        "cold_workers_s_per_unit": per_unit(pooled, len(sample)),
        "warm_disk_s_per_unit": per_unit(warm, len(sample)),
        "warm_exports": cache.misses - misses,
        "cache_bytes": cache.size_bytes(),
    }
    print(f"{name}@{size}: {len(sample)} of {len(units)} units; cold in-process "
          f"{row['cold_in_process_s_per_unit']:.2f} s/unit (bundles of {export_pool.BUNDLE_SIZE}: "
          f"{row['cold_in_process_bundled_s_per_unit']:.2f}), cold {workers} workers "
          f"{row['cold_workers_s_per_unit']:.2f} s/unit, warm {row['warm_disk_s_per_unit'] * 1000:.1f} ms/unit "
          f"({row['warm_exports']} exports)", flush=True)
    return row, sample


def second_target(sample, cache_root: str) -> dict:
    """Time `sample` on two local agents of different fingerprints; count each one's exports."""
    cache = profiler.use_export_cache(os.path.join(cache_root, "targets"))
    out = {}
    with LatencyTable(os.path.join(cache_root, "targets.sqlite")) as table:
        for threads in (1, 2):
            profiler.EXPORT_CACHE.clear()  # each target as a fresh process would see it
            misses = cache.misses
            with open_target("local", table=table, local_threads=threads) as pool:
                key = profiler.target_key(pool)
                todo = profiler.missing_units(sample, table, key)
                t0 = time.perf_counter()
                report = profiler.measure_units(pool, table, todo, key=key, policy=measurement_policy("quick"))
                out[f"local_{threads}_threads"] = {
                    "fingerprint": key.fingerprint.hash, "measured": report.measured,
                    "exports": cache.misses - misses, "wall_s": time.perf_counter() - t0,
                }
            print(f"target local ({threads} threads, fingerprint {key.fingerprint.hash}): "
                  f"{report.measured} units timed, {cache.misses - misses} exports, "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=24, help="units sampled per space")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="benchmarks/results/export_cache.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        samples = []
        for name, size in (("tiny", 128), ("default", 320)):
            row, sample = bench_space(name, size, args.units, args.seed, root)
            rows.append(row)
            samples.append(sample)
        targets = second_target(samples[0], root)
    atomic_write_json(args.json, {
        "command": "python " + " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__},
        "spaces": rows, "second_target": targets,
    })
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
