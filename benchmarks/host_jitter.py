"""How steady this host runs one model: per-run latency percentiles of an ONNX model under
ONNX Runtime with one thread, optionally pinned to one CPU (what decides the latency
protocol's statistic, RESULTS.md "Latency estimates on a noisy host").

    python benchmarks/host_jitter.py MODEL.onnx [--cpu 0] [--seconds 15]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import onnxruntime as ort


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    x = np.random.rand(*[d if isinstance(d, int) else 1 for d in spec.shape]).astype(np.float32)
    for _ in range(3):
        session.run(None, {spec.name: x})
    times = []
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        start = time.perf_counter()
        session.run(None, {spec.name: x})
        times.append(1e3 * (time.perf_counter() - start))
    p = np.percentile(times, [1, 10, 50, 90, 99])
    print(f"{len(times)} runs, ms: p1 {p[0]:.1f}, p10 {p[1]:.1f}, p50 {p[2]:.1f}, p90 {p[3]:.1f}, p99 {p[4]:.1f}")
    counts, edges = np.histogram(times, bins=12)
    for c, lo in zip(counts, edges):
        print(f"{lo:7.1f} {'#' * int(60 * c / max(counts.max(), 1))}")


if __name__ == "__main__":
    main()
