"""Prediction on image files: class-index masks and colour overlays.

    model, info = load_model("runs/retrain/best.pt")
    predict_images(model, "photos/", "out/", image_size=info.image_size, class_names=info.class_names)

Every image in the folder (png, jpg, jpeg, bmp, tif, tiff in any case, dotfiles such as macOS's
``._a.jpg`` skipped; any size, greyscale or colour, turned as its EXIF orientation says, as
training reads it) is normalised, scaled to its training scale (long side down to the run's
``max_side``, aspect kept; None = native) and segmented in overlapping tiles of the network's input side
(`autonad_edge.inference`), so memory stays bounded and thin cracks are not squashed; the logits
are resized back to the image's own size (bilinear) before the argmax. A model trained on images
squashed to its input size (the checkpoint's ``squash``, keep_aspect false) is inferred the same
way: each image resized to exactly ``image_size``, one window, the logits resized back.
Written: ``masks/<stem>.png`` (8-bit greyscale, pixel = class index), ``overlays/<stem>.png``
(the image with each defect class tinted in its colour), and ``predictions.json`` (per image:
size and pixels per class, plus the class colours).

A file that cannot be read (torn, not an image, 16-bit, too large) is reported in one line and
skipped; the others are segmented, ``predictions.json`` lists them and the skipped files (it is
written also when a run stops part-way), and `predict_images` then raises `UnreadableImages`
(a DatasetError: the CLI prints it in one line and exits non-zero).
"""

from __future__ import annotations

import colorsys
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from autonad_edge.data.errors import DatasetError
from autonad_edge.data.files import IMAGE_SUFFIXES, has_suffix, is_hidden
from autonad_edge.io import atomic_write_json

IMAGE_EXTENSIONS = IMAGE_SUFFIXES  # what training reads


class UnreadableImages(DatasetError):
    """Some images could not be read; the others were segmented (`records`), and `skipped`
    lists the rest ({"image", "error"}), as predictions.json does."""

    def __init__(self, message: str, path: Path, records: list[dict[str, Any]],
                 skipped: list[dict[str, str]]) -> None:
        super().__init__(message, path)
        self.records, self.skipped = records, skipped


_BASE_COLOURS = [
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
]


def class_colours(num_classes: int) -> list[tuple[int, int, int]]:
    """A fixed colour per class (class 0, background, is black and left untinted)."""
    colours = list(_BASE_COLOURS[:num_classes])
    for i in range(len(colours), num_classes):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.8, 0.95)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours


