"""Weight sharing at CPU scale (the paper's Table VII and Fig. 6) and how well inherited subnets rank.

1. Trains one supernet per sharing mode (``--modes``, default cross, entangled, classical) with
   the same recipe and the same budget (epochs x crops, stated in the JSON), by the code path
   of `autonad-edge search` (`PipelineConfig.supernet_config`); their training-loss curves go
   into one PNG.
2. Scores the same ``--subnets`` random subnets (one seed for all modes) with weights inherited
   from each supernet: calibrated val mIoU, as the search scores them.
3. Ranking (first mode only): ``--retrain`` of those subnets, spread over their FLOPs, are
   retrained by the pipeline's retraining settings (inherited init, ``--retrain-epochs``) and
   evaluated on test; Kendall tau (``scipy.stats.kendalltau``) between inherited val mIoU and
   retrained test mIoU says whether the supernet's ranking can be trusted.

    python benchmarks/sharing_and_ranking.py --data ../shared/datasets/magnetic-tile --format mt \\
        --epochs 10 --retrain-epochs 12 --max-side 224 --out /tmp/sharing_mt \\
        --json benchmarks/results/sharing_and_ranking_mt.json --plot benchmarks/results/sharing_losses_mt.png

With ``--run DIR`` (a finished `autonad-edge search` output directory) the run's config (space,
recipe, training scale), split and supernet epochs are used, and the run's own supernet stands for
its sharing mode; any other mode named in ``--modes`` is trained by that config for the same
epochs (so Table VII can be measured at the length of a real run)::

    python benchmarks/sharing_and_ranking.py --run /work/runs/mt60s14/search \
        --modes cross,entangled,classical --retrain 0 --out /work/runs/sharing_mt_full ...
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from autonad_edge.io import atomic_write_json
from autonad_edge.models.complexity import count_flops
from autonad_edge.search.pipeline import PipelineConfig
from autonad_edge.space import SearchSpace
from autonad_edge.training.calibration import calibrate
from autonad_edge.training.checkpoint import load_model, load_supernet
from autonad_edge.training.evaluate import evaluate
from autonad_edge.training.retrain import BEST_FILE, retrain
from autonad_edge.training.rundata import load_run_data
from autonad_edge.training.supernet_trainer import train_supernet


def spread_by_flops(items: list[dict], count: int) -> list[dict]:
    """`count` items evenly spaced in FLOPs order (the cheapest and the dearest included)."""
    ranked = sorted(items, key=lambda r: r["flops"])
    if count >= len(ranked):
        return ranked
    picks = sorted({round(i * (len(ranked) - 1) / (count - 1)) for i in range(count)})
    return [ranked[i] for i in picks]


def plot_losses(curves: dict[str, list[float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for i, (mode, losses) in enumerate(curves.items()):
        colour = f"C{i}"
        epochs = range(1, len(losses) + 1)
        if len(losses) <= 30:
            ax.plot(epochs, losses, marker="o", color=colour, label=mode)
            continue
        # Every mode samples the same subnets in the same order, so the epoch-to-epoch swings are
        # shared; a 9-epoch running mean shows the gap between the modes.
        ax.plot(epochs, losses, color=colour, alpha=0.25, linewidth=0.8)
        window = 9
        spans = [losses[max(0, k - window + 1):k + 1] for k in range(len(losses))]
        smooth = [sum(span) / len(span) for span in spans]
        ax.plot(epochs, smooth, color=colour, linewidth=2, label=f"{mode} ({window}-epoch mean)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (sampled subnets)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(title="weight sharing")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="dataset root (default: the synthetic set)")
    parser.add_argument("--format", default="synthetic")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--modes", default=None,
                        help="sharing modes, comma-separated (default: cross,entangled,classical; with --run, "
                             "the run's own mode)")
    parser.add_argument("--epochs", type=int, default=10, help="supernet epochs, the same for every mode")
    parser.add_argument("--subnets", type=int, default=10)
    parser.add_argument("--retrain", type=int, default=6, help="subnets retrained for the ranking (0: none)")
    parser.add_argument("--retrain-epochs", type=int, default=12)
    parser.add_argument("--max-side", type=int, default=None,
                        help="training scale (long side, px; default: the preset's cap, not the scale `search` "
                             "chooses from the masks, 215 on Magnetic-tile). Magnetic-tile scores the same at 224 as "
                             "at native size (recipe_sweep scale) and scores subnets about 7x faster")
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--out", default="runs/sharing")
    parser.add_argument("--json", default="benchmarks/results/sharing_and_ranking.json")
    parser.add_argument("--plot", default="benchmarks/results/sharing_losses.png")
    parser.add_argument("--run", default=None,
                        help="a finished search run's directory: its config, split, training scale and "
                             "supernet epochs (--data, --format, --preset, --epochs and --max-side are then "
                             "ignored); its supernet stands for its sharing mode, other --modes are trained")
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    started = time.perf_counter()
    out = Path(args.out)
    run = Path(args.run) if args.run else None
    if run:
        saved = PipelineConfig.load(run / "config.json").resolved()
        run_report = json.loads((run / "report.json").read_text())
        # The epochs the run trained (a time-budgeted run plans them; its config holds the preset's).
        args.epochs = run_report["budgets"]["supernet_epochs"]
        base = replace(saved, retrain_epochs=args.retrain_epochs, supernet_epochs=args.epochs)
        args.data, args.format = saved.data, saved.format
        args.modes = args.modes or saved.sharing
        manifest = run / "splits.json"
    else:
        base = PipelineConfig(data=args.data, format=args.format, preset=args.preset,
                              supernet_epochs=args.epochs, retrain_epochs=args.retrain_epochs,
                              max_side=args.max_side).resolved()
        manifest = out / "splits.json"
        args.modes = args.modes or "cross,entangled,classical"
    space = SearchSpace.resolve(base.space)
    data = load_run_data(args.format, args.data, base.image_size, base.seed, synthetic_count=base.synthetic_count,
                         manifest=manifest, keep_aspect=base.keep_aspect, max_side=base.max_side)
    if not manifest.exists():
        data.save_manifest(manifest)
    tile = int(base.image_size)
    rng = random.Random(1234)
    archs = [space.sample(rng) for _ in range(args.subnets)]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    rows: dict[str, dict] = {}
    curves: dict[str, list[float]] = {}
    def runs_own(mode: str) -> bool:
        """The run's own supernet stands for its sharing mode; other modes are trained here."""
        return run is not None and mode == base.sharing

    def supernet_dir(mode: str) -> Path:
        return run / "supernet" if runs_own(mode) else out / f"supernet_{mode}"

    for mode in modes:
        cfg = replace(base, sharing=mode)
        config = cfg.supernet_config()
        run_dir = supernet_dir(mode)
        t0 = time.perf_counter()
        if runs_own(mode):  # the run's own supernet stage (its wall time includes the block timing)
            train_s = next(s["wall_s"] for s in run_report["stages"] if s["name"] == "supernet")
        else:
            train_supernet(config, data, run_dir, space=space, resume=(run_dir / "supernet.pt").exists(), quiet=True)
            train_s = time.perf_counter() - t0
        log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines() if line.strip()]
        curves[mode] = [r["loss"] for r in log if "loss" in r]
        supernet, _ = load_supernet(run_dir / "supernet.pt")
        scored = []
        for arch in archs:
            c = calibrate(supernet, data.val, arch, num_classes=data.num_classes, tile_size=tile)
            scored.append({"arch": arch.summary(), "hash": arch.hash, "inherited_val_miou": c.miou_after,
                           "flops": count_flops(arch, space, data.num_classes, (tile, tile))})
        tail = curves[mode][-10:]
        rows[mode] = {"train_s": train_s, "final_loss": curves[mode][-1] if curves[mode] else None,
                      # the epochs' own training time (the run's stage also timed blocks) and the
                      # last 10 epochs' mean loss (one epoch's loss moves with its sampled subnets)
                      "epochs_train_s": sum(r.get("train_time", 0.0) for r in log),
                      "mean_loss_last_10": sum(tail) / len(tail) if tail else None,
                      "mean_inherited_val_miou": sum(s["inherited_val_miou"] for s in scored) / len(scored),
                      "subnets": scored}
        print(f"{mode:<10} supernet {train_s:.0f} s, final loss {rows[mode]['final_loss']:.4f}, "
              f"mean inherited val mIoU {100 * rows[mode]['mean_inherited_val_miou']:.2f} %", file=sys.stderr, flush=True)
    plot_losses(curves, Path(args.plot), f"supernet training, {args.format}, {args.epochs} epochs")

    ranking = None
    if args.retrain and modes:
        mode = modes[0]
        cfg = replace(base, sharing=mode)
        by_hash = {a.hash: a for a in archs}
        chosen = spread_by_flops(rows[mode]["subnets"], args.retrain)
        for row in chosen:
            run_dir = out / f"retrain_{row['hash']}"
            config = cfg.retrain_config(supernet_dir(mode) / "supernet.pt")
            retrain(config, data, run_dir, space=space, arch=by_hash[row["hash"]],
                    resume=(run_dir / "last.pt").exists(), quiet=True)
            net, _ = load_model(run_dir / BEST_FILE)
            r = evaluate(net, data.test, num_classes=data.num_classes, class_names=data.class_names, tile_size=tile)
            row["retrained_test_miou"] = r.miou
            row["retrained_test_miou_defects"] = r.defect_miou
            print(f"retrained {row['arch']}: inherited val {100 * row['inherited_val_miou']:.2f} %, "
                  f"retrained test {100 * r.miou:.2f} %", file=sys.stderr, flush=True)
        from scipy.stats import kendalltau

        tests = [r["retrained_test_miou"] for r in chosen]
        tau = kendalltau([r["inherited_val_miou"] for r in chosen], tests)
        # Does a larger subnet retrain better? (What a search that cannot see accuracy gives up.)
        tau_flops = kendalltau([r["flops"] for r in chosen], tests)
        ranking = {"mode": mode, "retrain_epochs": args.retrain_epochs, "kendall_tau": float(tau.statistic),
                   "p_value": float(tau.pvalue), "kendall_tau_flops": float(tau_flops.statistic),
                   "p_value_flops": float(tau_flops.pvalue), "subnets": chosen}
        print(f"Kendall tau (inherited val vs retrained test, {len(chosen)} subnets): {tau.statistic:.3f} "
              f"(p {tau.pvalue:.3f}); FLOPs vs retrained test: {tau_flops.statistic:.3f} "
              f"(p {tau_flops.pvalue:.3f})", file=sys.stderr, flush=True)
    atomic_write_json(args.json, {
        "command": "python " + " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "torch": torch.__version__},
        "dataset": {"format": args.format, "train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "supernet_of_run": str(run) if run else None, "space": base.space,
        "budget": {"supernet_epochs": args.epochs, "batch_size": base.batch_size, "crop": tile, "max_side": base.max_side,
                   "train_images": len(data.train), "sandwich": base.sandwich},
        "modes": rows, "ranking": ranking, "plot": args.plot, "wall_s": time.perf_counter() - started,
    })
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
