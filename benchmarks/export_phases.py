"""Where a block export's time goes: every unit of a space exported in bundles, as block timing
exports them, with the exporter's phases timed (torch.export's capture, the decomposition
re-trace, type promotion, the translation to ONNX, the project's graph clean-up, the cut into
one model per unit).

The phases are timed by wrapping the exporter's internal entry points (torch 2.13), so the
script names what is spent where; it does not change what is exported.

    python benchmarks/export_phases.py --space tiny --image-size 128 \\
        --json benchmarks/results/export_phases_tiny128.json
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import os
import platform
import sys
import time

os.environ.setdefault("AUTONAD_EXPORT_CACHE", "off")  # time real exports, not cache reads

import torch

import autonad_edge.export.graph as graph
import autonad_edge.export.onnx_export as onnx_export
from autonad_edge.cli.common import load_space
from autonad_edge.io import atomic_write_json
from autonad_edge.latency.blocks import space_units
from autonad_edge.latency.export_pool import BUNDLE_SIZE


@contextlib.contextmanager
def timed(spent: collections.Counter, phases: dict[str, tuple[object, str]]):
    """Wrap `owner.name` for every phase so each call adds its seconds to `spent[phase]`."""
    originals = []
    for phase, (owner, name) in phases.items():
        original = getattr(owner, name)

        def wrapper(*args, _original=original, _phase=phase, **kwargs):
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                spent[_phase] += time.perf_counter() - start

        setattr(owner, name, functools.wraps(original)(wrapper))
        originals.append((owner, name, original))
    try:
        yield spent
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="tiny")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--bundle", type=int, default=BUNDLE_SIZE)
    parser.add_argument("--flavor", default="portable")
    parser.add_argument("--json", default="benchmarks/results/export_phases.json")
    args = parser.parse_args()
    from torch.onnx._internal.exporter import _core, _fx_passes
    from torch.export import exported_program

    torch.set_num_threads(1)  # as in an export worker
    units = space_units(load_space(args.space), args.classes, args.image_size)
    onnx_export.export_units_together(units[:2], args.flavor)  # imports and registry out of the timings
    phases = {
        "torch.export capture": (torch.export, "export"),
        "decomposition re-trace": (exported_program, "_decompose_and_get_gm_with_new_signature_constants"),
        "type promotion": (_fx_passes, "insert_type_promotion_nodes"),
        "translation to ONNX": (_core, "_exported_program_to_onnx_program"),
        "graph clean-up (simplify)": (graph, "simplify"),
        "cut and canonical names": (onnx_export, "_canonical"),
    }
    spent: collections.Counter = collections.Counter()
    with timed(spent, phases):
        start = time.perf_counter()
        for i in range(0, len(units), args.bundle):
            onnx_export.export_units_together(units[i : i + args.bundle], args.flavor)
        total = time.perf_counter() - start
    spent["other"] = total - sum(spent.values())
    print(f"{len(units)} units of '{args.space}' at {args.image_size} px in bundles of {args.bundle}, "
          f"1 torch thread: {total:.1f} s, {1e3 * total / len(units):.0f} ms a unit")
    for phase, seconds in spent.most_common():
        print(f"  {phase:<28}{seconds:7.1f} s {100 * seconds / total:5.1f} %")
    atomic_write_json(args.json, {
        "command": "python " + " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "torch": torch.__version__},
        "units": len(units), "bundle": args.bundle, "total_s": total,
        "phases_s": dict(spent.most_common()),
    })
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
