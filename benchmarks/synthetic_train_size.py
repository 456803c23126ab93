"""Does the synthetic default learn more from more generated images in the same training time?

Retrains one subnet (the one a finished run chose) on the train/val split of `--counts` synthetic
images each (the split a search run on N generated images makes: the preset's
`synthetic_count`), for the same wall time (`--seconds`, epochs from a ten-step probe, then the
trainer's time limit, as a time-budgeted run's retraining), and scores every arm on ONE common
held-out set of generated images that no arm trains or validates on (`--test-count` images from
id `--test-from`, by default the largest count), so the arms differ only by their training data
and the score's noise is that of a large test set.

    python benchmarks/synthetic_train_size.py --run /work/runs/s19/new3/runs/search --counts 240,480 \\
        --seeds 0,1 --seconds 300 --json benchmarks/results/synthetic_train_size_s20.json
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

from autonad_edge.data import load_dataset
from autonad_edge.data.synthetic import synthetic_ids
from autonad_edge.io import atomic_write_json
from autonad_edge.search.config import PipelineConfig
from autonad_edge.space import SearchSpace, load_arch

sys.path.insert(0, str(Path(__file__).parent))
from retrain_seeds import retrain_as_run  # noqa: E402


def arm_data(count: int, test_count: int, test_from: int, cfg: PipelineConfig, val_count: int | None = None):
    """Train/val as a run on `count` images splits them (val cut to its first `val_count`
    ids, the rest unused); test = the common held-out images."""
    own = load_dataset(None, fmt="synthetic", image_size=cfg.image_size, seed=cfg.seed, synthetic_count=count)
    manifest = own.manifest()
    val = own.splits["val"][:val_count] if val_count else own.splits["val"]
    total = test_from + test_count
    manifest["synthetic_count"] = total
    manifest["splits"] = {"train": own.splits["train"], "val": val,
                          "test": synthetic_ids(total)[test_from:]}
    return load_dataset(None, fmt="synthetic", image_size=cfg.image_size, seed=cfg.seed, manifest=manifest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a finished synthetic search run directory (its subnet and config)")
    parser.add_argument("--counts", default="240,480", help="synthetic image counts, comma-separated")
    parser.add_argument("--test-count", type=int, default=240, help="common held-out test images")
    parser.add_argument("--test-from", type=int, default=None,
                        help="first id of the common test images (default: the largest count)")
    parser.add_argument("--val-count", type=int, default=None, help="cap every arm's val split at this many images")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--seconds", type=float, default=300.0, help="retraining wall time per arm and seed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    cfg = PipelineConfig.load(run / "config.json")
    if cfg.format != "synthetic" or cfg.data:
        parser.error("--run must be a run on the generated synthetic data")
    space = SearchSpace.resolve(cfg.space)
    arch = load_arch(str(run / "best_arch.json"), space)
    counts = [int(c) for c in args.counts.split(",")]
    test_from = max(counts) if args.test_from is None else args.test_from
    if test_from < max(counts):
        parser.error(f"--test-from {test_from}: the test images would be among the {max(counts)} an arm trains on")
    rows = []
    for count in counts:
        data = arm_data(count, args.test_count, test_from, cfg, args.val_count)
        for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
            summary, result, wall_s = retrain_as_run(cfg, run, space, data, arch, seed, args.seconds)
            rows.append({"count": count, "train": len(data.train), "val": len(data.val), "seed": seed,
                         "seconds": round(wall_s, 1), "epochs": summary["epochs"],
                         "steps": summary["steps"], "calibration": summary.get("calibration"), "test": result})
            print(f"{count} images ({len(data.train)} train, {len(data.val)} val), seed {seed}: "
                  f"{summary['epochs']} epochs ({summary['steps']} steps), common test mIoU {100 * result['miou']:.2f} % "
                  f"(per class {[round(100 * (c['iou'] or 0), 1) for c in result['per_class'].values()]})", flush=True)
    atomic_write_json(args.json, {
        "command": "python " + " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "torch": torch.__version__},
        "run": str(run), "arch": arch.summary(), "seconds": args.seconds, "test_count": args.test_count,
        "test_from": test_from, "val_count": args.val_count,
        "rows": rows,
    })
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
