"""Decision calibration applied to the two networks of a finished `mt_budget.py` run.

Both the searched subnet (``<run>/search/retrain/best.pt``) and the U-Net (``<run>/unet/last.pt``,
its weight average) are scored on the test split as trained, then their background logit
offset is chosen on val (`autonad_edge.training.calibration`, the code path retraining now
ends with) and they are scored again. Same split (the run's ``splits.json``), same tiles.

    python benchmarks/mt_calibrate.py --data ../shared/datasets/magnetic-tile --run runs/mt_budget \\
        --json benchmarks/results/mt_calibrate.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from autonad_edge.io import atomic_write_json
from autonad_edge.models.unet import UNet
from autonad_edge.search.config import PipelineConfig
from autonad_edge.training.calibration import apply_offset, calibrate
from autonad_edge.training.checkpoint import load_checkpoint, load_model
from autonad_edge.training.evaluate import evaluate
from autonad_edge.training.rundata import load_run_data


def figures(model, data, tile: int) -> dict:
    r = evaluate(model, data.test, num_classes=data.num_classes, class_names=data.class_names, tile_size=tile)
    return {"miou": r.miou, "miou_defects": r.defect_miou, "iou_per_class": r.to_dict()["iou"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--format", default="mt")
    parser.add_argument("--run", required=True, help="an mt_budget.py --out directory")
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--json", default="benchmarks/results/mt_calibrate.json")
    args = parser.parse_args()
    run = Path(args.run)
    scale = PipelineConfig.load(run / "search" / "config.json")  # the run's training scale
    data = load_run_data(args.format, args.data, args.tile, 0, manifest=run / "search" / "splits.json",
                         keep_aspect=scale.keep_aspect, max_side=scale.max_side)
    searched, _ = load_model(run / "search" / "retrain" / "best.pt")
    state = load_checkpoint(run / "unet" / "last.pt")
    unet = UNet(data.num_classes, base_width=int(state.get("base_width", 16)))
    unet.load_state_dict(state["model"])
    unet.eval()
    rows = {}
    for name, model in (("searched", searched), ("unet", unet)):
        t0 = time.perf_counter()
        before = figures(model, data, args.tile)
        calibration = calibrate(model, data.val, num_classes=data.num_classes, tile_size=args.tile)
        apply_offset(model.classifier, calibration)
        after = figures(model, data, args.tile)
        rows[name] = {"test_before": before, "test_after": after, "calibration": calibration.to_dict(),
                      "seconds": time.perf_counter() - t0}
        print(f"{name:<9} {calibration.summary()}; test mIoU {100 * before['miou']:.2f}% -> "
              f"{100 * after['miou']:.2f}% (defects {100 * before['miou_defects']:.2f}% -> "
              f"{100 * after['miou_defects']:.2f}%)", flush=True)
    atomic_write_json(args.json, {"command": "python " + " ".join(sys.argv), "torch": torch.__version__,
                                  "classes": list(data.class_names), "rows": rows})
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
