"""Evaluation: mIoU, mF1 and per-class IoU/F1 of a network (or a supernet's subnet) on a split.

    result = evaluate(model, data.test)                      # a static SegmentationNet
    result = evaluate(supernet, data.val, arch=arch)         # inherited weights, no extraction
    result.miou, result.mf1, result.to_dict(data.class_names)

Items may differ in size (each at its training scale): consecutive items of one size are
batched; with ``tile_size`` an image larger than a tile runs as overlapping tiles
(`autonad_edge.inference.tiled_logits`), so memory stays bounded and nothing is squashed.
Under ``torch.no_grad()`` and in eval mode (the previous mode is restored). Under torchrun each
rank evaluates its share of the split and the confusion matrices are summed, so every rank
returns the full-split figures. Metric conventions: `autonad_edge.metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from autonad_edge.inference import forward_at_tile, resolve_overlap, tiled_logits
from autonad_edge.metrics import ConfusionMatrix, RegionCounter, SegmentationMetrics, metrics_from_matrix
from autonad_edge.space import Arch, ArchError


@dataclass
class EvalResult:
    metrics: SegmentationMetrics
    class_names: list[str]
    num_images: int
    arch_hash: str | None = None
    regions: dict[str, Any] | None = None  # defect-level recall/precision (`metrics.RegionCounter`)

    @property
    def miou(self) -> float:
        return self.metrics.miou

    @property
    def mf1(self) -> float:
        return self.metrics.mf1

    @property
    def pixel_accuracy(self) -> float:
        return self.metrics.pixel_accuracy

    @property
    def defect_miou(self) -> float:
        """Mean IoU over the defect classes (1..C-1) present in target or prediction: the
        background's near-1 IoU left out. NaN when no defect class is present."""
        defects = self.metrics.iou[1:]
        defects = defects[~np.isnan(defects)]
        return float(defects.mean()) if defects.size else math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: miou, miou_defects, mf1, pixel_accuracy, num_images, per_class {name: {iou, f1,
        precision, recall}} (None for a class absent from target and prediction), the flat
        iou/f1 maps of `SegmentationMetrics.as_dict`, and defect_level (regions found: recall and
        precision per defect class, `metrics.RegionCounter`)."""
        flat = self.metrics.as_dict(self.class_names)
        per_class = {
            name: {key: flat[key][name] for key in ("iou", "f1", "precision", "recall")}
            for name in self.class_names
        }
        return {
            "miou": flat["miou"],
            "miou_defects": None if math.isnan(self.defect_miou) else self.defect_miou,
            "mf1": flat["mf1"],
            "pixel_accuracy": flat["pixel_accuracy"],
            "num_images": self.num_images,
            "arch_hash": self.arch_hash,
            "per_class": per_class,
            "iou": flat["iou"],
            "f1": flat["f1"],
            "confusion_matrix": self.metrics.matrix.tolist(),
            "defect_level": self.regions,
        }


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper."""
    return getattr(model, "module", model)


def _is_supernet(model: nn.Module) -> bool:
    from autonad_edge.models.supernet import HybridSupernet

    return isinstance(model, HybridSupernet)


def _forward_fn(model: nn.Module, arch: Arch | None):
    if _is_supernet(model):
        if arch is None:
            raise ArchError("evaluating a supernet needs an architecture (arch=...)")
        model.space.validate(arch)
        return lambda x: model(x, arch)
    stored = getattr(model, "arch", None)
    if arch is not None and stored is not None and stored != arch:
        raise ArchError(f"the model is {stored.summary()}, not the requested {arch.summary()}")
    return model


Item = tuple[Tensor, Tensor]


def _groups(items: Iterator[Item], batch_size: int, tile_size: int | None) -> Iterator[list[Item]]:
    """Consecutive items of one size in groups of at most `batch_size` (one stacked forward);
    an item larger than a tile comes alone, to be tiled."""
    pending: list[Item] = []
    for image, mask in items:
        alone = tile_size is not None and max(image.shape[-2:]) > tile_size
        if pending and (alone or len(pending) == batch_size or pending[0][0].shape != image.shape):
            yield pending
            pending = []
        if alone:
            yield [(image, mask)]
        else:
            pending.append((image, mask))
    if pending:
        yield pending


def _autocast_forward(forward: Callable[[Tensor], Tensor], amp: bool, device: torch.device):
    """`forward` under float16 autocast when amp is asked for on CUDA (else `forward` itself)."""
    if not (amp and device.type == "cuda"):
        return forward

    def run(x: Tensor) -> Tensor:
        with torch.autocast("cuda", dtype=torch.float16):
            return forward(x)

    return run


Batch = tuple[Tensor, Tensor]  # logits [B, C, H, W] (cpu), masks [B, H, W]


