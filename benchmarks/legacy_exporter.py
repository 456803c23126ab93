"""Would torch's TorchScript exporter (``dynamo=False``) time blocks as well as the exporter the
project uses, at a fraction of the export cost?

For every block unit of a space (those the legacy exporter can take: it has no translation for
the spatial shift), the same module (same weights) is exported both ways, outputs compared in
ONNX Runtime, and both graphs timed in interleaved rounds with the agent's session options. A
third round of the legacy graph gives the ratio two timings of one graph show, the noise floor.

    python benchmarks/legacy_exporter.py --space tiny --image-size 128 \\
        --out benchmarks/results/legacy_exporter_tiny128.json
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import time
import warnings

os.environ.setdefault("AUTONAD_EXPORT_CACHE", "off")  # time real exports, not cache reads

import numpy as np
import onnx
import onnxruntime as ort
import torch

from autonad_agent.backends.onnxruntime import session_options
from autonad_edge.cli.common import load_space
from autonad_edge.export.graph import op_counts
from autonad_edge.export.onnx_export import export_unit
from autonad_edge.io import atomic_write_json
from autonad_edge.latency.blocks import space_units


def legacy_export(module, inputs) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, inputs, buffer, dynamo=False, opset_version=18)
    return buffer.getvalue()


def session(model: bytes, threads: int) -> ort.InferenceSession:
    return ort.InferenceSession(model, sess_options=session_options(threads), providers=["CPUExecutionProvider"])


def run_times(sess: ort.InferenceSession, feed: dict, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - start)
    return times


def quantiles(values) -> list[float]:
    return [round(float(np.quantile(values, q)), 3) for q in (0.05, 0.25, 0.5, 0.75, 0.95)]


def add_unit_timing_options(parser: argparse.ArgumentParser, *, rounds: int, runs: int) -> None:
    """The options of a benchmark that times a space's units in interleaved rounds (shared with
    `unit_split.py`)."""
    parser.add_argument("--space", default="tiny")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="ORT intra-op threads (the local agent's)")
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--runs", type=int, default=runs, help="timed runs a graph a round")


def parse_unit_benchmark(parser: argparse.ArgumentParser):
    """The parsed options and the space's units, with the exporter's single torch thread (as in
    an export worker) and a fixed seed."""
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    return args, space_units(load_space(args.space), args.classes, args.image_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_unit_timing_options(parser, rounds=4, runs=25)
    parser.add_argument("--out", default="benchmarks/results/legacy_exporter.json")
    args, units = parse_unit_benchmark(parser)
    rows, skipped, legacy_s, dynamo_s = [], 0, 0.0, 0.0
    for unit in units:
        module, inputs = unit.build().eval(), unit.example_inputs()
        start = time.perf_counter()
        try:
            legacy = legacy_export(module, inputs)
        except Exception:  # noqa: BLE001 - the legacy exporter has no translation for the shift
            skipped += 1
            continue
        legacy_s += time.perf_counter() - start
        start = time.perf_counter()
        dynamo = export_unit(unit, "portable", module).SerializeToString()
        dynamo_s += time.perf_counter() - start
        arrays = [x.numpy() for x in inputs]
        sessions = [session(legacy, args.threads), session(dynamo, args.threads)]
        feeds = [{i.name: a for i, a in zip(s.get_inputs(), arrays)} for s in sessions]
        outputs = [s.run(None, f) for s, f in zip(sessions, feeds)]
        diff = max(float(np.abs(a - b).max()) for a, b in zip(*outputs))
        for s, f in zip(sessions, feeds):
            run_times(s, f, 5)
        legacy_t, dynamo_t, again_t = [], [], []
        for _ in range(args.rounds):
            legacy_t += run_times(sessions[0], feeds[0], args.runs)
            dynamo_t += run_times(sessions[1], feeds[1], args.runs)
            again_t += run_times(sessions[0], feeds[0], args.runs)
        rows.append({
            "kind": unit.kind, "max_abs_diff": diff,
            "legacy_min_ms": min(legacy_t) * 1e3, "dynamo_min_ms": min(dynamo_t) * 1e3,
            "legacy_again_min_ms": min(again_t) * 1e3,
            "legacy_nodes": sum(op_counts(onnx.load_from_string(legacy)).values()),
            "dynamo_nodes": sum(op_counts(onnx.load_from_string(dynamo)).values()),
        })
    n = len(rows)
    ratio = [r["dynamo_min_ms"] / r["legacy_min_ms"] for r in rows]
    noise = [r["legacy_again_min_ms"] / r["legacy_min_ms"] for r in rows]
    summary = {
        "units": n, "skipped_no_translation": skipped,
        "export_s_per_unit": {"legacy": legacy_s / n, "dynamo": dynamo_s / n},
        "dynamo_over_legacy_ms_quantiles_5_25_50_75_95": quantiles(ratio),
        "same_graph_again_quantiles_5_25_50_75_95": quantiles(noise),
        "max_abs_diff": max(r["max_abs_diff"] for r in rows),
        "nodes_median": {"legacy": statistics.median(r["legacy_nodes"] for r in rows),
                         "dynamo": statistics.median(r["dynamo_nodes"] for r in rows)},
    }
    print(f"{n} units of '{args.space}' at {args.image_size} px ({skipped} the legacy exporter cannot take)")
    for key, value in summary.items():
        print(f"  {key}: {value}")
    atomic_write_json(args.out, {
        "command": "python " + " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "onnxruntime": ort.__version__},
        "summary": summary, "units": rows,
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
