"""What the val-chosen decision calibration does to a retrained network on the test split.

A retrained ``best.pt`` carries its calibration folded into the classifier's bias (and the
offsets in the checkpoint); this scores it on the run's test split (tiles of the network
input, at the run's training scale) as saved, then with the offsets taken out again (plain
argmax), per class.

    python benchmarks/calibration_effect.py RUN_DIR CHECKPOINT [CHECKPOINT ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from autonad_edge.search.pipeline import PipelineConfig
from autonad_edge.training.calibration import Calibration
from autonad_edge.training.checkpoint import load_checkpoint, load_model
from autonad_edge.training.evaluate import evaluate
from autonad_edge.training.rundata import load_run_data


def scored(net, data, tile: int) -> str:
    r = evaluate(net, data.test, num_classes=data.num_classes, class_names=data.class_names, tile_size=tile)
    per = ", ".join(f"{k} {100 * (v or 0):.1f}" for k, v in r.to_dict()["iou"].items())
    return f"test mIoU {100 * r.miou:.2f} %; {per}"


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    torch.set_num_threads(2)
    run = Path(sys.argv[1])
    cfg = PipelineConfig.load(run / "config.json").resolved()
    data = load_run_data(cfg.format, cfg.data, cfg.image_size, cfg.seed, manifest=run / "splits.json",
                         keep_aspect=cfg.keep_aspect, max_side=cfg.max_side)
    tile = int(cfg.image_size)
    for checkpoint in sys.argv[2:]:
        net, _ = load_model(checkpoint)
        offsets = Calibration.from_dict(load_checkpoint(checkpoint)["calibration"]).logit_offsets(
            net.classifier.bias.numel())
        print(f"{checkpoint}\n  calibrated (offsets {offsets}): {scored(net, data, tile)}")
        with torch.no_grad():
            net.classifier.bias -= torch.tensor(offsets, dtype=net.classifier.bias.dtype)
        print(f"  argmax: {scored(net, data, tile)}")


if __name__ == "__main__":
    main()
