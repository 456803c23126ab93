"""Synthetic industrial-surface defect images: the project's embedded default dataset.

Numpy only (no torch, no PIL), so it can run anywhere. Each image is a textured surface
(brushed metal, cast grain, ceramic tiles or a woven mesh) under an uneven illumination, with
one to a few defects whose pixels are labelled with their class:

    0 background, 1 scratch, 2 pit, 3 crack, 4 stain

The generator deliberately reproduces the two difficulties the AutoNAD paper names for
industrial defects:

* large variation within a class: every defect draws its size (about 10x range), orientation,
  contrast (sign and amplitude), width and shape at random;
* similar look across classes: scratches and cracks are both thin dark/bright lines (a crack
  is jagged and may branch, a scratch is smooth), pits and stains are both blobs (a pit is
  small, compact and strong; a stain is large, diffuse and faint, and the size ranges overlap).

Sample `i` of seed `s` depends only on `(s, i)` and the image size, so a larger `count` extends
a dataset without changing its first images.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from autonad_edge.data.cache import image_size_hw as _size_hw
from autonad_edge.io import DIR_MODE

SYNTHETIC_CLASSES: tuple[str, ...] = ("background", "scratch", "pit", "crack", "stain")
SCRATCH, PIT, CRACK, STAIN = 1, 2, 3, 4
TEXTURES: tuple[str, ...] = ("brushed", "grain", "tiles", "mesh")


# --------------------------------------------------------------------------------------------
# Textures: float32 [H, W] around 0.5.


def _value_noise(rng: np.random.Generator, height: int, width: int, cells: float) -> np.ndarray:
    """Smooth noise in [0, 1]: a random lattice with about `cells` cells across the short side,
    upsampled with smoothstep-weighted bilinear interpolation (cheap Perlin-like noise)."""
    scale = max(cells, 1.0) / min(height, width)
    grid_h, grid_w = int(math.ceil(height * scale)) + 2, int(math.ceil(width * scale)) + 2
    lattice = rng.random((grid_h, grid_w), dtype=np.float32)
    ys = np.arange(height, dtype=np.float32) * scale + rng.random(dtype=np.float32)
    xs = np.arange(width, dtype=np.float32) * scale + rng.random(dtype=np.float32)
    y0, x0 = ys.astype(np.int64), xs.astype(np.int64)
    wy, wx = ys - y0, xs - x0
    wy, wx = wy * wy * (3 - 2 * wy), wx * wx * (3 - 2 * wx)
    # Separable: interpolate the (small) lattice along x first, then the rows along y.
    rows = lattice[:, x0] * (1 - wx) + lattice[:, x0 + 1] * wx
    return rows[y0] * (1 - wy[:, None]) + rows[y0 + 1] * wy[:, None]


def _fractal_noise(
    rng: np.random.Generator, height: int, width: int, cells: float, octaves: int
) -> np.ndarray:
    total = np.zeros((height, width), np.float32)
    amplitude, norm = 1.0, 0.0
    for octave in range(octaves):
        total += amplitude * _value_noise(rng, height, width, cells * 2**octave)
        norm += amplitude
        amplitude *= 0.5
    return total / norm


def _texture_brushed(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    # Brushing = noise smeared along one axis: a moving average along rows (or columns).
    vertical = bool(rng.random() < 0.5)
    rows, cols = (width, height) if vertical else (height, width)
    streak = max(3, int(cols * rng.uniform(0.05, 0.3)))
    noise = rng.standard_normal((rows, cols + streak), dtype=np.float32)
    csum = np.cumsum(noise, axis=1)
    smeared = (csum[:, streak:] - csum[:, :-streak]) / math.sqrt(streak)
    smeared += rng.standard_normal((rows, 1), dtype=np.float32) * 0.6  # per-stroke brightness
    texture = rng.uniform(0.45, 0.7) + rng.uniform(0.02, 0.05) * smeared
    return (texture.T if vertical else texture).astype(np.float32)


def _texture_grain(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    # Cast / sintered surface: fractal noise plus fine speckle.
    base = _fractal_noise(rng, height, width, rng.uniform(2, 6), octaves=4)
    speckle = rng.standard_normal((height, width), dtype=np.float32)
    return (
        rng.uniform(0.35, 0.65) + rng.uniform(0.08, 0.2) * (base - 0.5)
        + rng.uniform(0.01, 0.04) * speckle
    ).astype(np.float32)


def _texture_tiles(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    # Ceramic tiles: per-tile brightness, dark grout lines (thin straight lines that compete
    # with scratches), faint glaze noise.
    tile = max(6.0, min(height, width) * rng.uniform(0.12, 0.4))
    offset_y, offset_x = rng.uniform(0, tile, size=2)
    ys = (np.arange(height, dtype=np.float32) + offset_y) / tile
    xs = (np.arange(width, dtype=np.float32) + offset_x) / tile
    tile_y, tile_x = ys.astype(np.int64), xs.astype(np.int64)
    shades = rng.uniform(-0.06, 0.06, size=(tile_y.max() + 1, tile_x.max() + 1)).astype(np.float32)
    texture = rng.uniform(0.45, 0.7) + shades[tile_y][:, tile_x]
    grout_half = rng.uniform(0.5, 1.5) / tile  # in tile units
    near_y = np.abs(ys - np.round(ys)) < grout_half
    near_x = np.abs(xs - np.round(xs)) < grout_half
    grout = near_y[:, None] | near_x[None, :]
    texture = np.where(grout, texture - rng.uniform(0.1, 0.25), texture)
    glaze = _value_noise(rng, height, width, rng.uniform(6, 14))
    return (texture + 0.05 * (glaze - 0.5)).astype(np.float32)


def _texture_mesh(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    # Woven / knurled periodic pattern, slightly rotated.
    period = max(3.0, min(height, width) * rng.uniform(0.03, 0.1))
    angle = rng.uniform(-0.3, 0.3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    u = (xx * math.cos(angle) + yy * math.sin(angle)) * (2 * math.pi / period)
    v = (-xx * math.sin(angle) + yy * math.cos(angle)) * (2 * math.pi / period)
    weave = np.sin(u) * np.sin(v)
    noise = rng.standard_normal((height, width), dtype=np.float32)
    return (
        rng.uniform(0.4, 0.65) + rng.uniform(0.03, 0.08) * weave + 0.02 * noise
    ).astype(np.float32)


_TEXTURE_FUNCS = (_texture_brushed, _texture_grain, _texture_tiles, _texture_mesh)


def _illumination(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A linear gradient in a random direction times an off-centre vignette."""
    ys = np.linspace(-1, 1, height, dtype=np.float32)[:, None]
    xs = np.linspace(-1, 1, width, dtype=np.float32)[None, :]
    direction = rng.uniform(0, 2 * math.pi)
    gradient = 1 + rng.uniform(0, 0.35) * (xs * math.cos(direction) + ys * math.sin(direction))
    cy, cx = rng.uniform(-0.6, 0.6, size=2)
    vignette = 1 - rng.uniform(0, 0.3) * ((ys - cy) ** 2 + (xs - cx) ** 2) / 2
    return (gradient * vignette).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Defects. Each draws into (image, coverage) in place: `coverage` is the defect's soft alpha