def list_images(path: str | Path) -> list[Path]:
    """The image files of a folder (sorted, not recursive, dotfiles skipped), or `path` itself
    if it is one."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DatasetError("no such image folder", path)
    files = sorted(p for p in path.iterdir()
                   if not is_hidden(p) and has_suffix(p, IMAGE_EXTENSIONS) and p.is_file())
    if not files:
        raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in the folder", path)
    return files


def read_image(path: Path):  # -> PIL.Image.Image
    """An image file as training reads it: its own mode (grey stays grey, colour stays colour),
    turned as its EXIF orientation says; a DatasetError when it cannot be read."""
    from autonad_edge.data.cache import open_image_as

    return open_image_as(path)


def overlay(image_rgb: np.ndarray, mask: np.ndarray, colours: Sequence[tuple[int, int, int]],
            alpha: float = 0.5) -> np.ndarray:
    """uint8 [H,W,3]: `image_rgb` with every pixel of class c > 0 blended towards colour c."""
    lut = np.asarray(colours, dtype=np.float32)
    tint = lut[mask]
    out = image_rgb.astype(np.float32)
    fg = (mask > 0)[..., None]
    out = np.where(fg, (1 - alpha) * out + alpha * tint, out)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def default_tile(image_size: int | Sequence[int]) -> int:
    """The tile side for a model trained at `image_size`: its (longer) input side, the window
    size the network learnt on."""
    return int(image_size) if isinstance(image_size, int) else max(int(v) for v in image_size)


def _check_squash_tile(squash: bool, tile: int | None) -> None:
    if squash and tile is not None:
        raise ValueError("a model trained on squashed images runs each image as one window of its "
                         "image_size; a tile does not apply")


@torch.no_grad()
def predict_image(model: nn.Module, image, image_size: int | Sequence[int], device: torch.device, *,
                  max_side: int | None = None, tile: int | None = None,
                  overlap: int | None = None, squash: bool = False) -> np.ndarray:
    """The uint8 [H,W] class mask of one PIL image at its own size: inferred at its training
    scale (`max_side`, None = native) in tiles of `tile` (default: `image_size`'s side).
    squash: the model was trained on images squashed to `image_size`; the image is resized to
    exactly that, run as one window, and the logits resized back (`max_side`, `tile` unused)."""
    from autonad_edge.data.cache import image_size_hw
    from autonad_edge.data.transforms import to_image_tensor
    from autonad_edge.inference import predict_classes

    _check_squash_tile(squash, tile)
    pixels = np.array(image, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if squash:
        classes = predict_classes(model, to_image_tensor(pixels), tile=None,
                                  squash_hw=image_size_hw(image_size), device=device)
    else:
        classes = predict_classes(model, to_image_tensor(pixels), tile=tile or default_tile(image_size),
                                  overlap=overlap, max_side=max_side, device=device)
    return classes.to(torch.uint8).numpy()


def predict_images(
    model: nn.Module,
    images: str | Path,
    out_dir: str | Path,
    *,
    image_size: int | tuple[int, int],
    class_names: Sequence[str],
    device: torch.device | str | None = None,
    alpha: float = 0.5,
    max_side: int | None = None,
    tile: int | None = None,
    squash: bool = False,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Segment every image of `images` (a folder or one file); write masks, overlays and
    ``predictions.json`` under `out_dir`. max_side: the run's training scale (None = native);
    tile: the tile side (default: `image_size`'s); squash: the model was trained on images
    squashed to `image_size` (the checkpoint's ``squash``), so each is inferred squashed to it,
    one window (no tile). log: where a skipped file's line goes (default: stderr). Returns the
    per-image records; raises `UnreadableImages` after the others when a file was unreadable."""
    from PIL import Image

    from autonad_edge.inference import resolve_overlap

    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    _check_squash_tile(squash, tile)  # fails before the first image
    if squash:
        overlap = None
    else:
        tile = tile or default_tile(image_size)
        overlap = resolve_overlap(tile, None)  # fails on a bad tile before the first image
    files = list_images(images)
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    out_dir = Path(out_dir)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
    colours = class_colours(len(class_names))
    stems = [p.stem for p in files]
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    was_training = model.training
    model.eval()
    records: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    try:
        for path in files:
            name = path.stem if stems.count(path.stem) == 1 else path.name
            try:
                image = read_image(path)
            except DatasetError as exc:  # one bad file must not cost the folder's other results
                skipped.append({"image": str(path), "error": str(exc)})
                log(f"skipped {exc}")
                continue
            mask = predict_image(model, image, tuple(image_size), device, max_side=max_side,
                                 tile=tile, overlap=overlap, squash=squash)
            Image.fromarray(mask, mode="L").save(out_dir / "masks" / f"{name}.png")
            rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
            Image.fromarray(overlay(rgb, mask, colours, alpha)).save(out_dir / "overlays" / f"{name}.png")
            counts = np.bincount(mask.ravel(), minlength=len(class_names))
            records.append({
                "image": str(path),
                "mask": f"masks/{name}.png",
                "overlay": f"overlays/{name}.png",
                "size": [int(image.height), int(image.width)],
                "pixels": {c: int(n) for c, n in zip(class_names, counts)},
            })
    finally:
        model.train(was_training)
        # Also when a later image (or Ctrl-C) stops the run: the masks written stay listed.
        atomic_write_json(out_dir / "predictions.json", {
            "image_size": list(image_size),
            "max_side": None if squash else max_side,
            **({"squash": True} if squash else {}),  # absent: aspect kept (the file is as before)
            "tile": tile,
            "tile_overlap": overlap,
            "classes": {c: list(col) for c, col in zip(class_names, colours)},
            "images": records,
            "skipped": skipped,
        })
    if skipped:
        raise UnreadableImages(
            f"{len(skipped)} of {len(files)} images could not be read and were skipped (first: "
            f"{skipped[0]['error']}); the other {len(records)} were segmented, all are listed in "
            f"{out_dir / 'predictions.json'}", Path(images), records, skipped,
        )
    return records


__all__ = ["IMAGE_EXTENSIONS", "UnreadableImages", "class_colours", "list_images", "overlay", "predict_image",
           "predict_images", "read_image"]
