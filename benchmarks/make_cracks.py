"""A crack-like defect set in VOC layout: thin (1-2 px) dark cracks on non-square textured
images larger than the training input, to check that a run keeps and learns thin structures.

    python benchmarks/make_cracks.py --out runs/cracks --count 120 --size 360x600
    autonad-edge search --data runs/cracks --format voc --out runs/cracks_search

Images are greyscale surfaces (low-frequency shading, fine grain, a few blotches that are NOT
defects) with 1-3 cracks each: random walks of 1-2 px width, 25-70 grey levels darker, drawn
with Pillow. Masks: 0 background, 1 crack. ImageSets has train/val/test lists (70/15/15).
About a tenth of the images have no crack.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def _surface(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    from PIL import Image, ImageFilter

    coarse = rng.normal(0, 1, (max(2, height // 60), max(2, width // 60)))
    shading = np.asarray(Image.fromarray(coarse.astype(np.float32)).resize((width, height), Image.BICUBIC))
    grain = rng.normal(0, 6, (height, width))
    image = 150 + 18 * shading + grain
    blotches = Image.new("L", (width, height), 0)
    from PIL import ImageDraw

    draw = ImageDraw.Draw(blotches)
    for _ in range(rng.integers(1, 4)):  # dark stains: distractors, not defects
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(10, 40)
        draw.ellipse([cx - r, cy - r * 0.6, cx + r, cy + r * 0.6], fill=int(rng.uniform(10, 25)))
    image -= np.asarray(blotches.filter(ImageFilter.GaussianBlur(8)), dtype=np.float64)
    return image


def _crack(rng: np.random.Generator, height: int, width: int) -> list[tuple[float, float]]:
    x, y = rng.uniform(0, width), rng.uniform(0, height)
    angle = rng.uniform(0, 2 * np.pi)
    points = [(x, y)]
    for _ in range(int(rng.integers(40, 120))):
        angle += rng.normal(0, 0.35)
        step = rng.uniform(3, 7)
        x, y = x + step * np.cos(angle), y + step * np.sin(angle)
        if not (0 <= x < width and 0 <= y < height):
            break
        points.append((x, y))
    return points


def make_sample(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image, ImageDraw

    image = _surface(rng, height, width)
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    cracks = 0 if rng.random() < 0.1 else int(rng.integers(1, 4))
    for _ in range(cracks):
        points = _crack(rng, height, width)
        if len(points) > 1:
            draw.line(points, fill=1, width=int(rng.integers(1, 3)))
    labels = np.asarray(mask, dtype=np.uint8)
    image = np.where(labels == 1, image - rng.uniform(25, 70), image)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def write_cracks(out: Path, count: int, size_hw: tuple[int, int], seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    (out / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (out / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    (out / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(count):
        # Non-square, and not all the same size.
        h = int(size_hw[0] * rng.uniform(0.85, 1.15))
        w = int(size_hw[1] * rng.uniform(0.85, 1.15))
        image, mask = make_sample(rng, h, w)
        sample_id = f"crack_{i:04d}"
        Image.fromarray(image).convert("RGB").save(out / "JPEGImages" / f"{sample_id}.jpg", quality=95)
        png = Image.fromarray(mask, mode="P")
        png.putpalette([0, 0, 0, 255, 64, 0] + [0] * (256 * 3 - 6))
        png.save(out / "SegmentationClass" / f"{sample_id}.png")
        ids.append(sample_id)
    order = rng.permutation(count)
    n_train, n_val = int(0.7 * count), int(0.15 * count)
    parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    for name, rows in parts.items():
        (out / "ImageSets" / "Segmentation" / f"{name}.txt").write_text(
            "".join(f"{ids[r]}\n" for r in sorted(rows)), encoding="utf-8")
    (out / "classes.txt").write_text("background\ncrack\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/cracks")
    parser.add_argument("--count", type=int, default=120)
    parser.add_argument("--size", default="360x600", help="HxW (each image varies by +-15 %%)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    h, w = (int(v) for v in args.size.lower().split("x"))
    write_cracks(Path(args.out), args.count, (h, w), args.seed)
    print(f"wrote {args.count} images to {args.out}")


if __name__ == "__main__":
    main()
