"""Does a block-timing flush wait for ever on exports ahead that get no CPU?

With a local agent, units are exported ahead of their flush at the lowest CPU priority
(`SCHED_IDLE`), on whatever core training leaves idle. When other work at normal priority keeps
every core busy (another run, a test suite, the line PC's own software), such a round makes no
progress, and a flush that waits for it waits as long as the load lasts. Here processes
spinning at normal priority load every core, a deferred `BackgroundProfiler` with a local agent
collects the units of a few subnets at an image size never exported before (its first round of
exports ahead starts, starved), and a flush is timed: once waiting for the round without a limit
(`AHEAD_WAIT_MIN_S` set to the cap: the code before session 27) and once as the profiler does
now (the round stopped after its wait, its units exported at normal priority).

    python benchmarks/starved_exports.py --json benchmarks/results/starved_exports_s27.json
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import platform
import random
import tempfile
import time
from pathlib import Path


def spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def main() -> None:
    from autonad_edge.io import atomic_write_json
    from autonad_edge.latency import background, export_pool
    from autonad_edge.latency.background import BackgroundProfiler
    from autonad_edge.latency.blocks import units_of
    from autonad_edge.latency.profiler import use_export_cache
    from autonad_edge.latency.table import LatencyTable
    from autonad_edge.latency.targets import open_target
    from autonad_edge.search.presets import measurement_policy
    from autonad_edge.space import SearchSpace

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load", type=int, default=os.cpu_count() or 2, help="spinning processes (default: one a CPU)")
    parser.add_argument("--archs", type=int, default=4, help="subnets whose units the profiler collects")
    parser.add_argument("--cap", type=float, default=180.0, help="seconds a flush may wait before it is abandoned")
    parser.add_argument("--only-now", action="store_true", help="skip the run that waits for the round")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")

    space = SearchSpace.tiny()
    classes = 5
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        use_export_cache(Path(tmp) / "exports")  # every unit a cache miss, the user's cache untouched
        export_pool.start()  # warm workers, as a run's supernet stage has them
        with LatencyTable(Path(tmp) / "table.sqlite") as table, open_target("local") as pool:
            modes = (("wait for the round (before)", args.cap), ("stop the round after its wait (now)", background.AHEAD_WAIT_MIN_S))
            for k, (mode, wait_s) in enumerate(modes[1:] if args.only_now else modes):
                size = 128 + 8 * (k + 1)  # never exported before
                archs = [space.sample(random.Random(100 * k + i)) for i in range(args.archs)]
                units = {u.signature for a in archs for u in units_of(a, space, classes, size)}
                spinners = [multiprocessing.get_context("spawn").Process(target=spin, args=(args.cap + 120,))
                            for _ in range(args.load)]
                for p in spinners:
                    p.start()
                saved = background.AHEAD_WAIT_MIN_S
                background.AHEAD_WAIT_MIN_S = wait_s
                try:
                    with BackgroundProfiler(pool, table, space, size, classes, mode="deferred",
                                            policy=measurement_policy("quick")) as bg:
                        for arch in archs:
                            bg.submit(arch)
                        time.sleep(3.0)  # the round of exports ahead starts, under the load
                        before = bg.stats.exported_ahead
                        t0 = time.perf_counter()
                        finished = bg.flush(timeout=args.cap)
                        flush_s = time.perf_counter() - t0
                        stats = bg.stats
                        failures = [f"{u.describe()}: {why}"[:160] for u, why in bg.failures[:3]]
                finally:
                    background.AHEAD_WAIT_MIN_S = saved
                    for p in spinners:
                        p.kill()
                        p.join()
                row = {"mode": mode, "units": len(units), "load_processes": args.load,
                       "flush_finished": finished, "flush_s": round(flush_s, 1),
                       "exported_ahead_before_flush": before, "exported_ahead": stats.exported_ahead,
                       "measured": stats.measured, "failed": stats.failed, "first_failures": failures,
                       "export_s": round(stats.export_s, 1)}
                rows.append(row)
                print(row, flush=True)
        export_pool.shutdown()
    if args.json:
        atomic_write_json(args.json, {"host": platform.node(), "cpus": os.cpu_count(), "cap_s": args.cap,
                                      "command": "python benchmarks/starved_exports.py", "rows": rows})


if __name__ == "__main__":
    main()
