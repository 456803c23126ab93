"""How many optimiser steps Magnetic-tile needs, and at which training scale (issue 10).

Trains one fixed subnet of the tiny space (the one `recipe_sweep.py` uses; another with
``--arch``, or another space's with ``--space``) or the textbook
U-Net from scratch with the library's crops (`CropDataset`, paper augmentation), class
weights and loss (`SegmentationLoss`, CE + Dice), Adam with a one-cycle schedule (10 %
warm-up, cosine down), batch 8, for ``--steps`` steps, then scores the test split as whole
images at the training scale (argmax, no calibration), and again as overlapping tiles of the
crop size (`evaluate(tile_size=...)`, the path `predict` and the search use). Prints train IoU
(whole train split) every 400 steps; the wall time includes that scoring.

    python benchmarks/mt_fit_steps.py --data ../shared/datasets/magnetic-tile --steps 6400 --max-side 224
    python benchmarks/mt_fit_steps.py --data ../shared/datasets/magnetic-tile --steps 6400 --max-side 1024
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from autonad_edge.data import load_dataset
from autonad_edge.data.crops import CropConfig, CropDataset
from autonad_edge.data.transforms import AugmentationConfig, to_image_tensor
from autonad_edge.io import atomic_write_json
from autonad_edge.metrics import ConfusionMatrix
from autonad_edge.models.network import SegmentationNet
from autonad_edge.models.unet import UNet
from autonad_edge.space import Arch, SearchSpace
from autonad_edge.training.evaluate import evaluate
from autonad_edge.training.losses import SegmentationLoss, class_weights
from recipe_sweep import fixed_arch


def build(model: str, num_classes: int, arch_file: str | None = None, space_name: str = "tiny") -> torch.nn.Module:
    if model == "unet":
        return UNet(num_classes, base_width=16)
    space = SearchSpace.named(space_name)
    arch = Arch.from_json(Path(arch_file).read_text(encoding="utf-8")) if arch_file else fixed_arch(space)
    return SegmentationNet.from_arch(arch, space, num_classes)


def score(net: torch.nn.Module, split, num_classes: int):
    net.eval()
    confusion = ConfusionMatrix(num_classes)
    with torch.no_grad():
        for i in range(len(split)):
            pixels, mask = split.raw(i)
            confusion.update(net(to_image_tensor(pixels)[None]).argmax(1)[0].numpy(), mask)
    net.train()
    return confusion.compute()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--format", default="mt")
    p.add_argument("--model", choices=("subnet", "unet"), default="subnet")
    p.add_argument("--space", default="tiny", help="the search space of the subnet (a named space)")
    p.add_argument("--arch", default=None, help="an arch JSON of --space (default: recipe_sweep's fixed subnet of it)")
    p.add_argument("--steps", type=int, default=6400)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--max-side", type=int, default=224)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--defect-share", type=float, default=0.7)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    data = load_dataset(args.data, args.format, image_size=args.crop, max_side=args.max_side)
    train = data.train
    crops = CropDataset(train, data.num_classes, CropConfig((args.crop, args.crop), defect_share=args.defect_share),
                        seed=0, augmentation=AugmentationConfig())
    net = build(args.model, data.num_classes, args.arch, args.space)
    # Shares at the training scale (the measured runs used these; the trainers' own
    # `class_frequencies` counts native pixels, nearly the same shares).
    counts = sum(np.bincount(train.raw(i)[1].ravel(), minlength=256)[:data.num_classes] for i in range(len(train)))
    weight = torch.tensor(class_weights(counts / counts.sum(), "inverse_sqrt"), dtype=torch.float32)
    loss_fn = SegmentationLoss("ce+dice", class_weight=weight)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.steps, pct_start=0.1)
    loader = torch.utils.data.DataLoader(crops, batch_size=8, shuffle=True, drop_last=True)
    step, epoch, start, log = 0, 0, time.time(), []
    while step < args.steps:
        crops.set_epoch(epoch)
        epoch += 1
        for images, masks in loader:
            loss = loss_fn(net(images), masks)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if step % 400 == 0 or step == args.steps:
                iou = score(net, train, data.num_classes).iou
                log.append({"step": step, "seconds": time.time() - start, "train_iou": iou.tolist()})
                print(step, f"{time.time() - start:.0f} s, train IoU", np.round(iou * 100, 1), flush=True)
            if step >= args.steps:
                break
    test = score(net, data.test, data.num_classes)
    print(f"test mIoU {test.miou * 100:.2f} %, IoU per class", np.round(test.iou * 100, 1))
    net.eval()
    tiled = evaluate(net, data.test, num_classes=data.num_classes, tile_size=args.crop).metrics
    print(f"test mIoU in {args.crop}-px tiles {tiled.miou * 100:.2f} %, IoU per class", np.round(tiled.iou * 100, 1))
    if args.json:
        atomic_write_json(args.json, {"args": vars(args), "log": log, "test_miou": test.miou,
                                      "test_iou": dict(zip(data.class_names, test.iou.tolist())),
                                      "test_miou_tiled": tiled.miou,
                                      "test_iou_tiled": dict(zip(data.class_names, tiled.iou.tolist()))})


if __name__ == "__main__":
    main()
