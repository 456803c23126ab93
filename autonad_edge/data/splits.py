"""Deterministic, stratified train/val/test splits and the split manifest (numpy only).

How a split is made (`stratified_split`):

1. Within each stratum (the image's class: its folder for magnetic-tile, its dominant defect
   class for synthetic/VOC), the ids are sorted and then shuffled with a generator seeded by
   `(seed, stratum)`, so adding a class never reshuffles another one.
2. Each id gets the key `(rank + 0.5) / stratum_size`, its relative position in its stratum.
3. All ids are sorted by that key (ties broken by a seeded random number) and cut into
   consecutive chunks of sizes `round(N * ratio)`: train first, then val, then test.

Every stratum is therefore spread over the splits in proportion to the ratios (within one
image), while the split sizes are exact. When a ratio is > 0 and there are at least as many
images as splits, that split gets at least one image.

The manifest is a JSON-able dict that records the ids of every split, so a later run (or
another machine) can reuse a split exactly with `load_dataset(..., manifest=...)`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autonad_edge.data.errors import DatasetError
from autonad_edge.io import atomic_write_json

SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")
DEFAULT_RATIOS: tuple[float, float, float] = (0.7, 0.15, 0.15)
MANIFEST_VERSION = 1


def check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    """Validate (train, val, test) ratios: three numbers >= 0 summing to 1, train > 0."""
    values = tuple(float(r) for r in ratios)
    if len(values) != 3 or any(r < 0 for r in values) or values[0] <= 0:
        raise ValueError(f"split ratios must be (train > 0, val >= 0, test >= 0), got {ratios}")
    if abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"split ratios must sum to 1, got {ratios} (sum {sum(values):g})")
    return values  # type: ignore[return-value]


def split_sizes(total: int, ratios: Sequence[float]) -> tuple[int, int, int]:
    """Exact split sizes for `total` items; every split with ratio > 0 gets >= 1 if possible."""
    train_r, val_r, test_r = check_ratios(ratios)
    val = int(round(total * val_r))
    test = int(round(total * test_r))
    if total >= 3:
        val = max(val, 1) if val_r > 0 else 0
        test = max(test, 1) if test_r > 0 else 0
    val = min(val, max(total - 1, 0))
    test = min(test, max(total - 1 - val, 0))
    return total - val - test, val, test


def stratified_split(
    ids: Sequence[str],
    strata: Sequence[int],
    ratios: Sequence[float] = DEFAULT_RATIOS,
    seed: int = 0,
) -> dict[str, list[str]]:
    """Split `ids` into {"train", "val", "test"} (each sorted), stratified by `strata`."""
    if len(ids) != len(strata):
        raise ValueError(f"{len(ids)} ids but {len(strata)} strata")
    if len(set(ids)) != len(ids):
        raise ValueError("ids must be unique")
    sizes = split_sizes(len(ids), ratios)
    keyed: list[tuple[float, float, str]] = []
    by_stratum: dict[int, list[str]] = {}
    for sample_id, stratum in zip(ids, strata):
        by_stratum.setdefault(int(stratum), []).append(sample_id)
    for stratum, members in sorted(by_stratum.items()):
        rng = np.random.default_rng([seed, stratum + 1])
        order = rng.permutation(len(members))
        ties = rng.random(len(members))
        ranked = sorted(members)
        for rank, position in enumerate(order):
            keyed.append(((rank + 0.5) / len(members), float(ties[rank]), ranked[position]))
    keyed.sort()
    ordered = [sample_id for _, _, sample_id in keyed]
    train_n, val_n, _ = sizes
    return {
        "train": sorted(ordered[:train_n]),
        "val": sorted(ordered[train_n : train_n + val_n]),
        "test": sorted(ordered[train_n + val_n :]),
    }


def dominant_class(pixel_counts: np.ndarray) -> int:
    """The defect class (>= 1) with the most pixels, or 0 for a defect-free image.

    `pixel_counts` holds one count per class (background first); extra trailing entries (the
    ignore count) must be stripped by the caller.
    """
    defects = np.asarray(pixel_counts)[1:]
    if defects.size == 0 or defects.max() <= 0:
        return 0
    return int(np.argmax(defects)) + 1


def make_manifest(
    *,
    fmt: str,
    root: str | Path | None,
    seed: int,
    ratios: Sequence[float],
    splits: dict[str, list[str]],
    class_names: Sequence[str],
    image_size: tuple[int, int],
    split_source: str,
    synthetic_count: int | None = None,
) -> dict[str, Any]:
    """The JSON-able record of a split (see the module docstring)."""
    return {
        "version": MANIFEST_VERSION,
        "format": fmt,
        "root": None if root is None else str(root),
        "seed": int(seed),
        "ratios": [float(r) for r in ratios],
        "split_source": split_source,
        "image_size": [int(image_size[0]), int(image_size[1])],
        "class_names": list(class_names),
        "synthetic_count": synthetic_count,
        "splits": {name: list(splits.get(name, [])) for name in SPLIT_NAMES},
    }


def check_manifest(manifest: Any, origin: str = "manifest") -> dict[str, Any]:
    """Validate the shape of a manifest (as read back from JSON); raise DatasetError if bad."""
    if not isinstance(manifest, dict):
        raise DatasetError(f"expected a JSON object, got {type(manifest).__name__}", origin)
    if manifest.get("version") != MANIFEST_VERSION:
        raise DatasetError(
            f"unsupported manifest version {manifest.get('version')!r} "
            f"(this build reads version {MANIFEST_VERSION})",
            origin,
        )
    for key in ("format", "seed", "ratios", "splits", "class_names"):
        if key not in manifest:
            raise DatasetError(f"missing key {key!r}", origin)
    splits = manifest["splits"]
    if not isinstance(splits, dict) or any(
        not isinstance(splits.get(name), list) for name in SPLIT_NAMES
    ):
        raise DatasetError("'splits' must hold 'train', 'val' and 'test' id lists", origin)
    # A hand-edited or damaged manifest: the types a load reads, named here in one line.
    if not isinstance(manifest["format"], str):
        raise DatasetError("'format' must be a string", origin)
    if isinstance(manifest["seed"], bool) or not isinstance(manifest["seed"], int) or manifest["seed"] < 0:
        raise DatasetError(f"'seed' must be an integer >= 0, got {manifest['seed']!r}", origin)
    ratios = manifest["ratios"]
    if not isinstance(ratios, list) or not all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in ratios):
        raise DatasetError(f"'ratios' must be a list of numbers (train, val, test), got {ratios!r}", origin)
    if not isinstance(manifest["class_names"], list) or not all(isinstance(n, str) for n in manifest["class_names"]):
        raise DatasetError("'class_names' must be a list of names", origin)
    if manifest.get("root") is not None and not isinstance(manifest["root"], str):
        raise DatasetError(f"'root' must be a path (a string), got {manifest['root']!r}", origin)
    count = manifest.get("synthetic_count")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise DatasetError(f"'synthetic_count' must be a positive integer, got {count!r}", origin)
    seen: dict[str, str] = {}
    for name in SPLIT_NAMES:
        for sample_id in splits[name]:
            if not isinstance(sample_id, str):
                raise DatasetError(f"'splits.{name}' holds {sample_id!r}: ids are strings", origin)
            if sample_id in seen:
                raise DatasetError(
                    f"id {sample_id!r} is in both {seen[sample_id]} and {name}", origin
                )
            seen[sample_id] = name
    if not splits["train"]:
        raise DatasetError("the train split is empty", origin)
    return manifest


def save_manifest(manifest: dict[str, Any], path: str | Path) -> Path:
    """Write a manifest as pretty JSON, atomically (a run killed mid-write must not leave a torn
    split for its rerun to trip on); returns the path."""
    path = Path(path)
    atomic_write_json(path, manifest)
    return path


def load_manifest(path: str | Path) -> dict[str, Any]:
    """Read and validate a manifest written by `save_manifest`."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError("no such manifest file", path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"unreadable manifest ({exc})", path) from None
    return check_manifest(manifest, str(path))
