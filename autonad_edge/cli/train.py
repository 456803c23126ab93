"""`autonad-edge supernet train`, `retrain`, `evaluate` and `predict`.

Every command runs on the embedded synthetic data by default (no dataset needed), takes
``--data PATH --format mt|voc|synthetic --image-size N``, and prints one-line errors (exit 2).
Training writes into ``--out``: the checkpoint(s), ``train_log.jsonl``, ``splits.json`` (the
split manifest, reused by ``--resume`` and ``evaluate``), ``config.json`` and ``summary.json``.

Distributed: the same command under ``torchrun --nproc_per_node N --no-python autonad-edge
supernet train ...`` trains with DistributedDataParallel (nccl on GPUs, gloo on CPU).

torch is imported inside the commands so that ``autonad-edge --help`` stays instant.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from autonad_edge.cli.common import SPACE_HELP, fail, load_space, space_hint
from autonad_edge.training.config import CLASS_WEIGHTINGS

FORMATS = ("synthetic", "mt", "voc")

supernet_app = typer.Typer(help="Train the weight-sharing supernet.", no_args_is_help=True)


def _is_main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _echo(text: str) -> None:
    if _is_main_rank():
        typer.echo(text)


def _check_choice(name: str, value: Optional[str], choices: tuple[str, ...]) -> None:
    if value is not None and value not in choices:
        fail(f"--{name} {value!r}: choose one of {', '.join(choices)}")


def _user_errors():
    from autonad_edge.data.errors import DatasetError
    from autonad_edge.space import ArchError
    from autonad_edge.training.checkpoint import CheckpointError
    from autonad_edge.training.engine import ResumeError

    return (DatasetError, ArchError, CheckpointError, ResumeError)


def _load_data(fmt: str, path: Optional[str], image_size, seed: int, synthetic_count: int, manifest,
               keep_aspect: bool = True, max_side: Optional[int] = None):
    from autonad_edge.training.rundata import load_run_data

    try:
        return load_run_data(fmt, path, image_size, seed, synthetic_count, manifest, keep_aspect=keep_aspect,
                             max_side=max_side)
    except _user_errors() as exc:
        fail(str(exc))
    except ValueError as exc:  # bad ratios / sizes / seeds from the data layer
        fail(str(exc))


def _read_manifest(path: Path) -> dict[str, Any]:
    from autonad_edge.data.errors import DatasetError
    from autonad_edge.data.splits import load_manifest

    try:
        return load_manifest(path)
    except DatasetError as exc:
        fail(str(exc))


def _run_config(config_cls, out: Path, ckpt_name: str, resume: bool, explicit: dict[str, Any]):
    """(config, checkpoint dict or None): the checkpoint's config when resuming, else defaults
    with the options given on the command line."""
    from autonad_edge.training.checkpoint import load_checkpoint

    ckpt_path = out / ckpt_name
    if resume and ckpt_path.exists():
        try:
            ckpt = load_checkpoint(ckpt_path)
        except _user_errors() as exc:
            fail(str(exc))
        saved = dict(ckpt.get("config") or {})
        saved.update({k: v for k, v in explicit.items() if v is not None})
        return _checked(config_cls.from_dict(saved)), ckpt
    defaults = config_cls().to_dict()
    defaults.update({k: v for k, v in explicit.items() if v is not None})
    return _checked(config_cls.from_dict(defaults)), None


def _checked(config):
    try:
        config.check()
    except ValueError as exc:
        fail(str(exc))
    return config


def _at_least(option: str, value, low: float) -> None:
    """Refuse an option below `low` in one line (None: not given)."""
    if value is not None and value < low:
        fail(f"{option} must be at least {low:g}, got {value}")


def _check_device(spec: str) -> None:
    from autonad_edge.training.distributed import resolve_device

    try:
        resolve_device(spec)
    except ValueError as exc:
        fail(str(exc))


def _fit(trainer) -> dict[str, Any]:
    try:
        return trainer.fit()
    except _user_errors() as exc:
        fail(str(exc))


def _format_summary(summary: dict[str, Any]) -> str:
    last = summary.get("last") or {}
    parts = [f"wrote {summary['checkpoint']}", f"{summary['epochs']} epochs", f"{summary['steps']} steps"]
    if last.get("loss") is not None:
        parts.append(f"loss {last['loss']:.4f}")
    if last.get("val_miou") is not None:
        parts.append(f"val mIoU {100 * last['val_miou']:.1f}%")
    best = summary.get("best") or {}
    if best.get("val_miou") is not None:
        parts.append(f"best val mIoU {100 * best['val_miou']:.1f}% (epoch {best['epoch']}) in {summary.get('best_checkpoint')}")
    return ", ".join(parts)


# ---- options shared by the training commands ---------------------------------------------

DATA_HELP = "Dataset root (default: the embedded synthetic generator, no files needed)."
FORMAT_HELP = "Dataset format: synthetic, mt (magnetic-tile) or voc."

# Options both training commands take: one definition, one help text.
DataOpt = Annotated[Optional[Path], typer.Option(help=DATA_HELP)]
FmtOpt = Annotated[Optional[str], typer.Option("--format", help=FORMAT_HELP + " [default: synthetic]")]
ImageSizeOpt = Annotated[Optional[int], typer.Option(help="Square input size. [default: 320]")]
SyntheticCountOpt = Annotated[Optional[int], typer.Option(help="Images of the synthetic set. [default: 240]")]
EpochsOpt = Annotated[Optional[int], typer.Option(help="Epochs. [default: 100]")]
BatchSizeOpt = Annotated[Optional[int], typer.Option(help="Images per step (per process). [default: 8]")]
GradClipOpt = Annotated[Optional[float], typer.Option(help="Clip gradients to this L2 norm. [default: off]")]
ClassWeightingOpt = Annotated[Optional[str], typer.Option(
    help="Loss weights for rare defect pixels: none or inverse_sqrt (1/sqrt of class pixel share). [default: none]")]
DeviceOpt = Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or cuda:N. [default: auto]")]
AmpOpt = Annotated[Optional[bool], typer.Option("--amp/--no-amp", help="float16 autocast on CUDA. [default: on]")]
AugmentOpt = Annotated[Optional[bool], typer.Option("--augment/--no-augment",
                                                    help="Training augmentation. [default: on]")]
WorkersOpt = Annotated[Optional[int], typer.Option(help="DataLoader worker processes. [default: 0]")]
ThreadsOpt = Annotated[Optional[int], typer.Option(
    help="torch CPU threads (1 is often fastest on a busy CPU). [default: torch's]")]
EvalEveryOpt = Annotated[Optional[int], typer.Option(help="Validate every N epochs (0: never). [default: 1]")]
MaxStepsPerEpochOpt = Annotated[Optional[int], typer.Option(help="Cap each epoch's steps (a budget).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]


@supernet_app.command("train")
def supernet_train(
    data: DataOpt = None,
    fmt: FmtOpt = None,
    image_size: ImageSizeOpt = None,
    synthetic_count: SyntheticCountOpt = None,
    epochs: EpochsOpt = None,
    out: Path = typer.Option(Path("runs/supernet"), help="Run directory (checkpoint, logs, splits)."),
    space: Optional[str] = typer.Option(None, help=SPACE_HELP + " [default: default]"),
    sharing: Optional[str] = typer.Option(None, help="Weight sharing: cross, entangled or classical. [default: cross]"),
    batch_size: BatchSizeOpt = None,
    lr: Optional[float] = typer.Option(None, help="AdamW peak learning rate. [default: 5e-4]"),
    weight_decay: Optional[float] = typer.Option(None, help="AdamW weight decay. [default: 0.05]"),
    warmup_epochs: Optional[float] = typer.Option(None, help="Linear warm-up, in epochs. [default: 0]"),
    sandwich: Optional[bool] = typer.Option(None, "--sandwich/--no-sandwich",
                                            help="Largest + smallest + N random subnets per step. [default: off]"),
    sandwich_random: Optional[int] = typer.Option(None, help="Random subnets per sandwich step. [default: 2]"),
    seed: Optional[int] = typer.Option(None, help="Seed of init, subnet sampling, data order and split. [default: 0]"),
    grad_clip: GradClipOpt = None,
    class_weighting: ClassWeightingOpt = None,
    device: DeviceOpt = None,
    amp: AmpOpt = None,
    augment: AugmentOpt = None,
    workers: WorkersOpt = None,
    threads: ThreadsOpt = None,
    eval_every: EvalEveryOpt = None,
    max_steps_per_epoch: MaxStepsPerEpochOpt = None,
    splits: Optional[Path] = typer.Option(None, help="Reuse this split manifest (splits.json)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its checkpoint."),
    quiet: QuietOpt = False,
) -> None:
    """Train the hybrid supernet: AdamW, cosine decay, one uniformly sampled subnet per step."""
    from autonad_edge.space import SearchSpace
    from autonad_edge.training.config import SupernetConfig
    from autonad_edge.training.engine import SPLITS_FILE
    from autonad_edge.training.supernet_trainer import SupernetTrainer

    _check_choice("format", fmt, FORMATS)
    _check_choice("sharing", sharing, ("cross", "entangled", "classical"))
    _check_choice("class-weighting", class_weighting, CLASS_WEIGHTINGS)
    explicit = dict(
        data=str(data) if data else None, format=fmt, image_size=image_size, synthetic_count=synthetic_count,
        epochs=epochs, space=space, sharing=sharing, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        warmup_epochs=warmup_epochs, sandwich=sandwich, sandwich_random=sandwich_random, seed=seed,
        grad_clip=grad_clip, class_weighting=class_weighting, device=device, amp=amp, augment=augment,
        workers=workers, threads=threads, eval_every=eval_every,
        max_steps_per_epoch=max_steps_per_epoch,
    )
    config, ckpt = _run_config(SupernetConfig, out, SupernetTrainer.checkpoint_name, resume, explicit)
    _check_device(config.device)
    if ckpt is not None:
        the_space = SearchSpace.from_json(ckpt["space"])
    else:
        the_space = load_space(config.space)
    manifest = _read_manifest(splits) if splits else None
    if manifest is None and resume and (out / SPLITS_FILE).is_file():
        manifest = _read_manifest(out / SPLITS_FILE)
    the_data = _load_data(config.format, config.data, config.image_size, config.seed,
                          config.synthetic_count, manifest, config.keep_aspect, config.max_side)
    trainer = SupernetTrainer(config, the_data, out, space=the_space, resume=resume, quiet=quiet)
    summary = _fit(trainer)
    _echo(_format_summary(summary))


@supernet_app.callback()
def _supernet_group() -> None:
    """Train the weight-sharing supernet."""


def retrain_command(
    arch: Path = typer.Option(..., "--arch", help="Architecture JSON to retrain."),
    init: Optional[str] = typer.Option(None, help="scratch (fresh weights) or inherited (from --supernet). [default: inherited with --supernet, else scratch]"),
    supernet: Optional[Path] = typer.Option(None, help="Supernet checkpoint: the weights, space and split to inherit."),
    data: DataOpt = None,
    fmt: FmtOpt = None,
    image_size: ImageSizeOpt = None,
    synthetic_count: SyntheticCountOpt = None,
    epochs: EpochsOpt = None,
    out: Path = typer.Option(Path("runs/retrain"), help="Run directory (best.pt, last.pt, logs, splits)."),
    space: Optional[str] = typer.Option(None, help=SPACE_HELP + " [default: the supernet's, else default]"),
    batch_size: BatchSizeOpt = None,
    lr: Optional[float] = typer.Option(None, help="Adam learning rate. [default: 1e-4]"),
    weight_decay: Optional[float] = typer.Option(None, help="Adam weight decay. [default: 0]"),
    poly_power: Optional[float] = typer.Option(None, help="Poly decay power. [default: 0.9]"),
    seed: Optional[int] = typer.Option(None, help="Seed of init, data order and split. [default: 0]"),
    grad_clip: GradClipOpt = None,
    class_weighting: ClassWeightingOpt = None,
    device: DeviceOpt = None,
    amp: AmpOpt = None,
    augment: AugmentOpt = None,
    workers: WorkersOpt = None,
    threads: ThreadsOpt = None,
    eval_every: EvalEveryOpt = None,
    max_steps_per_epoch: MaxStepsPerEpochOpt = None,
    splits: Optional[Path] = typer.Option(None, help="Reuse this split manifest (default: the supernet run's)."),
    calibrate: Optional[bool] = typer.Option(
        None, "--calibrate/--no-calibrate",
        help="Fold the val-chosen background logit offset into best.pt's classifier. [default: on]"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from last.pt."),
    quiet: QuietOpt = False,
) -> None:
    """Retrain an architecture as a static network, from scratch or from inherited weights.

    Adam, lr 1e-4, poly decay 0.9; writes best.pt (best val mIoU, its decision calibrated on
    val) and last.pt (resumable).
    """
    from autonad_edge.space import ArchError, SearchSpace, load_arch
    from autonad_edge.training.checkpoint import load_checkpoint
    from autonad_edge.training.config import RetrainConfig
    from autonad_edge.training.retrain import RetrainTrainer, retrain_split

    _check_choice("format", fmt, FORMATS)
    _check_choice("init", init, ("scratch", "inherited"))
    _check_choice("class-weighting", class_weighting, CLASS_WEIGHTINGS)
    if init == "inherited" and supernet is None:
        fail("--init inherited needs --supernet CHECKPOINT")
    if supernet is not None and init is None and not (resume and (out / RetrainTrainer.checkpoint_name).exists()):
        init = "inherited"  # a supernet given is one to inherit from (it was silently unused)
    explicit = dict(
        data=str(data) if data else None, format=fmt, image_size=image_size, synthetic_count=synthetic_count,
        epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, poly_power=poly_power,
        init=init, supernet=str(supernet) if supernet else None, seed=seed, grad_clip=grad_clip,
        class_weighting=class_weighting, device=device,
        amp=amp, augment=augment, workers=workers, threads=threads, eval_every=eval_every,
        max_steps_per_epoch=max_steps_per_epoch, calibrate=calibrate,
    )
    config, ckpt = _run_config(RetrainConfig, out, RetrainTrainer.checkpoint_name, resume, explicit)
    _check_device(config.device)

    sup_ckpt = None
    if config.supernet and ckpt is None:  # its space and split, and with --init inherited its weights
        try:
            sup_ckpt = load_checkpoint(config.supernet)
        except _user_errors() as exc:
            fail(str(exc))
        if sup_ckpt["kind"] != "supernet":
            fail(f"{config.supernet}: a {sup_ckpt['kind']} checkpoint, not a supernet one")
    if ckpt is not None:
        the_space = SearchSpace.from_json(ckpt["space"])
    elif space is not None:
        the_space = load_space(space)
    elif sup_ckpt is not None:
        the_space = SearchSpace.from_json(sup_ckpt["space"])
    else:
        the_space = load_space("default")
    try:
        the_arch = load_arch(str(arch), the_space)
    except ArchError as exc:
        fail(f"{arch}: {exc}{space_hint(arch, space or 'default')}")

    try:
        manifest, config = retrain_split(config, out, splits=splits, resume=resume, supernet_checkpoint=sup_ckpt,
                                         image_size_given=image_size is not None)
    except _user_errors() as exc:
        fail(str(exc))
    the_data = _load_data(config.format, config.data, config.image_size, config.seed,
                          config.synthetic_count, manifest, config.keep_aspect, config.max_side)
    trainer = RetrainTrainer(config, the_data, out, space=the_space, arch=the_arch, resume=resume, quiet=quiet)
    summary = _fit(trainer)
    _echo(_format_summary(summary))


def _eval_data(info, data: Optional[Path], fmt: Optional[str], image_size: Optional[int],
               splits: Optional[Path], checkpoint: Path, seed: int, synthetic_count: Optional[int]):
    """The data of an evaluation: the run's split (splits.json next to the checkpoint, else the
    one stored in it) unless --splits says otherwise."""
    from autonad_edge.training.engine import SPLITS_FILE

    manifest = None
    if splits is not None:
        manifest = _read_manifest(splits)
    elif (checkpoint.parent / SPLITS_FILE).is_file():
        manifest = _read_manifest(checkpoint.parent / SPLITS_FILE)
    elif info.splits:
        manifest = info.splits
    cfg = info.config or {}
    fmt = fmt or (manifest or {}).get("format") or cfg.get("format") or "synthetic"
    if manifest is not None and manifest.get("format") != fmt:
        manifest = None  # another dataset: a fresh split of it
    size = image_size or (info.image_size[0] if info.image_size else None) or cfg.get("image_size") or 320
    # --data wins (a moved dataset: same ids, new root); else the manifest's root, else the run's.
    path = str(data) if data else (None if manifest else cfg.get("data"))
    count = synthetic_count or cfg.get("synthetic_count") or 240
    # At the run's training scale: the long side scaled down to its max_side, aspect kept
    # (a squashing run, keep_aspect false, at its fixed size).
    keep_aspect = not info.squash
    return _load_data(fmt, path, size, seed if manifest is None else 0, count, manifest, keep_aspect, info.max_side)


def _set_threads(threads: Optional[int]) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _load_for_eval(checkpoint: Path, arch: Optional[Path], device: str):
    """(model, info, supernet-or-None): a static net, or a supernet plus the arch to run."""
    from autonad_edge.space import ArchError, load_arch
    from autonad_edge.training.checkpoint import load_checkpoint, load_model, load_supernet
    from autonad_edge.training.distributed import resolve_device

    try:
        dev = resolve_device(device)
    except ValueError as exc:
        fail(str(exc))
    try:
        data = load_checkpoint(checkpoint)
        if data["kind"] == "supernet":
            if arch is None:
                fail(f"{checkpoint} is a supernet checkpoint: give the architecture to evaluate with --arch")
            supernet, info = load_supernet(checkpoint, dev)
            the_arch = load_arch(str(arch), info.space)
            info.arch = the_arch
            return supernet, info, the_arch
        model, info = load_model(checkpoint, arch, dev)
        return model, info, None
    except ArchError as exc:
        fail(f"{arch}: {exc}" if arch is not None and "holds the subnet" not in str(exc) else str(exc))
    except _user_errors() as exc:
        fail(str(exc))


def evaluate_command(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A subnet (best.pt/last.pt) or supernet checkpoint."),
    arch: Optional[Path] = typer.Option(None, help="Architecture JSON (needed for a supernet checkpoint)."),
    split: str = typer.Option("test", help="Split to evaluate: val or test (or train)."),
    data: Optional[Path] = typer.Option(None, help="Dataset root (default: the run's)."),
    fmt: Optional[str] = typer.Option(None, "--format", help=FORMAT_HELP + " [default: the run's]"),
    image_size: Optional[int] = typer.Option(None, help="Input size (default: the checkpoint's)."),
    synthetic_count: Optional[int] = typer.Option(None, help="Images of the synthetic set (default: the run's)."),
    splits: Optional[Path] = typer.Option(None, help="Split manifest (default: splits.json next to the checkpoint)."),
    seed: int = typer.Option(0, help="Split seed when there is no manifest."),
    batch_size: int = typer.Option(8, help="Images per batch."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: torch's)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (mIoU, mF1, per class)."),
) -> None:
    """mIoU, mF1 and per-class IoU/F1 of a checkpoint on a split of the run's data."""
    from autonad_edge.training.evaluate import evaluate

    _check_choice("format", fmt, FORMATS)
    _check_choice("split", split, ("train", "val", "test"))
    for option, value, low in (("--batch-size", batch_size, 1), ("--threads", threads, 1),
                               ("--image-size", image_size, 8), ("--synthetic-count", synthetic_count, 1),
                               ("--seed", seed, 0)):
        _at_least(option, value, low)
    _set_threads(threads)
    model, info, the_arch = _load_for_eval(checkpoint, arch, device)
    the_data = _eval_data(info, data, fmt, image_size, splits, checkpoint, seed, synthetic_count)
    if the_data.class_names != info.class_names:
        fail(f"{checkpoint}: the model predicts classes {info.class_names}, the data has {the_data.class_names}")
    dataset = the_data.split(split)
    if len(dataset) == 0:
        fail(f"the {split} split is empty")
    # Whole images in overlapping tiles of the network's input, as the run evaluated them.
    result = evaluate(model, dataset, the_arch, batch_size=batch_size, class_names=the_data.class_names,
                      ignore_index=the_data.ignore_index, tile_size=int(the_data.image_size[0]))
    report = {
        "checkpoint": str(checkpoint),
        "kind": info.kind,
        "arch_hash": info.arch.hash if info.arch else None,
        "arch": info.arch.summary() if info.arch else None,
        "split": split,
        "image_size": list(the_data.image_size),
        **result.to_dict(),
    }
    if as_json:
        print(json.dumps(report))
        return
    from rich.console import Console
    from rich.table import Table

    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}"

    console = Console()
    console.print(f"[bold]{checkpoint}[/] ({info.kind}, {report['arch']}) on {split}: {report['num_images']} images")
    table = Table("class", "IoU %", "F1 %", "precision %", "recall %")
    for name, row in report["per_class"].items():
        table.add_row(name, pct(row["iou"]), pct(row["f1"]), pct(row["precision"]), pct(row["recall"]))
    console.print(table)
    console.print(f"mIoU {pct(report['miou'])}%   mF1 {pct(report['mf1'])}%   pixel accuracy {pct(report['pixel_accuracy'])}%")


