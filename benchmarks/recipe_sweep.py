"""What buys accuracy in a CPU budget, on the synthetic set at 128 px (the default run's data).

Five experiments, each by the library's own trainers (`RetrainTrainer`, `SupernetTrainer`) with
the cpu preset's recipe (CE + Dice, 1/sqrt class weights, 70 % defect crops, Adam 2e-3 with
warm-up + cosine, EMA 0.998), one fixed subnet of the tiny space, test mIoU after the
val-chosen calibration:

* ``steps``: retraining from scratch for each of ``--epochs`` (optimiser steps decide);
* ``detail``: the same subnet with and without the head's stride-2 detail path
  (`SearchSpace.detail_channels` 16 vs 0) for ``--epochs[0]``;
* ``supernet``: in the same compute, a sandwich supernet (``--sandwich-epochs``, 3 subnets a
  step) against one subnet a step (3x the epochs), then each subnet's inherited val mIoU and an
  inherited retrain of ``--epochs[0]``;
* ``oracle``: the best IoU a head can reach that decides at stride 1/2/4/8 and upsamples
  (per-cell class shares, bilinear, argmax) -- what the decoder's resolution allows; on
  ``--data``/``--format`` when given (e.g. Magnetic-tile), else the synthetic set;
* ``loss``: the losses of ``--losses`` (``RunConfig.loss``) and learning rates of ``--lrs`` (every
  pair) at the training scale ``--max-sides[0]``, retrained from scratch for ``--epochs[0]``; each
  network scored on test without calibration, with the val-chosen background offset, and with
  per-class offsets
  (`calibrate(per_class=True)`), plus its train-split IoU (does it fit the large classes at
  all?) and, per class, where its test pixels go; on ``--data`` when given;
* ``scale``: the training scale (``--max-sides``: the long side scaled down to each, 128 px crops
  either way, so every row trains on the same epochs x pixels), retrained from scratch for
  ``--epochs[0]``, then scored on the test images at their native size (tiled at the training
  scale, logits resized back), so the rows compare on the same pixels; on ``--data`` when given.

    python benchmarks/recipe_sweep.py steps --epochs 15 30 60 --json benchmarks/results/recipe_steps.json
    python benchmarks/recipe_sweep.py detail --epochs 30 --json benchmarks/results/recipe_detail.json
    python benchmarks/recipe_sweep.py supernet --sandwich-epochs 5 --epochs 15 --json benchmarks/results/recipe_supernet.json
    python benchmarks/recipe_sweep.py oracle --json benchmarks/results/recipe_oracle.json
    python benchmarks/recipe_sweep.py oracle --data ../shared/datasets/magnetic-tile --format mt \\
        --json benchmarks/results/recipe_oracle_mt.json
    python benchmarks/recipe_sweep.py loss --data ../shared/datasets/magnetic-tile --format mt \\
        --epochs 40 --max-sides 224 --losses ce+dice ce+lovasz --json benchmarks/results/recipe_loss_mt.json
    python benchmarks/recipe_sweep.py loss --data ../shared/datasets/magnetic-tile --format mt \\
        --epochs 20 --max-sides 224 --losses ce+dice --lrs 1e-3 2e-3 5e-3 --json benchmarks/results/recipe_lr_mt.json
    python benchmarks/recipe_sweep.py scale --data ../shared/datasets/magnetic-tile --format mt \\
        --epochs 40 --max-sides 1024 320 224 --json benchmarks/results/recipe_scale_mt.json
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from autonad_edge.data import load_dataset
from autonad_edge.inference import predict_logits
from autonad_edge.io import atomic_write_json
from autonad_edge.metrics import ConfusionMatrix
from autonad_edge.space import SearchSpace
from autonad_edge.training.calibration import calibrate
from autonad_edge.training.checkpoint import load_model, load_supernet
from autonad_edge.training.config import RetrainConfig, SupernetConfig
from autonad_edge.training.evaluate import evaluate
from autonad_edge.training.retrain import BEST_FILE, RetrainTrainer
from autonad_edge.training.supernet_trainer import SupernetTrainer

RECIPE = dict(image_size=128, batch_size=8, device="cpu", loss="ce+dice", class_weighting="inverse_sqrt",
              defect_crop_share=0.7)
RETRAIN = dict(schedule="cosine", warmup_epochs=0.5, ema_decay=0.998, lr=2e-3)


def fixed_arch(space: SearchSpace):
    rng = random.Random(0)
    space.sample(rng)
    return space.sample(rng)


def test_row(net, data, **extra) -> dict:
    r = evaluate(net, data.test, num_classes=data.num_classes, class_names=data.class_names, tile_size=128)
    return {**extra, "test_miou": r.miou, "test_miou_defects": r.defect_miou,
            "iou": {k: round(v, 4) for k, v in r.to_dict()["iou"].items()}}


def retrain_row(data, space, arch, out: Path, epochs: int, **config) -> dict:
    cfg = RetrainConfig(epochs=epochs, eval_every=max(1, epochs // 3), **RECIPE, **RETRAIN, **config)
    start = time.perf_counter()
    RetrainTrainer(cfg, data, out, space=space, arch=arch, quiet=True).fit()
    wall = time.perf_counter() - start
    net, _ = load_model(out / BEST_FILE)
    return test_row(net, data, epochs=epochs, wall_s=wall, params=sum(p.numel() for p in net.parameters()))


def native_test_row(net, native, max_side: int | None) -> dict:
    """Test metrics at the images' native size for a network trained at `max_side`."""
    confusion = ConfusionMatrix(native.num_classes, native.ignore_index)
    net.eval()
    for i in range(len(native.test)):
        image, mask = native.test[i]
        logits = predict_logits(net, image, tile=128, max_side=max_side)
        confusion.update(logits.argmax(0), torch.as_tensor(np.asarray(mask)))
    metrics = confusion.compute()
    iou = metrics.iou
    return {"test_miou": metrics.miou, "test_miou_defects": float(np.nanmean(iou[1:])),
            "iou": dict(zip(native.class_names, np.round(iou, 4).tolist()))}


