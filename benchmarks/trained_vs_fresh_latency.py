"""Does a trained network run slower than the freshly initialised one the search timed?

Runs end with the report warning that the chosen network measured faster during the search
(an export with fresh weights) than at export (the trained weights). Trained weights could
make it slower (denormal activations are slow on x86 unless flushed). This times a run's
exported model and a fresh export of the same subnet, each with and without ONNX Runtime's
``session.set_denormal_as_zero``, in interleaved rounds with the local agent's session options,
and counts denormal weights.

    python benchmarks/trained_vs_fresh_latency.py --run runs/search --json benchmarks/results/trained_vs_fresh.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from autonad_agent.backends.onnxruntime import session_options
from autonad_edge.export.onnx_export import export_arch, metadata
from autonad_edge.io import atomic_write_json
from autonad_edge.space import Arch, SearchSpace


def session(model: bytes, threads: int, denormal_as_zero: bool) -> ort.InferenceSession:
    options = session_options(threads)
    if denormal_as_zero:
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def denormal_weights(model: onnx.ModelProto) -> int:
    tiny = np.finfo(np.float32).tiny
    count = 0
    for tensor in model.graph.initializer:
        values = numpy_helper.to_array(tensor)
        if values.dtype == np.float32:
            count += int(((values != 0) & (np.abs(values) < tiny)).sum())
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a search run directory (with export/model.portable.onnx)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=100, help="timed inferences a model a round")
    parser.add_argument("--json", default="benchmarks/results/trained_vs_fresh.json")
    args = parser.parse_args()
    trained = (Path(args.run) / "export" / "model.portable.onnx").read_bytes()
    model = onnx.load_from_string(trained)
    meta = metadata(model)
    arch = Arch.from_json(meta["autonad.arch"])
    h, w = (int(v) for v in meta["autonad.image_size"].split("x"))
    space = SearchSpace.resolve(json.loads((Path(args.run) / "config.json").read_text(encoding="utf-8"))["space"])
    fresh = export_arch(arch, space, int(meta["autonad.num_classes"]), (h, w)).SerializeToString()
    image = np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)
    sessions = {f"{name}{', denormals as zero' if daz else ''}": session(data, args.threads, daz)
                for name, data in (("trained", trained), ("fresh", fresh)) for daz in (False, True)}
    for s in sessions.values():
        for _ in range(20):
            s.run(None, {"image": image})
    best_ms: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(args.rounds):
        for name, s in sessions.items():
            times = []
            for _ in range(args.runs):
                start = time.perf_counter()
                s.run(None, {"image": image})
                times.append(time.perf_counter() - start)
            best_ms[name].append(min(times) * 1e3)
    print(f"subnet {arch.hash} at {h}x{w}, {args.threads} threads; "
          f"denormal weights in the trained model: {denormal_weights(model)}")
    for name, values in best_ms.items():
        print(f"  {name:<32} min ms a round: {', '.join(f'{v:.2f}' for v in values)}")
    atomic_write_json(args.json, {"command": "python " + " ".join(sys.argv), "arch": arch.hash,
                                  "denormal_weights": denormal_weights(model), "min_ms_by_round": best_ms})
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
