"""Does what else runs on this host move a network's measured latency, and which way?

Times one subnet (a finished run's choice, freshly exported) on the local agent in interleaved
rounds (`latency.protocol.measure_in_rounds`, the floor of each round), first on a quiet host,
then with each kind of co-runner started one second before its rounds: a busy loop (one
process, one core), a torch matrix loop on 2 threads, a loop that is busy 1 ms and sleeps 1 ms,
and the quiet host again.

    python benchmarks/corunner_latency.py --run /work/newcomer17b/runs/search \\
        --json benchmarks/results/corunner_latency.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from autonad_edge.io import atomic_write_json
from autonad_edge.latency import open_target
from autonad_edge.latency.export_pool import export_networks
from autonad_edge.latency.pool import MeasureJob
from autonad_edge.latency.protocol import RoundsPolicy, measure_in_rounds
from autonad_edge.space import SearchSpace, load_arch

CORUNNERS = {
    "quiet": None,
    "busy loop (1 process)": "while True: pass",
    "torch matmul (2 threads)": "import torch\ntorch.set_num_threads(2)\nx = torch.randn(256, 256)\nwhile True: x @ x",
    "busy 1 ms / sleep 1 ms": "import time\nwhile True:\n    t = time.perf_counter()\n"
                              "    while time.perf_counter() - t < 0.001: pass\n    time.sleep(0.001)",
    "quiet again": None,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a finished search run directory (its best_arch.json)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    run = Path(args.run)
    cfg = json.loads((run / "config.json").read_text(encoding="utf-8"))
    space = SearchSpace.resolve(cfg["space"])
    arch = load_arch(str(run / "best_arch.json"), space)
    classes = json.loads((run / "report.json").read_text(encoding="utf-8"))["dataset"]["num_classes"]
    rows = {}
    with open_target(cfg["target"]) as pool:
        (model,) = export_networks([arch], space, classes, cfg["image_size"], "portable")
        job = MeasureJob(model)
        for name, code in CORUNNERS.items():
            corunner = subprocess.Popen([sys.executable, "-c", code]) if code else None
            try:
                time.sleep(1.0)
                result = measure_in_rounds(pool, {"net": job}, job, RoundsPolicy(rounds=args.rounds, max_extra_rounds=0))
            finally:
                if corunner is not None:
                    corunner.kill()
                    corunner.wait()
            rows[name] = [round(v, 3) for v in result.latencies["net"].raw_ms]
            print(f"{name:28s} round floors (ms): {rows[name]}", flush=True)
    atomic_write_json(args.json, {
        "command": "python " + " ".join(sys.argv),
        "machine": {"platform": platform.platform()}, "arch": arch.summary(), "round_floors_ms": rows,
    })
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
