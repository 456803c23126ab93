"""Would timing a block as its two steps (token mixer, FFN) and the pyramid pooling as its
branches and fuse keep the latency table's accuracy at a fraction of the export cost?

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
from pathlib import Path

os.environ.setdefault("AUTONAD_EXPORT_CACHE", "off")  # time real exports, not cache reads

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from autonad_agent.backends.onnxruntime import session_options
from autonad_edge.export.onnx_export import export_module
from autonad_edge.io import atomic_write_json
from autonad_edge.models.layers import adaptive_avg_pool2d, resize  # what PyramidPooling runs

sys.path.insert(0, str(Path(__file__).parent))
from legacy_exporter import add_unit_timing_options, parse_unit_benchmark, quantiles  # noqa: E402


class Mixer(nn.Module):
    def __init__(self, block) -> None:
        super().__init__()
        self.norm1, self.qkv, self.operator, self.proj = block.norm1, block.qkv, block.operator, block.proj

    def forward(self, x: Tensor) -> Tensor:
        return x + self.proj(self.operator(*self.qkv(self.norm1(x))))


class FFN(nn.Module):
    def __init__(self, block) -> None:
        super().__init__()
        self.norm2, self.ffn = block.norm2, block.ffn

    def forward(self, x: Tensor) -> Tensor:
        return x + self.ffn(self.norm2(x))


class Branch(nn.Module):
    def __init__(self, ppm, i: int) -> None:
        super().__init__()
        self.branch, self.size = ppm.branches[i], ppm.pool_sizes[i]

    def forward(self, x: Tensor) -> Tensor:
        return resize(self.branch(adaptive_avg_pool2d(x, self.size)), x.shape[-2:])


class Fuse(nn.Module):
    def __init__(self, ppm) -> None:
        super().__init__()
        self.fuse = ppm.fuse

    def forward(self, x: Tensor, *pooled: Tensor) -> Tensor:
        return self.fuse(torch.cat([x, *pooled], dim=1))


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
    args, units = parse_unit_benchmark(parser)
    export_module(nn.Conv2d(4, 4, 1).eval(), (torch.randn(1, 4, 4, 4),))  # the exporter's one-off costs
    export_s = {"whole": 0.0, "parts": 0.0}
    block_rows, ppm_rows, part_cache, again = [], [], {}, []

    def part(key, module, inputs) -> Timed:
        if key not in part_cache:  # shared parts are exported once, as a table would keep them
            data, seconds = exported(module, inputs)
            export_s["parts"] += seconds
            part_cache[key] = Timed(data, inputs, args.threads)
        return part_cache[key]

    for unit in units:
        if unit.kind not in ("block", "ppm"):
            continue
        module, inputs = unit.build().eval(), unit.example_inputs()
        data, seconds = exported(module, inputs)
        export_s["whole"] += seconds
        whole = Timed(data, inputs, args.threads)
        again.append((whole, Timed(data, inputs, args.threads)))  # the same graph twice: the noise floor
        c, x = unit.config, inputs[0]
        if unit.kind == "block":
            hw = tuple(x.shape[2:])
            mixer_key = ("mixer", c["op"], c.get("kernel"), c["channels"], c.get("sr_ratio"), hw)
            ffn_key = ("ffn", c["channels"], c["hidden"], hw)
            parts = [part(mixer_key, Mixer(module), (x,)), part(ffn_key, FFN(module), (x,))]
            block_rows.append((unit, whole, parts))
        else:
            branch_ch = c["out_ch"] // len(c["pool_sizes"])
            pooled = tuple(torch.randn(1, branch_ch, *x.shape[2:]) for _ in c["pool_sizes"])
            parts = [part(("branch", c["in_ch"], s, tuple(x.shape[2:])), Branch(module, i), (x,))
                     for i, s in enumerate(c["pool_sizes"])]
            parts.append(part(("fuse", c["in_ch"], c["out_ch"], tuple(x.shape[2:])), Fuse(module), (x, *pooled)))
            ppm_rows.append((unit, whole, parts))
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
        "rows": [{"unit": u.describe(), "whole_ms": w.ms, "parts_ms": [p.ms for p in ps]}
                 for u, w, ps in block_rows + ppm_rows],
    })
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
