"""How much of a run's test mIoU is its subnet and how much the luck of its retraining?

Retrains the subnet a finished `autonad-edge search` run chose, exactly as the run did (its
config, split, retraining epochs and recipe: `PipelineConfig.retrain_config`), with other
seeds for the weights' initialisation and the crops' order, and evaluates each on the run's
test split as the run's retrain stage does. The spread over seeds is the retraining's own
noise; runs whose subnets differ by more than that differ by their subnets.

    python benchmarks/retrain_seeds.py --run /work/newcomer16b/runs/search --seeds 1,2 \\
        --json benchmarks/results/retrain_seeds_16b.json

A recipe change against the run's own, seed for seed: ``--set FIELD=VALUE`` overrides a
`PipelineConfig` field (repeatable), and ``--seconds`` trains each seed for that wall time
instead of the run's epochs, as a time-budgeted run's retraining does (epochs from a probe of ten
steps, `search.budget.measure_retrain_step`, then the trainer's time limit), so that a recipe
that is faster per image gets the epochs its speed buys::

    python benchmarks/retrain_seeds.py --run /work/runs/s19/new3/runs/search --seeds 1,2 --seconds 300 \\
        --set batch_size=16 --set retrain_lr=2.8e-3 --json benchmarks/results/retrain_batch16_s19.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import fields, replace
from pathlib import Path

import torch

from autonad_edge.io import atomic_write_json
from autonad_edge.search.budget import measure_retrain_step
from autonad_edge.search.config import PipelineConfig
from autonad_edge.space import SearchSpace, load_arch
from autonad_edge.training.checkpoint import load_model
from autonad_edge.training.engine import steps_per_epoch
from autonad_edge.training.evaluate import evaluate
from autonad_edge.training.retrain import BEST_FILE, retrain
from autonad_edge.training.rundata import load_run_data


def retrain_as_run(cfg: PipelineConfig, run: Path, space: SearchSpace, data, arch, seed: int,
                   seconds: float | None) -> tuple[dict, dict, float]:
    """`arch` retrained as run `run`'s retrain stage does (its config, with `seed`), for its
    epochs or, with `seconds`, for that wall time (epochs from a ten-step probe, then the
    trainer's time limit); returns the training summary, the test evaluation (a dict) and the
    wall time."""
    config = replace(cfg.retrain_config(run / "supernet" / "supernet.pt"), seed=seed)
    if seconds:
        step_s = measure_retrain_step(config, space, data, arch, steps=10, seed=seed)
        per_epoch = step_s * steps_per_epoch(len(data.train), config.batch_size)
        config = replace(config, epochs=max(2, int(seconds // per_epoch)))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        summary = retrain(config, data, tmp, space=space, arch=arch, quiet=True, time_limit_s=seconds)
        ckpt = Path(tmp) / BEST_FILE if (Path(tmp) / BEST_FILE).exists() else Path(tmp) / "last.pt"
        model, _ = load_model(ckpt)
        result = evaluate(model, data.test, batch_size=cfg.batch_size, num_classes=data.num_classes,
                          class_names=data.class_names, tile_size=int(cfg.image_size)).to_dict()
    return summary, result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a finished search run directory (<out> of the run)")
    parser.add_argument("--seeds", default="1,2", help="retraining seeds, comma-separated (the run's own is 0)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a PipelineConfig field (a JSON value, else a string)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="train each seed for this wall time instead of the run's epochs")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    cfg = PipelineConfig.load(run / "config.json")
    names = {f.name for f in fields(PipelineConfig)}
    epochs = json.loads((run / "plan.json").read_text(encoding="utf-8"))["epochs"]
    cfg = replace(cfg, **{k: v for k, v in epochs.items() if k == "retrain_epochs"})
    overrides = {}
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in names:
            parser.error(f"--set {item}: {name!r} is not a PipelineConfig field")
        try:
            overrides[name] = json.loads(value)
        except json.JSONDecodeError:
            overrides[name] = value
    cfg = replace(cfg, **overrides)
    space = SearchSpace.resolve(cfg.space)
    arch = load_arch(str(run / "best_arch.json"), space)
    data = load_run_data(cfg.format, cfg.data, image_size=cfg.image_size, seed=cfg.seed,
                         synthetic_count=cfg.synthetic_count, manifest=run / "splits.json",
                         keep_aspect=cfg.keep_aspect, max_side=cfg.max_side)
    report = json.loads((run / "report.json").read_text(encoding="utf-8"))
    own = report["accuracy"]["test"]
    rows = []
    for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
        summary, result, wall_s = retrain_as_run(cfg, run, space, data, arch, seed, args.seconds)
        rows.append({"seed": seed, "seconds": round(wall_s, 1), "epochs": summary["epochs"],
                     "planned_epochs": summary["planned_epochs"], "steps": summary["steps"], "test": result})
        print(f"seed {seed}: {summary['epochs']} epochs ({summary['steps']} steps), test mIoU {100 * result['miou']:.2f} % "
              f"(per class {[round(100 * (c['iou'] or 0), 1) for c in result['per_class'].values()]}) in {rows[-1]['seconds']:.0f} s",
              flush=True)
    atomic_write_json(args.json, {
        "command": "python " + " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "torch": torch.__version__},
        "run": str(run), "arch": arch.summary(),
        "retrain_epochs": cfg.retrain_epochs, "overrides": overrides, "seconds": args.seconds,
        "run_test": own, "seeds": rows,
    })
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
