"""Do exports at the lowest CPU priority take time from training? A training step is timed
alone and with unit exports running in the export workers at ``SCHED_IDLE``
(`export_pool.export_ahead`, what the deferred block timing does while the supernet trains),
and, to show the measurement can see interference, with the same exports at normal priority.
Modes alternate round by round (the host's own drift hits them alike); every exporting round
exports units not exported before (a fresh image size), and counts how many it finished while
the steps ran.

    python benchmarks/idle_exports.py --run /work/runs/s25/base/runs/search --rounds 6 \\
        --json benchmarks/results/idle_exports_s25.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import threading
from pathlib import Path

MODES = ("alone", "idle exports", "normal exports")


def main() -> None:
    from autonad_edge.io import atomic_write_json
    from autonad_edge.latency import export_pool
    from autonad_edge.latency.blocks import space_units
    from autonad_edge.latency.export_pool import export_units
    from autonad_edge.latency.profiler import cached_export
    from autonad_edge.search.budget import measure_retrain_step
    from autonad_edge.search.pipeline import PipelineConfig
    from autonad_edge.space import SearchSpace, load_arch
    from autonad_edge.training.rundata import load_run_data

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a finished `autonad-edge search` output directory")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=20, help="training steps timed per measurement")
    parser.add_argument("--units", type=int, default=48, help="units an exporting measurement hands the workers")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    run = Path(args.run)
    cfg = PipelineConfig.load(run / "config.json").resolved()
    space = SearchSpace.resolve(cfg.space)
    data = load_run_data(cfg.format, cfg.data, cfg.image_size, cfg.seed, synthetic_count=cfg.synthetic_count,
                         manifest=run / "splits.json", keep_aspect=cfg.keep_aspect, max_side=cfg.max_side)
    arch = load_arch(str(run / "best_arch.json"), space)
    export_pool.start()
    height, width = cfg.image_hw
    fresh = iter(range(1, 10_000))
    rows = []
    for r in range(args.rounds):
        order = MODES if r % 2 == 0 else MODES[::-1]
        for mode in order:
            units = []
            if mode != "alone":
                k = next(fresh)  # a size never exported before: every unit is a cache miss
                units = space_units(space, data.num_classes, (height + 8 * k, width + 8 * k))[: args.units]
                work = ((lambda u=units: export_pool.export_ahead(u, "portable")) if mode == "idle exports"
                        else (lambda u=units: export_units(u, "portable")))
                exporter = threading.Thread(target=work)
                exporter.start()
            step_s = measure_retrain_step(cfg.retrain_config("probe"), space, data, arch, steps=args.steps,
                                          seed=cfg.seed)
            done = sum(cached_export(u, "portable") is not None for u in units)
            if units:
                exporter.join()
            rows.append({"round": r, "mode": mode, "step_s": step_s, "exported_meanwhile": done,
                         "handed": len(units)})
            print(f"round {r + 1} {mode:14s} step {1000 * step_s:.1f} ms, exports finished meanwhile "
                  f"{done}/{len(units)}", flush=True)
    medians = {m: statistics.median(x["step_s"] for x in rows if x["mode"] == m) for m in MODES}
    print({m: f"{1000 * s:.1f} ms ({100 * (s / medians['alone'] - 1):+.1f} %)" for m, s in medians.items()})
    if args.json:
        atomic_write_json(args.json, {"host": platform.node(), "run": str(run), "steps": args.steps,
                                      "rows": rows, "median_step_s": medians})


if __name__ == "__main__":
    main()