@torch.no_grad()
def iter_logits(
    model: nn.Module,
    dataset: Dataset,
    arch: Arch | None = None,
    *,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    amp: bool = False,
    dist=None,
    num_workers: int = 0,
    tile_size: int | None = None,
    tile_overlap: int | None = None,
) -> Iterator[Batch]:
    """The logits of `model` (or supernet `model` running `arch`) on this rank's share of
    `dataset`, with their masks, as `evaluate` computes them (parameters: `evaluate`'s).
    In eval mode under ``no_grad``; the previous mode is restored."""
    model = unwrap(model)
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    if tile_size is not None:
        tile_overlap = resolve_overlap(int(tile_size), tile_overlap)
    forward = _autocast_forward(_forward_fn(model, arch), amp, device)
    subset: Dataset = dataset
    if dist is not None and dist.distributed:
        subset = Subset(dataset, list(range(dist.rank, len(dataset), dist.world_size)))
    # Items one by one (sizes may differ); _groups batches the runs of equal size.
    loader = DataLoader(subset, batch_size=None, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    try:
        for group in _groups(iter(loader), max(1, int(batch_size)), tile_size):
            if len(group) == 1 and tile_size is not None:
                image, mask = group[0]
                logits = tiled_logits(forward, image, tile_size, tile_overlap, batch_size, device=device)
                yield logits.unsqueeze(0).float().cpu(), mask.unsqueeze(0)
                continue
            images = torch.stack([image for image, _ in group]).to(device, non_blocking=True)
            logits = forward(images) if tile_size is None else forward_at_tile(forward, images, int(tile_size))
            yield logits.float().cpu(), torch.stack([mask for _, mask in group])
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    arch: Arch | None = None,
    *,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
    amp: bool = False,
    dist=None,
    num_workers: int = 0,
    tile_size: int | None = None,
    tile_overlap: int | None = None,
) -> EvalResult:
    """Confusion-matrix metrics of `model` (or supernet `model` running `arch`) on `dataset`.

    dataset: items (image float [3,H,W], mask int64 [H,W]) at their training scale; sizes may
    differ. tile_size: images with a side above it run as overlapping tiles of that side
    (`tile_overlap`, default tile_size // 4), batched `batch_size` at a time; None = one
    forward per image. device: defaults to the model's. dist: a `DistContext` to split the
    work over ranks (None: this process only). amp: float16 autocast on CUDA.
    """
    num_classes = int(num_classes or getattr(unwrap(model), "num_classes"))
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    confusion = ConfusionMatrix(num_classes, ignore_index)
    regions = RegionCounter(num_classes, ignore_index)
    for logits, masks in iter_logits(model, dataset, arch, batch_size=batch_size, device=device, amp=amp,
                                     dist=dist, num_workers=num_workers, tile_size=tile_size,
                                     tile_overlap=tile_overlap):
        predictions = logits.argmax(dim=1)
        confusion.update(predictions, masks)
        regions.update(predictions, masks)
    matrix = confusion.matrix
    if dist is not None and dist.distributed:
        matrix = dist.all_reduce_sum(torch.from_numpy(np.array(matrix, dtype=np.int64))).numpy()
        regions.counts = dist.all_reduce_sum(torch.from_numpy(regions.counts)).numpy()
    arch_hash = arch.hash if arch is not None else getattr(getattr(unwrap(model), "arch", None), "hash", None)
    return EvalResult(metrics_from_matrix(matrix), names, len(dataset), arch_hash, regions.as_dict(names))


@torch.no_grad()
def image_matrices(model: nn.Module, dataset: Dataset, arch: Arch | None = None, *, background_offset: float = 0.0,
                   num_classes: int | None = None, ignore_index: int = 255, **eval_options) -> np.ndarray:
    """One confusion matrix per image of `dataset` ([N, C, C]), deciding with the background
    logit shifted by `background_offset` (a calibration's). eval_options: `evaluate`'s."""
    num_classes = int(num_classes or getattr(getattr(model, "module", model), "num_classes"))
    shift = torch.zeros(1, num_classes, 1, 1)
    shift[0, 0] = float(background_offset)
    out = []
    for logits, masks in iter_logits(model, dataset, arch, **eval_options):
        predictions = (logits + shift).argmax(dim=1)
        for prediction, mask in zip(predictions, masks):
            confusion = ConfusionMatrix(num_classes, ignore_index)
            confusion.update(prediction, mask)
            out.append(confusion.matrix.copy())
    return np.stack(out) if out else np.zeros((0, num_classes, num_classes), dtype=np.int64)


def constant_baseline(dataset: Dataset, num_classes: int, label: int = 0,
                      ignore_index: int = 255) -> EvalResult:
    """Metrics of predicting `label` everywhere (the all-background floor a model must beat)."""
    confusion = ConfusionMatrix(num_classes, ignore_index)
    for index in range(len(dataset)):
        _, mask = dataset[index]
        confusion.update(torch.full_like(mask, label), mask)
    return EvalResult(confusion.compute(), [str(i) for i in range(num_classes)], len(dataset))


__all__ = ["EvalResult", "constant_baseline", "evaluate", "image_matrices", "iter_logits", "unwrap"]