def scale_rows(args, space, arch, out: Path) -> list[dict]:
    """One fixed subnet retrained at each training scale, scored at native size."""
    native = load_dataset(args.data, args.format, image_size=128, seed=0, keep_aspect=True, max_side=None)
    rows = []
    for max_side in args.max_sides:
        data = load_dataset(args.data, args.format, image_size=128, seed=0, keep_aspect=True, max_side=max_side)
        cfg = RetrainConfig(epochs=args.epochs[0], eval_every=max(1, args.epochs[0] // 4), init="scratch",
                            max_side=max_side, **RECIPE, **RETRAIN)
        start = time.perf_counter()
        RetrainTrainer(cfg, data, out / f"side{max_side}", space=space, arch=arch, quiet=True).fit()
        wall = time.perf_counter() - start
        net, _ = load_model(out / f"side{max_side}" / BEST_FILE)
        row = {"max_side": max_side, "epochs": args.epochs[0], "wall_s": round(wall, 1),
               **native_test_row(net, native, max_side)}
        print(row, flush=True)
        rows.append(row)
    return rows


def _scored(net, data, split, calibration=None) -> dict:
    """IoU per class and mIoU (with and without background) of `net` on `split`, deciding with
    `calibration`'s offsets folded into a copy; the confusion rows as shares (test only)."""
    import copy

    from autonad_edge.training.calibration import apply_offset

    if calibration is not None:
        net = copy.deepcopy(net)
        apply_offset(net.classifier, calibration)
    r = evaluate(net, getattr(data, split), num_classes=data.num_classes, class_names=data.class_names,
                 tile_size=128)
    iou = {k: None if v is None else round(v, 4) for k, v in r.to_dict()["iou"].items()}
    row = {"miou": r.miou, "miou_defects": r.defect_miou, "iou": iou}
    if split == "test":
        matrix = np.asarray(r.metrics.matrix, dtype=np.float64)
        shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        row["goes_to"] = {name: dict(zip(data.class_names, np.round(shares[i], 3).tolist()))
                          for i, name in enumerate(data.class_names)}
    return row


def loss_rows(args, space, arch, out: Path) -> list[dict]:
    data = load_dataset(args.data, args.format, image_size=128, seed=0, synthetic_count=240, keep_aspect=True,
                        max_side=args.max_sides[0])
    rows = []
    for loss, lr in [(loss, lr) for loss in args.losses for lr in args.lrs]:
        run = out / (loss.replace("+", "_") + ("" if lr == RETRAIN["lr"] else f"_lr{lr:g}"))
        cfg = RetrainConfig(epochs=args.epochs[0], eval_every=max(1, args.epochs[0] // 4), init="scratch",
                            max_side=args.max_sides[0], calibrate=False, **{**RECIPE, "loss": loss},
                            **{**RETRAIN, "lr": lr})
        start = time.perf_counter()
        RetrainTrainer(cfg, data, run, space=space, arch=arch, quiet=True).fit()
        wall = time.perf_counter() - start
        net, _ = load_model(run / BEST_FILE)
        per_class = calibrate(net, data.val, num_classes=data.num_classes, tile_size=128, per_class=True)
        background = replace(per_class, class_offsets=())  # the same pass's background offset alone
        row = {"loss": loss, "lr": lr, "max_side": args.max_sides[0], "epochs": args.epochs[0], "wall_s": round(wall, 1),
               "background_offset": background.background_offset, "class_offsets": per_class.class_offsets,
               "test_raw": _scored(net, data, "test"), "test_background": _scored(net, data, "test", background),
               "test_per_class": _scored(net, data, "test", per_class),
               "train_per_class": _scored(net, data, "train", per_class)}
        print({k: (v["miou"] if isinstance(v, dict) else v) for k, v in row.items()}, flush=True)
        rows.append(row)
    return rows


def oracle(data) -> dict:
    rows = {}
    for stride in (1, 2, 4, 8):
        inter = np.zeros(data.num_classes)
        union = np.zeros(data.num_classes)
        for i in range(len(data.test)):
            mask = torch.as_tensor(np.asarray(data.test[i][1])).long()
            valid = mask != data.ignore_index
            onehot = F.one_hot(mask.clamp(max=data.num_classes - 1), data.num_classes).permute(2, 0, 1).float()[None]
            if stride > 1:
                coarse = F.avg_pool2d(onehot, stride, stride, ceil_mode=True)
                onehot = F.interpolate(coarse, size=mask.shape, mode="bilinear", align_corners=False)
            pred = onehot.argmax(1)[0]
            for c in range(data.num_classes):
                p, g = (pred == c) & valid, (mask == c) & valid
                inter[c] += float((p & g).sum())
                union[c] += float((p | g).sum())
        iou = inter / np.maximum(union, 1)
        rows[str(stride)] = {"miou": float(iou.mean()), "iou": dict(zip(data.class_names, iou.round(4).tolist()))}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", choices=("steps", "detail", "supernet", "oracle", "scale", "loss"))
    parser.add_argument("--epochs", type=int, nargs="+", default=[30])
    parser.add_argument("--sandwich-epochs", type=int, default=5)
    parser.add_argument("--out", default="runs/recipe_sweep")
    parser.add_argument("--json", required=True)
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--data", default=None, help="oracle and scale: a dataset root (default: synthetic)")
    parser.add_argument("--max-sides", type=int, nargs="+", default=[1024, 320, 224],
                        help="scale: training scales (long side, px)")
    parser.add_argument("--losses", nargs="+", default=["ce+dice", "ce+lovasz"], help="loss: the losses compared")
    parser.add_argument("--lrs", type=float, nargs="+", default=[RETRAIN["lr"]], help="loss: the learning rates compared")
    parser.add_argument("--format", default="synthetic")
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    out = Path(args.out) / args.experiment
    if args.data and args.experiment not in ("oracle", "scale", "loss"):
        parser.error("--data is for the oracle, scale and loss; the other experiments run on the synthetic set")
    data = load_dataset(args.data, args.format, image_size=128, seed=0, synthetic_count=240, keep_aspect=True,
                        max_side=1024)
    space = SearchSpace.tiny()
    arch = fixed_arch(space)
    result: dict = {"command": "python " + " ".join(sys.argv), "arch": arch.summary(),
                    "recipe": {**RECIPE, **RETRAIN}, "train_images": len(data.train)}
    if args.experiment == "steps":
        result["rows"] = [retrain_row(data, space, arch, out / f"e{e}", e, init="scratch") for e in args.epochs]
    elif args.experiment == "detail":
        result["rows"] = [
            {"detail_channels": d, **retrain_row(data, replace(space, detail_channels=d), arch, out / f"detail{d}",
                                                 args.epochs[0], init="scratch")}
            for d in (0, space.detail_channels or 16)
        ]
    elif args.experiment == "supernet":
        probe = [space.sample(random.Random(100 + i)) for i in range(6)]
        rows = []
        for name, sandwich, epochs in (("sandwich", True, args.sandwich_epochs),
                                       ("one subnet a step", False, 3 * args.sandwich_epochs)):
            run = out / name.replace(" ", "_")
            cfg = SupernetConfig(space="tiny", epochs=epochs, lr=3e-3, warmup_epochs=1.0, sandwich=sandwich,
                                 sandwich_random=1, eval_every=0, **RECIPE)
            start = time.perf_counter()
            SupernetTrainer(cfg, data, run, space=space, quiet=True).fit()
            supernet_s = time.perf_counter() - start
            supernet, _ = load_supernet(run / "supernet.pt")
            inherited = [calibrate(supernet, data.val, a, num_classes=data.num_classes, tile_size=128).miou_after
                         for a in probe]
            retrained = retrain_row(data, space, arch, run / "retrain", args.epochs[0], init="inherited",
                                    supernet=str(run / "supernet.pt"))
            rows.append({"supernet": name, "supernet_epochs": epochs, "supernet_s": supernet_s,
                         "inherited_val_miou": inherited, "inherited_retrain": retrained})
        rows.append({"supernet": "none (scratch)",
                     "retrain": retrain_row(data, space, arch, out / "scratch", args.epochs[0], init="scratch")})
        result["rows"] = rows
    elif args.experiment == "scale":
        result["rows"] = scale_rows(args, space, arch, out)
    elif args.experiment == "loss":
        result["rows"] = loss_rows(args, space, arch, out)
    else:
        result["rows"] = oracle(data)
    atomic_write_json(args.json, result)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
