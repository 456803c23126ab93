"""Does exporting units ahead, at the lowest CPU priority while the supernet trains, shorten the
deferred block timing (a local agent) without slowing the epochs?

Trains a finished run's supernet (its config, split, space and planned epochs) several times,
alternating the profiler's `export_ahead` off and on, each trial from an empty export cache and
an empty latency table, as a newcomer's run starts; records each epoch's training time, the
between-epoch block timing (exports and timing) and the units exported ahead.

    python benchmarks/export_ahead.py --run /work/runs/s25/base/runs/search --trials 4 \\
        --json benchmarks/results/export_ahead_s25.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path


def children_cpu_s() -> float:
    """CPU seconds used so far by this process's descendants (export workers, the agent's worker)."""
    import os

    ticks = os.sysconf("SC_CLK_TCK")
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks)
            except (OSError, IndexError, ValueError):
                pass
    mine, total, grew = {os.getpid()}, 0.0, True
    while grew:
        grew = False
        for pid, (ppid, _) in stats.items():
            if ppid in mine and pid not in mine:
                mine.add(pid)
                grew = True
    return sum(stats[pid][1] for pid in mine if pid != os.getpid())


def one_trial(cfg, data, space, ahead: bool, scratch: Path, epochs: int) -> dict:
    from autonad_edge.latency import LatencyTable, open_target
    from autonad_edge.latency import profiler as profiler_module
    from autonad_edge.latency.background import BackgroundProfiler
    from autonad_edge.search.presets import measurement_policy
    from autonad_edge.training.supernet_trainer import train_supernet

    profiler_module.use_export_cache(scratch / "exports")  # empty, as a newcomer's
    profiler_module.EXPORT_CACHE.clear()
    from autonad_edge.latency import export_pool

    export_pool.start()  # warm workers, as the pipeline's plan leaves them
    flushes: list[float] = []
    with LatencyTable(scratch / "table.sqlite") as table, \
            open_target(cfg.target, cfg.targets_path, table=table, local_threads=cfg.local_threads) as pool:
        with BackgroundProfiler(pool, table, space, cfg.image_hw, data.num_classes,
                                policy=measurement_policy(cfg.timing), export_ahead=ahead) as bg:
            marks: list[float] = []  # descendants' CPU seconds at each flush's end

            ready_at_flush: list[int] = []  # queued units already exported when each flush began

            def timed_flush(epoch, record=None):
                with bg._cond:
                    queued = list(bg._units)
                ready_at_flush.append(sum(profiler_module.cached_export(u, "portable") is not None for u in queued))
                t0 = time.perf_counter()
                bg.flush()
                flushes.append(time.perf_counter() - t0)
                marks.append(children_cpu_s())

            start = time.perf_counter()
            train_supernet(replace(cfg, supernet_epochs=epochs).supernet_config(), data, scratch / "supernet",
                           space=space, quiet=True, step_hooks=[bg], epoch_hooks=[timed_flush])
            stage_s = time.perf_counter() - start
            stats = bg.stats
            # What other processes used while the later epochs trained (nothing is left to export).
            later_cpu_s = (marks[-1] - marks[0]) if len(marks) >= 2 else None
    log = [json.loads(line) for line in (scratch / "supernet" / "train_log.jsonl").read_text().splitlines()
           if line.strip()]
    epoch_s = [r["train_time"] for r in log if "train_time" in r]
    return {"export_ahead": ahead, "stage_s": stage_s, "epoch_train_s": epoch_s, "flush_s": flushes,
            "block_timing_s": stats.measure_s, "exports_in_flush_s": stats.export_s,
            "exported_ahead": stats.exported_ahead, "measured": stats.measured,
            "children_cpu_s_after_first_flush": later_cpu_s, "exported_before_first_flush": ready_at_flush[0],
            "share": stats.measure_s / stage_s}


def main() -> None:
    from autonad_edge.io import atomic_write_json
    from autonad_edge.search.pipeline import PipelineConfig
    from autonad_edge.space import SearchSpace
    from autonad_edge.training.rundata import load_run_data

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a finished `autonad-edge search` output directory")
    parser.add_argument("--trials", type=int, default=4, help="trials, alternating off / on")
    parser.add_argument("--epochs", type=int, default=0, help="supernet epochs (0: the run's)")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="training threads (0: torch's default; 1 on a 2-core host leaves a core idle, "
                             "as training on a GPU leaves the CPU)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    run = Path(args.run)
    cfg = PipelineConfig.load(run / "config.json").resolved()
    report = json.loads((run / "report.json").read_text())
    epochs = args.epochs or report["budgets"]["supernet_epochs"]
    space = SearchSpace.resolve(cfg.space)
    data = load_run_data(cfg.format, cfg.data, cfg.image_size, cfg.seed, synthetic_count=cfg.synthetic_count,
                         manifest=run / "splits.json", keep_aspect=cfg.keep_aspect, max_side=cfg.max_side)
    trials = []
    for i in range(args.trials):
        ahead = i % 4 in (1, 2)  # off, on, on, off, ...: neither setting always goes first
        with tempfile.TemporaryDirectory(prefix="export_ahead_") as scratch:
            row = one_trial(cfg, data, space, ahead, Path(scratch), epochs)
        trials.append(row)
        print(f"trial {i + 1}: export_ahead={'on ' if ahead else 'off'} stage {row['stage_s']:.1f} s, epochs "
              f"{', '.join(f'{s:.1f}' for s in row['epoch_train_s'])} s, block timing {row['block_timing_s']:.1f} s "
              f"(exports {row['exports_in_flush_s']:.1f} s), {row['exported_ahead']} exported ahead "
              f"({row['exported_before_first_flush']} before the flush), "
              f"share {100 * row['share']:.0f} %, other processes' CPU over later epochs "
              f"{row['children_cpu_s_after_first_flush']}", flush=True)

    def summary(ahead: bool) -> dict:
        rows = [r for r in trials if r["export_ahead"] == ahead]
        return {key: statistics.median(r[key] for r in rows) for key in
                ("stage_s", "block_timing_s", "exports_in_flush_s", "exported_ahead", "share")} | {
                "first_epoch_train_s": statistics.median(r["epoch_train_s"][0] for r in rows)} if rows else {}

    result = {"host": platform.node(), "run": str(run), "epochs": epochs, "torch_threads": args.torch_threads,
              "trials": trials,
              "median_off": summary(False), "median_on": summary(True)}
    print(json.dumps({"off": result["median_off"], "on": result["median_on"]}, indent=1))
    if args.json:
        atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
