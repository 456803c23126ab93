"""What the model predicts, as a picture: the worst and the best images of a split.

One row per image: the image, the ground truth over it, the prediction over it (class colours
of `predict.class_colours`; background untinted), ranked by the image's IoU over the defect
classes it holds or is predicted to hold. The report links the grid::

    rows = prediction_grid(model, data.test, "report/predictions.png", class_names=data.class_names,
                           tile_size=128, count=3)
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from autonad_edge.io import atomic_write_bytes
from autonad_edge.metrics import metrics_from_matrix
from autonad_edge.training.evaluate import image_matrices, iter_logits
from autonad_edge.training.predict import class_colours, overlay

PANEL_HEIGHT = 160
GAP = 4
LABEL_HEIGHT = 16
CHAR_WIDTH = 6  # PIL's default bitmap font


def image_scores(matrices: np.ndarray) -> list[float]:
    """Each image's mean IoU over the defect classes present in its truth or prediction; an
    image with none scores 1 (nothing to find, nothing falsely called)."""
    scores = []
    for matrix in matrices:
        iou = metrics_from_matrix(matrix).iou[1:]
        iou = iou[~np.isnan(iou)]
        scores.append(float(iou.mean()) if iou.size else 1.0)
    return scores


def pick_worst_and_best(scores: Sequence[float], count: int, has_defect: Sequence[bool] | None = None) -> list[int]:
    """Indices of the `count` lowest then the `count` highest scores (no index twice). The best
    rows are drawn from the images whose truth holds a defect when there are any (`has_defect`):
    a clean image predicted clean scores 1 too, and a row of blank images shows nothing learned."""
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    worst = order[:count]
    candidates = [i for i in reversed(order) if i not in worst]
    if has_defect is not None and any(has_defect[i] for i in candidates):
        candidates = [i for i in candidates if has_defect[i]]
    return worst + candidates[:count]


def _rgb(pixels: np.ndarray) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    return np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels[..., :3]


def prediction_grid(model: nn.Module, dataset: Dataset, out_path: str | Path, *, class_names: Sequence[str],
                    count: int = 3, background_offset: float = 0.0, tile_size: int | None = None,
                    batch_size: int = 8, device=None) -> list[dict]:
    """Write the PNG grid of the `count` worst and `count` best images of `dataset` (whose
    `raw(i)` gives uint8 pixels and the mask) and return one record per row: index, id, score."""
    from PIL import Image, ImageDraw

    options = {"tile_size": tile_size, "batch_size": batch_size, "device": device}
    num_classes = len(class_names)
    matrices = image_matrices(model, dataset, num_classes=num_classes, background_offset=background_offset,
                              **options)
    scores = image_scores(matrices)
    picks = pick_worst_and_best(scores, count, [bool(np.asarray(m)[1:].sum()) for m in matrices])
    colours = class_colours(num_classes)
    shift = torch.zeros(1, num_classes, 1, 1)
    shift[0, 0] = float(background_offset)
    predictions = [(logits + shift).argmax(dim=1)[0].numpy()
                   for logits, _ in iter_logits(model, Subset(dataset, picks), batch_size=1, device=device,
                                                tile_size=tile_size)]
    rows, records = [], []
    ids = getattr(dataset, "ids", None)
    for rank, (index, prediction) in enumerate(zip(picks, predictions)):
        pixels, mask = dataset.raw(index)
        rgb = _rgb(pixels)
        truth = np.where(np.asarray(mask) == 255, 0, np.asarray(mask))  # ignored pixels untinted
        panels = [rgb, overlay(rgb, truth, colours),
                  overlay(rgb, prediction, colours)]
        h, w = rgb.shape[:2]
        width = max(1, round(w * PANEL_HEIGHT / h))
        name = ids[index] if ids is not None else str(index)
        kind = "worst" if rank < count else "best"
        label = f"{kind}: {name}, defect IoU {100 * scores[index]:.1f}%  (image | truth | prediction)"
        strip_width = max(3 * width + 2 * GAP, CHAR_WIDTH * len(label) + 4)
        strip = Image.new("RGB", (strip_width, PANEL_HEIGHT + LABEL_HEIGHT), "white")
        for k, panel in enumerate(panels):
            strip.paste(Image.fromarray(panel).resize((width, PANEL_HEIGHT), Image.NEAREST),
                        (k * (width + GAP), LABEL_HEIGHT))
        ImageDraw.Draw(strip).text((2, 2), label, fill="black")
        rows.append(strip)
        records.append({"index": int(index), "id": name, "defect_iou": scores[index], "row": kind})
    legend = Image.new("RGB", (max([r.width for r in rows] + [200]), LABEL_HEIGHT + 4), "white")
    draw = ImageDraw.Draw(legend)
    x = 2
    for name, colour in zip(class_names[1:], colours[1:]):
        draw.rectangle([x, 4, x + 10, 14], fill=tuple(colour))
        draw.text((x + 14, 3), name, fill="black")
        x += 14 + CHAR_WIDTH * len(name) + 12
    width = max(r.width for r in [legend, *rows])
    grid = Image.new("RGB", (width, legend.height + sum(r.height + GAP for r in rows)), "white")
    grid.paste(legend, (0, 0))
    y = legend.height
    for row in rows:
        grid.paste(row, (0, y))
        y += row.height + GAP
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    grid.save(png, format="PNG")
    atomic_write_bytes(out_path, png.getvalue())  # the report links it and records its sha256
    return records


__all__ = ["image_scores", "pick_worst_and_best", "prediction_grid"]