# for this draw, and the caller turns coverage >= 0.5 into the class label.


def _polyline_coverage(
    paths: list[np.ndarray], widths: list[float], height: int, width: int
) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Anti-aliased coverage of thick polylines, computed segment by segment in small windows
    (so cost scales with the line length, not the image area)."""
    points = np.concatenate(paths)
    pad = max(widths) / 2 + 2
    y0 = int(max(0, math.floor(points[:, 0].min() - pad)))
    y1 = int(min(height, math.ceil(points[:, 0].max() + pad) + 1))
    x0 = int(max(0, math.floor(points[:, 1].min() - pad)))
    x1 = int(min(width, math.ceil(points[:, 1].max() + pad) + 1))
    if y1 <= y0 or x1 <= x0:
        return None
    coverage = np.zeros((y1 - y0, x1 - x0), np.float32)
    for path, line_width in zip(paths, widths):
        half = line_width / 2
        for a, b in zip(path[:-1], path[1:]):
            sy0 = int(max(y0, math.floor(min(a[0], b[0]) - half - 1)))
            sy1 = int(min(y1, math.ceil(max(a[0], b[0]) + half + 1) + 1))
            sx0 = int(max(x0, math.floor(min(a[1], b[1]) - half - 1)))
            sx1 = int(min(x1, math.ceil(max(a[1], b[1]) + half + 1) + 1))
            if sy1 <= sy0 or sx1 <= sx0:
                continue
            py = np.arange(sy0, sy1, dtype=np.float32)[:, None]
            px = np.arange(sx0, sx1, dtype=np.float32)[None, :]
            dy, dx = b[0] - a[0], b[1] - a[1]
            length2 = max(dy * dy + dx * dx, 1e-6)
            t = np.clip(((py - a[0]) * dy + (px - a[1]) * dx) / length2, 0, 1)
            dist = np.hypot(py - (a[0] + t * dy), px - (a[1] + t * dx))
            seg = np.clip(half + 0.5 - dist, 0, 1)
            window = coverage[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0]
            np.maximum(window, seg, out=window)
    return (slice(y0, y1), slice(x0, x1)), coverage


def _draw_scratch(rng: np.random.Generator, image: np.ndarray) -> tuple | None:
    height, width = image.shape
    size = min(height, width)
    length = size * rng.uniform(0.2, 0.85)
    n = 12
    angle = rng.uniform(0, 2 * math.pi)
    curvature = rng.uniform(-1.5, 1.5) / length  # at most ~90 degrees of bend overall
    start = rng.uniform([0.1 * height, 0.1 * width], [0.9 * height, 0.9 * width])
    step = length / (n - 1)
    path = [start]
    for _ in range(n - 1):
        angle += curvature * step + rng.normal(0, 0.02)
        path.append(path[-1] + step * np.array([math.sin(angle), math.cos(angle)]))
    line_width = max(1.5, size / 128 * rng.uniform(1.0, 3.5))
    drawn = _polyline_coverage([np.array(path)], [line_width], height, width)
    if drawn is None:
        return None
    region, coverage = drawn
    sign = 1.0 if rng.random() < 0.55 else -1.0  # scratches catch the light more often than not
    image[region] += coverage * sign * rng.uniform(0.08, 0.35)
    return region, coverage


def _random_walk(
    rng: np.random.Generator, start: np.ndarray, angle: float, steps: int, step: float
) -> np.ndarray:
    turns = rng.normal(0, 0.4, size=steps)  # jagged, unlike the smooth scratch
    angles = angle + np.cumsum(turns) * 0.6
    moves = step * np.stack([np.sin(angles), np.cos(angles)], axis=1)
    return np.concatenate([start[None], start + np.cumsum(moves, axis=0)])


def _draw_crack(rng: np.random.Generator, image: np.ndarray) -> tuple | None:
    height, width = image.shape
    size = min(height, width)
    length = size * rng.uniform(0.15, 0.65)
    steps = int(rng.integers(12, 30))
    start = rng.uniform([0.15 * height, 0.15 * width], [0.85 * height, 0.85 * width])
    main = _random_walk(rng, start, rng.uniform(0, 2 * math.pi), steps, length / steps)
    line_width = max(1.5, size / 128 * rng.uniform(1.2, 3.0))
    paths, widths = [main], [line_width]
    for _ in range(int(rng.integers(0, 3))):
        origin = main[int(rng.integers(1, len(main)))]
        branch_steps = max(3, int(steps * rng.uniform(0.2, 0.5)))
        branch_angle = rng.uniform(0, 2 * math.pi)
        paths.append(_random_walk(rng, origin, branch_angle, branch_steps, length / steps))
        widths.append(max(1.5, line_width * 0.7))
    drawn = _polyline_coverage(paths, widths, height, width)
    if drawn is None:
        return None
    region, coverage = drawn
    image[region] -= coverage * rng.uniform(0.12, 0.45)  # cracks are dark: open gaps
    return region, coverage


def _blob_coverage(
    rng: np.random.Generator,
    height: int,
    width: int,
    radius_range: tuple[float, float],
    aspect_range: tuple[float, float],
    wobble: float,
    edge_softness: float,
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
    """A rotated ellipse with a wobbly outline. Returns region, coverage, normalised radius."""
    size = min(height, width)
    radius = max(1.5, size * rng.uniform(*radius_range))
    aspect = rng.uniform(*aspect_range)
    theta = rng.uniform(0, math.pi)
    cy, cx = rng.uniform([0.1 * height, 0.1 * width], [0.9 * height, 0.9 * width])
    reach = radius * (1 + wobble) + edge_softness + 2
    y0, y1 = int(max(0, cy - reach)), int(min(height, cy + reach + 1))
    x0, x1 = int(max(0, cx - reach)), int(min(width, cx + reach + 1))
    if y1 <= y0 or x1 <= x0:
        return None
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
    u = dx * math.cos(theta) + dy * math.sin(theta)
    v = (-dx * math.sin(theta) + dy * math.cos(theta)) / aspect
    rho = np.hypot(u, v) / radius
    if wobble > 0:
        # Low-frequency smooth noise displaces the outline: irregular, non-convex shapes.
        field = _value_noise(rng, y1 - y0, x1 - x0, cells=3.0)
        rho = rho + wobble * 2 * (field - 0.5)
    # Coverage ramps over `edge_softness` pixels around the outline (rho == 1).
    coverage = np.clip((1 - rho) * radius / max(edge_softness, 1.0) + 0.5, 0, 1)
    return (slice(y0, y1), slice(x0, x1)), coverage.astype(np.float32), rho


def _draw_pit(rng: np.random.Generator, image: np.ndarray) -> tuple | None:
    height, width = image.shape
    drawn = _blob_coverage(rng, height, width, (0.012, 0.07), (0.55, 1.0), 0.12, 1.0)
    if drawn is None:
        return None
    region, coverage, rho = drawn
    depth = np.clip(1 - rho**2, 0, 1)  # darkest in the middle, like a crater
    sign = -1.0 if rng.random() < 0.8 else 1.0
    image[region] += sign * rng.uniform(0.15, 0.5) * np.maximum(depth, 0.35) * coverage
    return region, coverage


def _draw_stain(rng: np.random.Generator, image: np.ndarray) -> tuple | None:
    height, width = image.shape
    size = min(height, width)
    softness = max(1.0, size * 0.02)
    drawn = _blob_coverage(rng, height, width, (0.05, 0.3), (0.4, 1.0), 0.35, softness)
    if drawn is None:
        return None
    region, coverage, _ = drawn
    mottle = _value_noise(rng, *coverage.shape, cells=rng.uniform(2, 6))
    sign = -1.0 if rng.random() < 0.75 else 1.0
    strength = rng.uniform(0.04, 0.18) * (0.6 + 0.8 * mottle)  # faint, uneven discolouration
    image[region] += sign * strength * coverage
    return region, coverage


_DEFECT_FUNCS = {SCRATCH: _draw_scratch, PIT: _draw_pit, CRACK: _draw_crack, STAIN: _draw_stain}
# How many instances a defect of each class comes in (pits cluster, stains rarely repeat).
_INSTANCES = {SCRATCH: (1, 2), PIT: (1, 4), CRACK: (1, 1), STAIN: (1, 1)}


def synthetic_sample(
    index: int, image_size: int | tuple[int, int] = 320, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image and mask: uint8 [H, W, 3] and uint8 [H, W] class indices."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed} index={index}")
    height, width = _size_hw(image_size)
    rng = np.random.default_rng([seed, index])
    texture = _TEXTURE_FUNCS[int(rng.integers(len(_TEXTURE_FUNCS)))](rng, height, width)
    image = texture.copy()
    mask = np.zeros((height, width), np.uint8)

    primary = int(rng.integers(1, len(SYNTHETIC_CLASSES)))
    # Extra defects of other (random) classes first, so the primary one is drawn on top.
    extra_count = int(rng.choice(3, p=[0.6, 0.3, 0.1]))
    extras = [int(rng.integers(1, len(SYNTHETIC_CLASSES))) for _ in range(extra_count)]
    low, high = _INSTANCES[primary]
    plan = extras + [primary] * int(rng.integers(low, high + 1))
    for cls in plan:
        drawn = _DEFECT_FUNCS[cls](rng, image)
        if drawn is not None:
            region, coverage = drawn
            mask[region][coverage >= 0.5] = cls

    image *= _illumination(rng, height, width)
    sensor_noise = rng.uniform(0.005, 0.02)
    image += rng.standard_normal((height, width), dtype=np.float32) * np.float32(sensor_noise)
    np.clip(image * 255 + 0.5, 0, 255, out=image)
    tint = 1 + rng.normal(0, 0.02, size=3).astype(np.float32)  # slightly warm/cool greys
    rgb = np.minimum(image[:, :, None] * tint, 255).astype(np.uint8)
    return rgb, mask


def generate_synthetic(
    count: int, image_size: int | tuple[int, int] = 320, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """`count` synthetic samples: images uint8 [N, H, W, 3], masks uint8 [N, H, W]."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    height, width = _size_hw(image_size)
    images = np.empty((count, height, width, 3), np.uint8)
    masks = np.empty((count, height, width), np.uint8)
    for index in range(count):
        images[index], masks[index] = synthetic_sample(index, (height, width), seed)
    return images, masks


