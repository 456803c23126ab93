"""Retrain a fixed mid-size subnet on magnetic-tile on this machine, and time the supernet's
slicing overhead for the same architecture.

1. Retrains (from scratch, `RetrainTrainer`: Adam, poly decay) a fixed mid-size subnet of the
   default space for ``--epochs`` at 320x320, then reports mIoU / mF1 on the test split and the
   training throughput (images/s).
2. Times one training step (forward + backward + optimiser step, batch ``--batch-size``) of the
   supernet running that arch (``HybridSupernet(x, arch)``: sliced weights) against the same step
   of the extracted static subnet, interleaved, median of ``--timing-steps``; the ratio is the
   slicing overhead (target <= 1.2x). Forward-only (inference) times are reported too.
   ``--profile`` adds the top operators of both steps (torch.profiler) to the JSON.

    python benchmarks/train_subnet.py --data /work/shared/datasets/magnetic-tile --format mt \\
        --epochs 2 --out runs/train_subnet.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from autonad_edge.io import atomic_write_json
from autonad_edge.models.supernet import HybridSupernet
from autonad_edge.space import Arch, BlockArch, SearchSpace, StageArch, load_arch
from autonad_edge.training.config import RetrainConfig
from autonad_edge.training.losses import masked_cross_entropy
from autonad_edge.training.evaluate import constant_baseline, evaluate
from autonad_edge.training.retrain import RetrainTrainer
from autonad_edge.training.rundata import load_run_data


def mid_size_arch() -> Arch:
    """A fixed mid-size subnet of the default space: every operator, mid widths, depth 2."""
    b = BlockArch
    stages = (
        StageArch(64, (b("conv", 8.0, 3), b("transformer", 8.0))),
        StageArch(96, (b("mlp", 8.0), b("conv", 8.0, 5))),
        StageArch(160, (b("transformer", 4.0), b("mlp", 4.0), b("conv", 4.0, 3))),
        StageArch(224, (b("transformer", 4.0), b("conv", 4.0, 3))),
    )
    edges = ("conv1x1", "conv3x3", "dwconv3x3", "conv3x3", "dilconv3x3", "conv1x1")
    return SearchSpace.default().validate(Arch(stages, edges, (1, 2, 3, 6)))


def _time_step(fn, sync) -> float:
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def slicing_overhead(space, arch, num_classes, images, masks, steps, device, profile: bool):
    """Median seconds of a train step and a forward pass: supernet(x, arch) vs extracted."""
    torch.manual_seed(0)
    supernet = HybridSupernet(space, num_classes, "cross").to(device).train()
    static = supernet.extract(arch).to(device).train()
    opt_super = torch.optim.AdamW(supernet.parameters(), lr=1e-6)
    opt_static = torch.optim.AdamW(static.parameters(), lr=1e-6)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def train_super():
        opt_super.zero_grad(set_to_none=True)
        masked_cross_entropy(supernet(images, arch), masks).backward()
        opt_super.step()

    def train_static():
        opt_static.zero_grad(set_to_none=True)
        masked_cross_entropy(static(images), masks).backward()
        opt_static.step()

    def fwd_super():
        with torch.no_grad():
            supernet(images, arch)

    def fwd_static():
        with torch.no_grad():
            static(images)

    for fn in (train_super, train_static, fwd_super, fwd_static):  # warm-up (allocator, kernels)
        fn()
        fn()
    times = {"train_super": [], "train_static": [], "fwd_super": [], "fwd_static": []}
    for i in range(steps):
        # Interleave, alternating the order, so load from other processes hits both alike.
        pairs = [("train_super", train_super), ("train_static", train_static)]
        fpairs = [("fwd_super", fwd_super), ("fwd_static", fwd_static)]
        for name, fn in (pairs if i % 2 == 0 else pairs[::-1]) + (fpairs if i % 2 == 0 else fpairs[::-1]):
            times[name].append(_time_step(fn, sync))
    med = {k: statistics.median(v) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}  # the least disturbed run of each (shared machines)
    result = {
        "steps": steps,
        "train_step_s": {"supernet": med["train_super"], "extracted": med["train_static"]},
        "forward_s": {"supernet": med["fwd_super"], "extracted": med["fwd_static"]},
        "train_overhead": med["train_super"] / med["train_static"],
        "forward_overhead": med["fwd_super"] / med["fwd_static"],
        "train_overhead_min": low["train_super"] / low["train_static"],
        "forward_overhead_min": low["fwd_super"] / low["fwd_static"],
        "raw_s": times,
    }
    if profile:
        result["profile"] = {"supernet": _profile(train_super), "extracted": _profile(train_static)}
    return result


def _profile(fn, rows: int = 15) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    table = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    return [{"op": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1e3} for e in table]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="/work/shared/datasets/magnetic-tile")
    ap.add_argument("--format", default="mt", choices=("mt", "voc", "synthetic"))
    ap.add_argument("--image-size", type=int, default=320)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4, help="Adam lr (paper: 1e-4)")
    ap.add_argument("--max-steps-per-epoch", type=int, default=None, help="train on a subset of each epoch")
    ap.add_argument("--arch", default=None, help="architecture JSON (default: the fixed mid-size subnet)")
    ap.add_argument("--timing-steps", type=int, default=8)
    ap.add_argument("--skip-training", action="store_true", help="only measure the slicing overhead")
    ap.add_argument("--profile", action="store_true", help="add per-operator profiles of both steps")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--run-dir", default=None, help="where the retraining run goes (default: a temp dir)")
    ap.add_argument("--out", default=None, help="write the results JSON here")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    space = SearchSpace.default()
    arch = load_arch(args.arch, space) if args.arch else mid_size_arch()
    device = torch.device(args.device)
    t0 = time.perf_counter()
    data = load_run_data(args.format, None if args.format == "synthetic" and args.data in (None, "") else args.data,
                         args.image_size, 0)
    load_s = time.perf_counter() - t0
    results: dict = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "device": str(device),
                    "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "data": {"format": args.format, "root": args.data, "image_size": args.image_size,
                 "train": len(data.train), "val": len(data.val), "test": len(data.test),
                 "classes": data.class_names, "load_s": load_s},
        "arch": {"summary": arch.summary(), "hash": arch.hash, "json": arch.to_dict()},
    }
    from autonad_edge.models.complexity import count_flops, count_params

    results["arch"]["params"] = count_params(arch, space, data.num_classes)
    results["arch"]["flops"] = count_flops(arch, space, data.num_classes, (args.image_size, args.image_size))
    print(f"arch {arch.summary()}  {results['arch']['params'] / 1e6:.2f} M params  "
          f"{results['arch']['flops'] / 1e9:.2f} GFLOPs at {args.image_size}", flush=True)

    if not args.skip_training:
        run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="train_subnet_"))
        cfg = RetrainConfig(data=args.data, format=args.format, image_size=args.image_size, epochs=args.epochs,
                            batch_size=args.batch_size, lr=args.lr, device=args.device,
                            max_steps_per_epoch=args.max_steps_per_epoch, eval_every=0, threads=args.threads)
        start = time.perf_counter()
        summary = RetrainTrainer(cfg, data, run_dir, space=space, arch=arch).fit()
        train_s = time.perf_counter() - start
        log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
        from autonad_edge.training.checkpoint import load_model

        model, _ = load_model(run_dir / "last.pt", device=device)
        start = time.perf_counter()
        test = evaluate(model, data.test, batch_size=args.batch_size, class_names=data.class_names)
        eval_s = time.perf_counter() - start
        floor = constant_baseline(data.test, data.num_classes)
        results["training"] = {
            "epochs": args.epochs, "steps": summary["steps"], "batch_size": args.batch_size, "lr": args.lr,
            "max_steps_per_epoch": args.max_steps_per_epoch, "wall_s": train_s,
            "images_per_s": [r["images_per_s"] for r in log], "loss": [r["loss"] for r in log],
            "run_dir": str(run_dir),
        }
        results["test"] = {**test.to_dict(), "eval_s": eval_s, "eval_images_per_s": len(data.test) / eval_s,
                           "all_background_miou": floor.miou, "all_background_mf1": floor.mf1}
        results["test"].pop("confusion_matrix", None)

    images = torch.stack([data.train[i][0] for i in range(args.batch_size)]).to(device)
    masks = torch.stack([data.train[i][1] for i in range(args.batch_size)]).to(device)
    results["slicing"] = slicing_overhead(space, arch, data.num_classes, images, masks,
                                          args.timing_steps, device, args.profile)

    # ---- report ----------------------------------------------------------------------------
    rows = []
    if "training" in results:
        tr, te = results["training"], results["test"]
        rows += [
            ("retrain", f"{tr['epochs']} epochs, {tr['steps']} steps, batch {tr['batch_size']}, lr {tr['lr']:g}"),
            ("train images/s", f"{statistics.median(tr['images_per_s']):.2f}"),
            ("loss per epoch", ", ".join(f"{v:.3f}" for v in tr["loss"])),
            ("test mIoU / mF1", f"{100 * te['miou']:.2f} / {100 * te['mf1']:.2f} %"),
            ("all-background mIoU / mF1", f"{100 * te['all_background_miou']:.2f} / {100 * te['all_background_mf1']:.2f} %"),
            ("test images/s (eval)", f"{te['eval_images_per_s']:.2f}"),
        ]
    sl = results["slicing"]
    rows += [
        ("train step: supernet / extracted",
         f"{sl['train_step_s']['supernet']:.3f} s / {sl['train_step_s']['extracted']:.3f} s = "
         f"{sl['train_overhead']:.3f}x (medians; fastest runs {sl['train_overhead_min']:.3f}x)"),
        ("forward: supernet / extracted",
         f"{sl['forward_s']['supernet']:.3f} s / {sl['forward_s']['extracted']:.3f} s = "
         f"{sl['forward_overhead']:.3f}x (medians; fastest runs {sl['forward_overhead_min']:.3f}x)"),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
    if args.out:
        atomic_write_json(args.out, results)
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
