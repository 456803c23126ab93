"""Does the supernet's inheritance help the delivered network? (issue 10)

Retrains a finished search run's chosen subnet (or ``--arch``) twice by the run's own retraining settings
(`PipelineConfig.retrain_config`: split, training scale, crops, loss, class weights, schedule,
EMA, learning rate), for the same ``--epochs``: once from the weights inherited from the run's
supernet (the `cpu` preset's ``retrain_init``) and once from scratch. Each keeps its best-val
weights with the decision calibrated on val (the pipeline's code), and is scored on the test
split as tiles of the network input, per class. ``--lr`` and ``--warmup-epochs`` change the
retraining's peak learning rate and warm-up (the session-12 warm-up experiment).

    python benchmarks/retrain_init.py --run /work/runs/mt60s/search --epochs 46 \\
        --json benchmarks/results/retrain_init_mt.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from autonad_edge.io import atomic_write_json
from autonad_edge.search.pipeline import PipelineConfig
from autonad_edge.space import Arch, SearchSpace
from autonad_edge.training.checkpoint import load_model
from autonad_edge.training.evaluate import evaluate
from autonad_edge.training.retrain import BEST_FILE, retrain
from autonad_edge.training.rundata import load_run_data


def retrain_and_test(config, data, space, arch, run_dir: Path, tile: int) -> dict:
    """`arch` retrained by `config` in `run_dir` (resuming what is there), its best-val weights
    (decision calibrated on val) scored on the test split as tiles of `tile` px."""
    start = time.perf_counter()
    retrain(config, data, run_dir, space=space, arch=arch, resume=(run_dir / "last.pt").exists(), quiet=True)
    wall_s = time.perf_counter() - start
    net, _ = load_model(run_dir / BEST_FILE)
    r = evaluate(net, data.test, num_classes=data.num_classes, class_names=data.class_names, tile_size=tile)
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines() if line.strip()]
    return {"wall_s": wall_s, "steps": log[-1]["step"] if log else None, "test_miou": r.miou,
            "test_miou_defects": r.defect_miou, "iou": r.to_dict()["iou"],
            "val_curve": [(e["step"], e["val_miou"]) for e in log if "val_miou" in e]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a finished `autonad-edge search` output directory")
    parser.add_argument("--epochs", type=int, default=46, help="retraining epochs of each arm")
    parser.add_argument("--inits", default="inherited,scratch")
    parser.add_argument("--arch", default=None,
                        help="another subnet of the run's space to retrain (an arch JSON, or 'largest' / "
                             "'smallest'); default: the run's chosen one")
    parser.add_argument("--lr", type=float, default=None, help="the retraining's peak learning rate (default: the run's)")
    parser.add_argument("--batch-size", type=int, default=None, help="the retraining's batch (default: the run's)")
    parser.add_argument("--warmup-epochs", type=float, default=None,
                        help="the retraining's linear warm-up, in epochs (default: the run's)")
    parser.add_argument("--out", default="runs/retrain_init")
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--json", default="benchmarks/results/retrain_init.json")
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    run, out = Path(args.run), Path(args.out)
    cfg = PipelineConfig.load(run / "config.json").resolved()
    space = SearchSpace.resolve(cfg.space)
    if args.arch in ("largest", "smallest"):
        arch = getattr(space, args.arch)()
    else:
        arch = Arch.from_json(Path(args.arch or run / "best_arch.json").read_text(encoding="utf-8"))
    data = load_run_data(cfg.format, cfg.data, cfg.image_size, cfg.seed, synthetic_count=cfg.synthetic_count,
                         manifest=run / "splits.json", keep_aspect=cfg.keep_aspect, max_side=cfg.max_side)
    tile = int(cfg.image_size)
    rows = {}
    for init in [i.strip() for i in args.inits.split(",") if i.strip()]:
        config = replace(cfg, retrain_epochs=args.epochs, retrain_init=init).retrain_config(
            run / "supernet" / "supernet.pt")
        if args.lr is not None:
            config = replace(config, lr=args.lr)
        if args.batch_size is not None:
            config = replace(config, batch_size=args.batch_size)
        if args.warmup_epochs is not None:
            config = replace(config, warmup_epochs=args.warmup_epochs)
        row = rows[init] = retrain_and_test(config, data, space, arch, out / init, tile)
        per = ", ".join(f"{k} {100 * (v or 0):.1f}" for k, v in row["iou"].items())
        print(f"{init:<9} {row['steps']} steps in {row['wall_s']:.0f} s: test mIoU {100 * row['test_miou']:.2f} % "
              f"(defects {100 * row['test_miou_defects']:.2f} %); {per}", file=sys.stderr, flush=True)
    atomic_write_json(args.json, {"command": "python " + " ".join(sys.argv), "run": str(run),
                                  "arch": arch.summary(), "space": cfg.space, "max_side": cfg.max_side,
                                  "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
                                  "warmup_epochs": args.warmup_epochs, "rows": rows})
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