def synthetic_ids(count: int) -> list[str]:
    """Stable sample ids, `synth_00000` ..., shared by the in-memory and on-disk forms."""
    return [f"synth_{index:05d}" for index in range(count)]


def write_synthetic_voc(
    out: str | Path,
    count: int = 240,
    image_size: int | tuple[int, int] = 320,
    seed: int = 0,
    ratios: Sequence[float] = (0.7, 0.15, 0.15),
) -> dict[str, list[str]]:
    """Generate a synthetic dataset and write it in VOC layout (JPEG images, palette PNG masks,
    classes.txt, ImageSets train/val/test stratified by dominant class, and synthetic.json with
    the generation parameters). Returns the splits. Needs PIL."""
    from autonad_edge.data.cache import label_histogram
    from autonad_edge.data.splits import dominant_class, stratified_split

    out = Path(out).resolve()  # "." has no name to stage beside
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        # Never into a user's dataset: its classes.txt and split lists would be replaced and
        # the generated images mixed into its own.
        raise ValueError(f"{out}: exists and is not an empty directory; write the synthetic set to a new one")
    above = next((folder for folder in out.parents if folder.exists()), None)
    if above is not None and not above.is_dir():
        raise ValueError(f"{out}: {above} is a file, not a folder")
    height, width = _size_hw(image_size)
    images, masks = generate_synthetic(count, (height, width), seed)
    ids = synthetic_ids(count)
    strata = [dominant_class(label_histogram(mask)[: len(SYNTHETIC_CLASSES)]) for mask in masks]
    splits = stratified_split(ids, strata, ratios, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written beside it, then renamed into place: a stopped run leaves no half-written set.
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        os.chmod(staging, DIR_MODE)
        _write_set(staging, ids, images, masks, splits, count, (height, width), seed, ratios)
        os.replace(staging, out)  # onto an empty directory too
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return splits


def _write_set(root: Path, ids, images, masks, splits, count, size_hw, seed, ratios) -> None:
    from autonad_edge.data.voc import write_voc

    height, width = size_hw
    write_voc(root, ids, images, masks, SYNTHETIC_CLASSES, splits)
    params = {
        "generator": "autonad_edge.data.synthetic",
        "count": count,
        "image_size": [height, width],
        "seed": seed,
        "ratios": [float(r) for r in ratios],
    }
    (root / "synthetic.json").write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
