"""Does one logit offset per class help on test, or only on the val images it was chosen on?

For each finished `autonad-edge search` run: its delivered network's offsets are taken back out
of the classifier (`report.json`'s calibration), and test mIoU is scored with no offset, with the
background offset alone, with the run's per-class offsets (as delivered), and with what
`calibrate(per_class=True)` now chooses (per-class offsets only where offsets chosen on half of
val's images gain on the other half), on the run's own split and tiling.

    python benchmarks/calibration_holdout.py --runs /work/newcomer18d/runs/search /work/runs/s19/new2/runs/search \\
        --json benchmarks/results/calibration_holdout_s19.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from autonad_edge.io import atomic_write_json
from autonad_edge.search.config import PipelineConfig
from autonad_edge.training.calibration import Calibration, apply_offset, calibrate
from autonad_edge.training.checkpoint import load_model
from autonad_edge.training.evaluate import evaluate
from autonad_edge.training.rundata import load_run_data


def run_data(run: Path):
    """A finished run's config and its data, on the run's own split."""
    cfg = PipelineConfig.load(run / "config.json")
    data = load_run_data(cfg.format, cfg.data, image_size=cfg.image_size, seed=cfg.seed,
                         synthetic_count=cfg.synthetic_count, manifest=run / "splits.json",
                         keep_aspect=cfg.keep_aspect, max_side=cfg.max_side)
    return cfg, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, help="finished search run directories (<out> of each)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for run in map(Path, args.runs):
        cfg, data = run_data(run)
        report = json.loads((run / "report.json").read_text(encoding="utf-8"))
        delivered = Calibration.from_dict(report["accuracy"]["calibration"])
        model, _ = load_model(run / "retrain" / "best.pt")
        classifier = getattr(model, "module", model).classifier
        k = classifier.bias.numel()
        with torch.no_grad():
            classifier.bias -= torch.tensor(delivered.logit_offsets(k))  # back to the raw network
        raw_bias = classifier.bias.detach().clone()
        options = dict(batch_size=8, num_classes=data.num_classes, tile_size=int(cfg.image_size))

        def test_miou(shift) -> float:
            with torch.no_grad():
                classifier.bias.copy_(raw_bias + torch.tensor(shift, dtype=raw_bias.dtype))
            return 100 * evaluate(model, data.test, class_names=data.class_names, **options).miou

        with torch.no_grad():
            classifier.bias.copy_(raw_bias)
        checked = calibrate(model, data.val, per_class=True, **options)
        row = {
            "run": str(run),
            "val_images": len(data.val),
            "delivered_offsets": list(delivered.logit_offsets(k)),
            "checked": checked.summary(),
            "holdout_gain": checked.holdout_gain,
            "test_no_offset": test_miou((0.0,) * k),
            "test_background_only": test_miou((delivered.background_offset,) + (0.0,) * (k - 1)),
            "test_per_class": test_miou(delivered.logit_offsets(k)),
            "test_checked": test_miou(checked.logit_offsets(k)),
        }
        rows.append(row)
        print(f"{run}: test mIoU none {row['test_no_offset']:.2f}, background {row['test_background_only']:.2f}, "
              f"per class {row['test_per_class']:.2f}, checked {row['test_checked']:.2f} "
              f"(held-out gain {'-' if checked.holdout_gain is None else f'{100 * checked.holdout_gain:+.2f}'})",
              flush=True)
    atomic_write_json(args.json, {"command": "python " + " ".join(sys.argv),
                                  "machine": {"platform": platform.platform(), "torch": torch.__version__},
                                  "runs": rows})
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
