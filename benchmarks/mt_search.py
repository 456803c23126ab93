"""The search on Magnetic-tile against hand-designed baselines, all measured on the same agent.

1. Runs the whole pipeline (`run_search`: supernet, latency table, evolutionary search,
   retraining, export) on MT at ``--image-size`` with ``--target local`` and the ``cpu`` preset
   (epochs overridable for the time at hand). Resumable: rerun the same command.
2. Retrains hand-designed networks of the same search space with exactly the retraining
   settings the searched subnet got (`PipelineConfig.retrain_config`: epochs, optimiser, loss,
   init from the same supernet), so only the architecture differs:
   - ``conv``: a plain CNN (every block a 3x3 convolution block, widest, deepest; MFAM edges
     3x3 convolutions; PSPNet's pool sizes 1, 2, 3, 6);
   - ``transformer``: SegFormer-like (every block attention + Mix-FFN; MFAM edges 1x1, like
     SegFormer's all-MLP decoder; pools 1, 2, 3, 6);
   - ``mlp``: S2-MLPv2-like (every block spatial-shift MLP; edges 1x1; pools 1, 2, 3, 6).
3. Evaluates every model on the test split and measures every exported (portable) model end
   to end on one agent, ``--rounds`` interleaved rounds with the agent's full trtexec-like
   policy (so slow drift of a shared host hits all models alike); reports the median of the
   rounds' medians and the spread.

    python benchmarks/mt_search.py --data ../shared/datasets/magnetic-tile --out runs/mt_search \\
        --image-size 320 --supernet-epochs 12 --retrain-epochs 15 --local-threads 1 \\
        --json benchmarks/results/mt_search.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from autonad_agent.measure import MeasurementPolicy

from autonad_edge.io import atomic_write_json
from autonad_edge.export.onnx_export import export_arch
from autonad_edge.latency.profiler import target_key
from autonad_edge.latency.targets import open_target
from autonad_edge.models.complexity import count_flops, count_params
from autonad_edge.search.pipeline import PipelineConfig, run_search
from autonad_edge.space import EDGE_NAMES, Arch, BlockArch, SearchSpace, StageArch
from autonad_edge.training.checkpoint import load_model
from autonad_edge.training.evaluate import evaluate
from autonad_edge.training.retrain import BEST_FILE, retrain
from autonad_edge.training.rundata import load_run_data

BASELINES = ("conv", "transformer", "mlp")
PSP_POOLS = (1, 2, 3, 6)


def baseline_arch(name: str, space: SearchSpace) -> Arch:
    """A hand-designed network of `space`: one operator everywhere at the widest, deepest and
    largest-ratio setting, with the decoder its family usually has."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    kernel = None
    if name == "conv":  # 3x3, the usual hand-designed choice, where the space offers it
        kernel = 3 if 3 in space.kernels else min(space.kernels)
    stages = tuple(
        StageArch(max(st.widths), tuple(BlockArch(name, max(st.ffn_ratios), kernel) for _ in range(max(st.depths))))
        for st in space.stages
    )
    edge = "conv3x3" if name == "conv" else "conv1x1"
    pools = tuple(p for p in PSP_POOLS if p in space.pool_size_choices)
    if len(pools) != space.num_pool_branches:
        pools = tuple(sorted(space.pool_size_choices)[: space.num_pool_branches])
    return space.validate(Arch(stages, (edge,) * len(EDGE_NAMES), pools))


def _test_metrics(checkpoint: Path, data, batch_size: int) -> dict:
    model, _ = load_model(checkpoint)
    result = evaluate(model, data.test, batch_size=batch_size, num_classes=data.num_classes,
                      class_names=data.class_names)
    return {"miou": result.miou, "mf1": result.mf1,
            "iou_per_class": dict(zip(data.class_names, (float(v) for v in result.metrics.iou)))}