def predict_command(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A subnet or supernet checkpoint."),
    images: Path = typer.Option(..., "--images", help="Folder of images (or one image file)."),
    out: Path = typer.Option(..., "--out", help="Output folder: masks/, overlays/, predictions.json."),
    arch: Optional[Path] = typer.Option(None, help="Architecture JSON (needed for a supernet checkpoint)."),
    image_size: Optional[int] = typer.Option(None, help="Model input size (default: the checkpoint's)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: torch's)."),
    alpha: float = typer.Option(0.5, help="Overlay opacity of the class colours."),
    tile: Optional[int] = typer.Option(None, help="Tile side of the sliding window (default: the input size; "
                                                    "not for a model trained on squashed images)."),
) -> None:
    """Segment every image of a folder: class-index mask PNGs and colour overlays."""
    from autonad_edge.data.errors import DatasetError
    from autonad_edge.training.predict import predict_images

    if tile is not None and tile < 8:
        fail(f"--tile must be at least 8 pixels, got {tile}")
    _at_least("--threads", threads, 1)
    _at_least("--image-size", image_size, 8)
    if not 0 <= alpha <= 1:
        fail(f"--alpha is an opacity in [0, 1], got {alpha}")
    _set_threads(threads)
    model, info, the_arch = _load_for_eval(checkpoint, arch, device)
    if the_arch is not None:
        model = model.extract(the_arch).eval()
    size = image_size if image_size is not None else (info.image_size[0] if info.image_size else 320)
    if info.squash:
        # Trained on images squashed to its (height, width): each image is squashed to exactly
        # that, as one window, so the network sees the scale its test mIoU was measured at.
        size = (image_size, image_size) if image_size else (info.image_size or (320, 320))
        if tile is not None:
            fail(f"--tile does not apply: {checkpoint} was trained on images squashed to "
                 f"{size[0]}x{size[1]}, and predict squashes each image the same way, as one window")
    try:
        records = predict_images(model, images, out, image_size=size, class_names=info.class_names, alpha=alpha,
                                 max_side=info.max_side, tile=tile, squash=info.squash)
    except DatasetError as exc:
        fail(str(exc))
    flagged = sum(1 for r in records if sum(list(r["pixels"].values())[1:]) > 0)
    typer.echo(f"wrote {len(records)} masks and overlays to {out} ({flagged} with defects)")


def register(app: typer.Typer) -> None:
    """Add this group's commands to the main app."""
    app.add_typer(supernet_app, name="supernet")
    app.command("retrain")(retrain_command)
    app.command("evaluate")(evaluate_command)
    app.command("predict")(predict_command)
