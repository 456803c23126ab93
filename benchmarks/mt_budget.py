"""A time-budgeted search on Magnetic-tile against a textbook U-Net trained by the same recipe.

1. ``autonad-edge search --data MT --format mt --time-budget MINUTES`` (the library call,
   `run_search`): the pipeline plans its epochs from costs it measures, trains the supernet,
   searches, retrains and exports.
2. A U-Net (`autonad_edge.models.unet.UNet`, double 3x3 conv + BatchNorm + ReLU, 4 levels)
   trained by the same training engine with the searched subnet's retraining settings (same
   split, crops, loss, schedule, EMA; its own learning rate), from scratch, for the same wall
   time as the searched subnet's retrain stage (`--unet-budget wall`: epochs planned from its
   own measured step) or the same epochs x crops (`--unet-budget epochs`).
3. Both decisions calibrated on val (`training.calibration`, the same code path), then
   both evaluated on the test split (whole images, tiles of the network input) and measured
   end to end on the same local agent in interleaved rounds.

    python benchmarks/mt_budget.py --data ../shared/datasets/magnetic-tile --out runs/mt_budget \\
        --time-budget 60 --json benchmarks/results/mt_budget.json

``--unet-from DIR`` takes a U-Net this script trained before (``DIR/last.pt``, its last
evaluated weights) instead of training one; it must have the run's split, and is calibrated and
tested at its own training scale.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from autonad_edge.export.onnx_export import export_module
from autonad_edge.io import atomic_write_json
from autonad_edge.latency.profiler import target_key
from autonad_edge.latency.targets import open_target
from autonad_edge.models.unet import UNet
from autonad_edge.data.crops import CropConfig
from autonad_edge.search.budget import measure_train_step
from autonad_edge.search.pipeline import PipelineConfig, run_search
from autonad_edge.training.calibration import apply_offset, calibrate
from autonad_edge.training.checkpoint import load_checkpoint, load_model
from autonad_edge.training.config import RetrainConfig
from autonad_edge.training.engine import Trainer, steps_per_epoch
from autonad_edge.training.evaluate import evaluate
from autonad_edge.training.execution import build_adam
from autonad_edge.training.retrain import BEST_FILE
from autonad_edge.training.rundata import load_run_data

sys.path.insert(0, str(Path(__file__).parent))
from mt_search import measure_interleaved  # noqa: E402


class UNetTrainer(Trainer):
    """The retraining loop (crops, loss, schedule, EMA, checkpoints) around a U-Net."""

    kind = "baseline"
    title = "unet"

    def __init__(self, config, data, out_dir, *, base_width: int, **kwargs) -> None:
        super().__init__(config, data, out_dir, **kwargs)
        self.base_width = base_width
        self.best = {"val_miou": None, "epoch": 0, "state": None}

    def build_model(self):
        return UNet(self.data.num_classes, base_width=self.base_width)

    def build_optimizer(self, model):
        return build_adam(model.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay,
                          device=self.device)

    def train_step(self, images, masks):
        loss = self.loss(self.net(images), masks)
        self.backward(loss)
        return float(loss.detach()), []

    def evaluate_val(self):
        r = self.evaluate_split(self.data.val)
        return {"val_miou": r.miou, "val_miou_defects": r.defect_miou}

    def after_epoch(self, epoch, record):
        score = record.get("val_miou")
        if score is not None and (self.best["val_miou"] is None or score > self.best["val_miou"]):
            self.best = {"val_miou": score, "epoch": epoch,
                         "state": copy.deepcopy(self.eval_model.state_dict())}

    def checkpoint_extra(self):
        return {"model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "base_width": self.base_width}


def train_unet(args, out: Path, data, unet_cfg, unet_epochs: int, retrain_wall_s: float, resolved):
    """The U-Net trained for the retrain stage's wall time (or its epochs): the model with its
    best val weights, its config and its training seconds."""
    from autonad_edge.space import SearchSpace

    if args.unet_budget == "wall":
        step_s = measure_train_step(UNet(data.num_classes, base_width=args.unet_width), unet_cfg, data)
        crops = len(data.train_crops(unet_cfg.seed, CropConfig(unet_cfg.crop_hw, unet_cfg.defect_crop_share)))
        # 10 % of the wall time is left for its val passes (eight in all).
        unet_epochs = max(2, int(0.9 * retrain_wall_s / (step_s * steps_per_epoch(crops, unet_cfg.batch_size))))
        print(f"U-Net: {step_s:.2f} s a step, {unet_epochs} epochs in the retrain stage's {retrain_wall_s:.0f} s",
              file=sys.stderr, flush=True)
    # Its warm-up is the same share of its own epochs as the subnet's of its epochs (the
    # retraining's config has the subnet's warm-up in epochs: 53 of the U-Net's 134 until
    # session 21).
    unet_cfg = replace(unet_cfg, epochs=unet_epochs, eval_every=max(1, unet_epochs // 8),
                       warmup_epochs=resolved.retrain_warmup_share * unet_epochs)
    t0 = time.perf_counter()
    trainer = UNetTrainer(unet_cfg, data, out / "unet", base_width=args.unet_width,
                          space=SearchSpace.resolve(resolved.space), quiet=True)
    trainer.fit()
    unet_train_s = time.perf_counter() - t0
    unet = trainer.build_model()
    unet.load_state_dict(trainer.best["state"] or trainer.eval_model.state_dict())
    return unet, unet_cfg, unet_train_s


def reuse_unet(run_dir: Path, num_classes: int, manifest: Path):
    """A U-Net trained by an earlier run of this script: its last evaluated weights (the EMA
    ones), config (its training scale is ``config.max_side``) and training seconds. Refuses one
    of another split (`manifest`, the search run's splits.json)."""
    saved = load_checkpoint(run_dir / "last.pt")
    if json.loads(saved["splits"])["splits"] != json.loads(manifest.read_text())["splits"]:
        raise SystemExit(f"{run_dir}: a U-Net of another split than {manifest}")
    unet = UNet(num_classes, base_width=int(saved["base_width"]))
    unet.load_state_dict(saved["model"])
    summary = json.loads((run_dir / "summary.json").read_text())
    return unet, RetrainConfig.from_dict(saved["config"]), float(summary["time"])


def test_figures(model, data, tile: int) -> dict:
    r = evaluate(model, data.test, num_classes=data.num_classes, class_names=data.class_names, tile_size=tile)
    d = r.to_dict()
    return {"miou": r.miou, "miou_defects": r.defect_miou, "mf1": r.mf1, "iou_per_class": d["iou"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--format", default="mt")
    parser.add_argument("--out", default="runs/mt_budget")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--time-budget", type=float, default=60.0, help="minutes for the search run")
    parser.add_argument("--unet-width", type=int, default=16)
    parser.add_argument("--unet-lr", type=float, default=1e-3)
    parser.add_argument("--unet-budget", choices=["wall", "epochs"], default="wall",
                        help="the U-Net's budget: the retrain stage's wall time, or its epochs x crops")
    parser.add_argument("--unet-from", default=None,
                        help="a U-Net output directory of an earlier run of this script (same split): "
                             "evaluate it instead of training one")
    parser.add_argument("--local-threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default="benchmarks/results/mt_budget.json")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch CPU threads (1 leaves the other core of a 2-core host free)")
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    out = Path(args.out)
    started = time.perf_counter()

    cfg = PipelineConfig(out=str(out / "search"), data=args.data, format=args.format, target="local",
                         local_threads=args.local_threads, table=str(out / "latency.sqlite"), preset=args.preset,
                         time_budget=args.time_budget, quiet=True)
    report = run_search(cfg, log=lambda msg: print(msg, file=sys.stderr, flush=True)).report
    # The stages' own wall times (and the planning before them), which a resumed run keeps.
    plan = json.loads((out / "search" / "plan.json").read_text()) if (out / "search" / "plan.json").exists() else {}
    search_s = sum(s["wall_s"] for s in report["stages"]) + float(plan.get("plan_s") or 0.0)
    budgets = report["budgets"]
    # The run's own config: the training scale it chose from the masks (data.scale) included.
    resolved = replace(PipelineConfig.load(out / "search" / "config.json").resolved(),
                       supernet_epochs=budgets["supernet_epochs"], retrain_epochs=budgets["retrain_epochs"])
    data = load_run_data(args.format, args.data, resolved.image_size, resolved.seed,
                         manifest=out / "search" / "splits.json", keep_aspect=resolved.keep_aspect,
                         max_side=resolved.max_side)
    tile = int(resolved.image_size)

    # The U-Net gets the searched subnet's retraining settings, from scratch, its own lr.
    unet_cfg = replace(resolved.retrain_config(out / "search" / "supernet" / "supernet.pt"),
                       init="scratch", supernet=None, lr=args.unet_lr)
    unet_epochs = budgets["retrain_epochs"]
    retrain_wall_s = next(s["wall_s"] for s in report["stages"] if s["name"] == "retrain")

    unet_data = data
    if args.unet_from:
        unet, unet_cfg, unet_train_s = reuse_unet(Path(args.unet_from), data.num_classes,
                                                  out / "search" / "splits.json")
        if unet_cfg.max_side != resolved.max_side:
            # Each network is calibrated and tested at its own training scale, as `evaluate` does.
            unet_data = load_run_data(args.format, args.data, resolved.image_size, resolved.seed,
                                      manifest=out / "search" / "splits.json", keep_aspect=resolved.keep_aspect,
                                      max_side=unet_cfg.max_side)
    else:
        unet, unet_cfg, unet_train_s = train_unet(args, out, data, unet_cfg, unet_epochs, retrain_wall_s, resolved)
    unet.eval()
    # The same decision calibration as the searched network's retrain (RetrainTrainer.finish,
    # `Trainer.calibrate`: these arguments on a CPU host).
    unet_calibration = calibrate(unet, unet_data.val, batch_size=unet_cfg.eval_batch_size, device="cpu",
                                 num_classes=unet_data.num_classes, tile_size=tile,
                                 per_class=unet_cfg.calibrate_per_class)
    apply_offset(unet.classifier, unet_calibration)

    retrained = out / "search" / "retrain"
    searched, _ = load_model(retrained / BEST_FILE if (retrained / BEST_FILE).exists() else retrained / "last.pt")
    rows = {"searched": test_figures(searched, data, tile), "unet": test_figures(unet, unet_data, tile)}
    rows["searched"]["params"] = sum(p.numel() for p in searched.parameters())
    rows["unet"]["params"] = sum(p.numel() for p in unet.parameters())
    rows["searched"]["calibration"] = load_checkpoint(retrained / BEST_FILE).get("calibration") \
        if (retrained / BEST_FILE).exists() else None
    rows["unet"]["calibration"] = unet_calibration.to_dict()
    example = (torch.zeros(1, 3, tile, tile),)
    onnx = {name: export_module(m.eval(), example, flavor="portable").SerializeToString()
            for name, m in (("searched", searched), ("unet", unet))}
    with open_target("local", local_threads=args.local_threads) as pool:
        latency = measure_interleaved(pool, onnx, args.rounds)
        device = target_key(pool).fingerprint.summary()
    for name in rows:
        rows[name].update({f"latency_{k}": v for k, v in latency[name].items()})
    names = list(data.class_names)
    print(f"\nMagnetic-tile, preset {args.preset}, budget {args.time_budget:g} min, tiles {tile}x{tile}")
    for name, r in rows.items():
        per = ", ".join(f"{n} {100 * (r['iou_per_class'].get(n) or 0):.1f}" for n in names)
        print(f"{name:<9} test mIoU {100 * r['miou']:.2f}% (defects {100 * r['miou_defects']:.2f}%), "
              f"{r['params'] / 1e6:.3f} M params, {r['latency_median_ms']:.3f} ms/tile; {per}")
    atomic_write_json(args.json, {
        "command": "python " + " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "device": device, "torch": torch.__version__,
                    "cpu_count": os.cpu_count()},
        "dataset": {"train": len(data.train), "val": len(data.val), "test": len(data.test), "classes": names},
        "search_report": {k: report.get(k) for k in ("chosen", "accuracy", "latency", "stages", "budgets")},
        "search_wall_s": search_s, "retrain_stage_s": retrain_wall_s, "unet_budget": args.unet_budget,
        "unet_train_s": unet_train_s, "unet_config": unet_cfg.to_dict(), "unet_from": args.unet_from, "unet_max_side": unet_cfg.max_side,
        "total_wall_s": time.perf_counter() - started, "rows": rows,
    })
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