def measure_interleaved(pool, models: dict[str, bytes], rounds: int) -> dict[str, dict]:
    """`rounds` rounds over all models (order rotated each round); per model the median of the
    round medians, their min/max, p90 of the last round and the runs."""
    names = list(models)
    medians: dict[str, list[float]] = {n: [] for n in names}
    last: dict[str, object] = {}
    for r in range(rounds):
        # The agent serves identical requests from its cache: a distinct min_runs per round
        # makes every round a fresh measurement.
        policy = MeasurementPolicy(min_runs=50 + r)
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            m = pool.measure(models[name], policy=policy)
            medians[name].append(m.median_ms)
            last[name] = m
    return {
        n: {"median_ms": statistics.median(medians[n]), "round_medians_ms": medians[n],
            "p90_ms": last[n].p90_ms, "runs": last[n].runs, "cv": last[n].cv}
        for n in names
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="Magnetic-tile root (MT_<Class>/Imgs/...)")
    parser.add_argument("--format", default="mt")
    parser.add_argument("--out", default="runs/mt_search")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--supernet-epochs", type=int, default=None)
    parser.add_argument("--retrain-epochs", type=int, default=None)
    parser.add_argument("--population", type=int, default=None)
    parser.add_argument("--generations", type=int, default=None)
    parser.add_argument("--local-threads", type=int, default=1,
                        help="ONNX Runtime threads of the local agent (1: steadiest on a shared host)")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch CPU threads for training")
    parser.add_argument("--baselines", default=",".join(BASELINES))
    parser.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds")
    parser.add_argument("--json", default="benchmarks/results/mt_search.json")
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    out = Path(args.out)
    started = time.perf_counter()

    # 1. the search pipeline
    cfg = PipelineConfig(
        out=str(out / "search"), data=args.data, format=args.format, target="local",
        local_threads=args.local_threads, table=str(out / "latency.sqlite"), preset=args.preset,
        image_size=args.image_size, supernet_epochs=args.supernet_epochs, retrain_epochs=args.retrain_epochs,
        population=args.population, generations=args.generations, quiet=True,
    )
    report = run_search(cfg, log=lambda msg: print(msg, file=sys.stderr, flush=True)).report
    search_s = time.perf_counter() - started
    # The run's own config: the training scale it chose from the masks (data.scale) included.
    resolved = PipelineConfig.load(out / "search" / "config.json").resolved()
    space = SearchSpace.resolve(resolved.space)
    data = load_run_data(args.format, args.data, resolved.image_size, resolved.seed,
                         manifest=out / "search" / "splits.json", keep_aspect=resolved.keep_aspect,
                         max_side=resolved.max_side)
    searched = Arch.from_dict(report["chosen"]["arch"])

    # 2. baselines, retrained exactly like the searched subnet
    retrain_cfg = resolved.retrain_config(out / "search" / "supernet" / "supernet.pt")
    retrained = out / "search" / "retrain"
    models: dict[str, dict] = {
        "searched": {"arch": searched, "checkpoint": retrained / BEST_FILE if (retrained / BEST_FILE).exists()
                     else retrained / "last.pt"},
    }
    for name in [b for b in args.baselines.split(",") if b]:
        arch = baseline_arch(name, space)
        run_dir = out / f"baseline_{name}"
        t0 = time.perf_counter()
        if not (run_dir / "summary.json").exists():
            retrain(retrain_cfg, data, run_dir, space=space, arch=arch, resume=(run_dir / "last.pt").exists(),
                    quiet=True)
        best = run_dir / BEST_FILE if (run_dir / BEST_FILE).exists() else run_dir / "last.pt"
        models[name] = {"arch": arch, "checkpoint": best, "retrain_s": time.perf_counter() - t0}
        print(f"baseline {name} retrained ({arch.summary()})", file=sys.stderr, flush=True)

    # 3. accuracy on test, latency end to end on one agent, interleaved
    h = w = resolved.image_size
    for name, m in models.items():
        m.update(_test_metrics(m["checkpoint"], data, resolved.batch_size))
        m["params"] = count_params(m["arch"], space, data.num_classes)
        m["gflops"] = count_flops(m["arch"], space, data.num_classes, (h, w)) / 1e9
    onnx = {name: export_arch(m["arch"], space, data.num_classes, (h, w)).SerializeToString()
            for name, m in models.items()}
    with open_target("local", local_threads=args.local_threads) as pool:
        latency = measure_interleaved(pool, onnx, args.rounds)
        device = target_key(pool).fingerprint.summary()

    rows = []
    for name, m in models.items():
        rows.append({
            "model": name, "arch": m["arch"].summary(), "arch_hash": m["arch"].hash,
            "test_miou": m["miou"], "test_mf1": m["mf1"], "test_iou_per_class": m["iou_per_class"],
            "params": m["params"], "gflops": m["gflops"], **{f"latency_{k}": v for k, v in latency[name].items()},
        })
    print(f"\nMagnetic-tile {h}x{w}, target local ({args.local_threads} ORT thread(s)), preset {args.preset}: "
          f"supernet {resolved.supernet_epochs} / retrain {resolved.retrain_epochs} epochs")
    print(f"{'model':<12}{'test mIoU':>10}{'test mF1':>10}{'params':>10}{'GFLOPs':>8}{'latency ms':>12}"
          f"{'(min..max)':>18}  arch")
    for r in rows:
        meds = r["latency_round_medians_ms"]
        print(f"{r['model']:<12}{100 * r['test_miou']:>9.2f}%{100 * r['test_mf1']:>9.2f}%{r['params'] / 1e6:>9.3f}M"
              f"{r['gflops']:>8.2f}{r['latency_median_ms']:>12.3f}{f'({min(meds):.2f}..{max(meds):.2f})':>18}  {r['arch']}")
    atomic_write_json(args.json, {
        "command": "python " + " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "device": device,
                    "torch": torch.__version__, "cpu_count": os.cpu_count()},
        "dataset": {"format": args.format, "image_size": [h, w], "train": len(data.train), "val": len(data.val),
                    "test": len(data.test), "classes": list(data.class_names)},
        "preset": args.preset, "supernet_epochs": resolved.supernet_epochs,
        "retrain_epochs": resolved.retrain_epochs, "retrain_config": retrain_cfg.to_dict(),
        "search_report": {k: report.get(k) for k in ("chosen", "accuracy", "latency", "stages")},
        "search_wall_s": search_s, "total_wall_s": time.perf_counter() - started,
        "rows": rows,
    })
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
