"""Does timing a block as its two steps (token mixer, FFN) and the pyramid pooling as its
branches and fuse keep the latency table's accuracy at a fraction of the export cost?

(Measured in session 17 before the table's units became these parts, UNIT_FORMAT 2; the wholes
are now built here from the network's own classes, the parts are the table's units.)

A hybrid block is ``x + proj(op(qkv(norm1(x))))`` then ``x + ffn(norm2(x))``: the FFN does not
depend on the operator, so timed apart it is exported once per (width, ratio) instead of once
per operator. The PPM is four independent pooled branches and a fuse: timed apart, its 15
pool-size combinations per width need 6 branches and one fuse. For every block and PPM unit of
a space this exports the whole unit and its parts (same weights), times them in interleaved
rounds with the agent's session options, and reports how well the sum of the parts predicts
the whole (plain ratio, and after the per-unit overhead a linear correction removes), against
the ratio two timings of the same whole graph show (the noise floor), and what the exports
cost either way.

    python benchmarks/unit_split.py --space tiny --image-size 128 --json benchmarks/results/unit_split_tiny128.json
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from itertools import combinations
from pathlib import Path

os.environ.setdefault("AUTONAD_EXPORT_CACHE", "off")  # time real exports, not cache reads

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from autonad_agent.backends.onnxruntime import session_options
from autonad_edge.cli.common import load_space
from autonad_edge.export.onnx_export import export_module
from autonad_edge.io import atomic_write_json
from autonad_edge.latency.blocks import block_units, feature_sizes, ppm_units
from autonad_edge.models.hybrid_block import HybridBlock
from autonad_edge.models.mfam import PyramidPooling
from autonad_edge.space import BlockArch

sys.path.insert(0, str(Path(__file__).parent))
from legacy_exporter import add_unit_timing_options, quantiles  # noqa: E402


def exported(module: nn.Module, inputs: tuple[Tensor, ...]) -> tuple[bytes, float]:
    start = time.perf_counter()
    with torch.no_grad():
        data = export_module(module.eval(), inputs).SerializeToString()
    return data, time.perf_counter() - start


class Timed:
    def __init__(self, data: bytes, inputs: tuple[Tensor, ...], threads: int) -> None:
        self.session = ort.InferenceSession(data, sess_options=session_options(threads),
                                            providers=["CPUExecutionProvider"])
        self.feed = {i.name: x.numpy() for i, x in zip(self.session.get_inputs(), inputs)}
        self.medians: list[float] = []
        self.round(5)

    def round(self, runs: int) -> None:
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self.session.run(None, self.feed)
            times.append(time.perf_counter() - start)
        self.medians.append(float(np.median(times)) * 1e3)

    @property
    def ms(self) -> float:
        return min(self.medians)  # best round median: the least disturbed


def fit_report(whole: list[float], parts: list[float], extra_units: list[int]) -> dict:
    """Plain ratio sum/whole, and relative error after the fit whole ~ a * sum + b * extra units
    (what the estimator's correction can learn: a scale and a per-unit overhead)."""
    w, s, n = np.array(whole), np.array(parts), np.array(extra_units, dtype=float)
    design = np.stack([s, n], axis=1) if n.std() > 0 else s[:, None]
    coef, *_ = np.linalg.lstsq(design / w[:, None], np.ones_like(w), rcond=None)
    rel = design @ coef / w - 1
    order = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    rho = float(np.corrcoef(order(w), order(s))[0, 1])
    return {"n": len(w), "sum_over_whole_quantiles_5_25_50_75_95": quantiles(s / w),
            "fit_coef": [round(float(c), 4) for c in coef],
            "fitted_abs_rel_error_median_max": [round(float(np.median(abs(rel))), 4), round(float(abs(rel).max()), 4)],
            "spearman": round(rho, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_unit_timing_options(parser, rounds=5, runs=30)
    parser.add_argument("--json", default="benchmarks/results/unit_split.json")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in an export worker
    torch.manual_seed(0)
    space = load_space(args.space)
    sizes = feature_sizes(args.image_size)
    export_module(nn.Conv2d(4, 4, 1).eval(), (torch.randn(1, 4, 4, 4),))  # the exporter's one-off costs
    export_s = {"whole": 0.0, "parts": 0.0}
    block_rows, ppm_rows, part_cache, again = [], [], {}, []

    def timed_whole(module: nn.Module, inputs: tuple[Tensor, ...]) -> "Timed":
        data, seconds = exported(module, inputs)
        export_s["whole"] += seconds
        again.append((Timed(data, inputs, args.threads), Timed(data, inputs, args.threads)))  # the noise floor
        return again[-1][0]

    def timed_part(unit) -> "Timed":
        """A table unit, built as the table builds it (fresh weights: they do not change its
        time), exported once however many wholes share it."""
        if unit.key not in part_cache:
            data, seconds = exported(unit.build(), unit.example_inputs())
            export_s["parts"] += seconds
            part_cache[unit.key] = Timed(data, unit.example_inputs(), args.threads)
        return part_cache[unit.key]

    for i, stage in enumerate(space.stages):
        if not stage.max_depth:
            continue
        for w in stage.widths:
            for ratio in stage.ffn_ratios:
                for op, kernel in space.block_choices():
                    block = BlockArch(op, ratio, kernel)
                    whole = HybridBlock.build(w, block, space.head_dim, stage.sr_ratio).eval()
                    parts = block_units(w, block, sizes[i], space.head_dim, stage.sr_ratio, f"stage{i + 1}")
                    row = timed_whole(whole, parts[0].example_inputs())
                    block_rows.append((parts[0].describe() + f" r{ratio:g}", row, [timed_part(u) for u in parts]))
    for w in space.stages[3].widths:
        for pools in combinations(sorted(space.pool_size_choices), space.num_pool_branches):
            whole = PyramidPooling(w, space.decoder_channels, pools).eval()
            parts = ppm_units(w, space.decoder_channels, pools, sizes[3])
            row = timed_whole(whole, parts[0].example_inputs())
            parts = [timed_part(u) for u in parts]
            ppm_rows.append((f"ppm c{w} pools{list(pools)}", row, parts))
    everything = [t for _, w, ps in block_rows + ppm_rows for t in (w, *ps)] + [t for _, t in again]
    for _ in range(args.rounds):  # interleaved: every graph once a round, host drift hits all alike
        for timed in dict.fromkeys(everything):
            timed.round(args.runs)
    summary = {
        "export_s": {k: round(v, 2) for k, v in export_s.items()},
        "units_whole": len(block_rows) + len(ppm_rows), "units_parts": len(part_cache),
        "same_graph_again_quantiles_5_25_50_75_95": quantiles([b.ms / a.ms for a, b in again]),
        "blocks": fit_report([w.ms for _, w, _ in block_rows], [sum(p.ms for p in ps) for _, _, ps in block_rows],
                             [len(ps) - 1 for _, _, ps in block_rows]),
        "ppm": fit_report([w.ms for _, w, _ in ppm_rows], [sum(p.ms for p in ps) for _, _, ps in ppm_rows],
                          [len(ps) - 1 for _, _, ps in ppm_rows]),
    }
    for key, value in summary.items():
        print(f"{key}: {value}")
    atomic_write_json(args.json, {
        "command": "python " + " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "onnxruntime": ort.__version__},
        "summary": summary,
        "rows": [{"unit": name, "whole_ms": w.ms, "parts_ms": [p.ms for p in ps]}
                 for name, w, ps in block_rows + ppm_rows],
    })
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
