"""`load_dataset`: one entry point for magnetic-tile, VOC-layout and synthetic data (host side).

    data = load_dataset("/data/magnetic-tile", fmt="mt", image_size=320, seed=0)
    data.train[0]                  # (float32 [3,H,W] normalised, int64 [H,W] labels)
    crops = data.train_crops(seed=1, crop=CropConfig((320, 320), 0.5)); crops.set_epoch(epoch)
    save_manifest(data.manifest(), run_dir / "split.json")   # reproduce the split later with
    load_dataset(..., manifest=load_manifest(run_dir / "split.json"))

Everything is decoded once into an in-memory uint8 cache (see `cache.py`); the torch Datasets
only slice it, normalise and (for training) augment.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from autonad_edge.data.cache import (
    IGNORE_INDEX,
    ImageCache,
    build_cache,
    image_size_hw,
    label_histogram,
)
from autonad_edge.data.crops import CropConfig, CropDataset
from autonad_edge.data.errors import DatasetError
from autonad_edge.data.magnetic_tile import is_mt_root, load_mt
from autonad_edge.data.splits import (
    DEFAULT_RATIOS,
    SPLIT_NAMES,
    check_manifest,
    check_ratios,
    make_manifest,
    save_manifest,
    stratified_split,
)
from autonad_edge.data.synthetic import SYNTHETIC_CLASSES, generate_synthetic, synthetic_ids
from autonad_edge.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentationConfig,
    Normalizer,
    pixels_to_float,
    to_mask_tensor,
)
from autonad_edge.data.voc import is_voc_root, load_voc, read_voc_index

FORMATS: tuple[str, ...] = ("mt", "voc", "synthetic")


def detect_format(path: str | Path) -> str:
    """'mt' when `path` has MT_<Class> folders, 'voc' when it has JPEGImages + SegmentationClass."""
    root = Path(path)
    if not root.is_dir():
        raise DatasetError("not a directory" if root.exists() else "no such directory", root)
    if is_mt_root(root):
        return "mt"
    if is_voc_root(root):
        return "voc"
    raise DatasetError(
        "cannot tell the dataset format: expected MT_<Class>/ folders (magnetic-tile) or "
        "JPEGImages/ + SegmentationClass/ (VOC layout)",
        root,
    )


class SegmentationDataset(Dataset):
    """One split: item `i` is (image float32 [3,H,W] normalised, mask int64 [H,W])."""

    def __init__(
        self,
        cache: ImageCache,
        indices: Sequence[int],
        name: str,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        self.cache = cache
        self.indices = np.asarray(indices, dtype=np.int64)
        self.name = name
        self.mean, self.std = mean, std
        self.normalizer = Normalizer(mean, std)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def ids(self) -> list[str]:
        return [self.cache.ids[i] for i in self.indices]

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The cached uint8 image [H,W,C] and mask [H,W] (views, do not modify)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for the {self.name} split of {len(self)}")
        row = int(self.indices[index])
        return self.cache.images[row], self.cache.masks[row]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        pixels, mask = self.raw(index)
        return self.normalizer(pixels_to_float(pixels)), to_mask_tensor(mask)


class SegmentationData:
    """A loaded dataset: class names, the three splits and how they were made."""

    ignore_index: int = IGNORE_INDEX

    def __init__(
        self,
        cache: ImageCache,
        splits: dict[str, list[str]],
        *,
        fmt: str,
        root: str | Path | None,
        seed: int,
        ratios: Sequence[float],
        split_source: str,
        image_size: tuple[int, int],
        synthetic_count: int | None = None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        keep_aspect: bool = True,
        max_side: int | None = None,
    ) -> None:
        self.cache = cache
        self.splits = {name: list(splits.get(name, [])) for name in SPLIT_NAMES}
        self.format = fmt
        self.root = None if root is None else str(root)
        self.seed = seed
        self.ratios = tuple(float(r) for r in ratios)
        self.split_source = split_source
        self.image_size = image_size
        self.synthetic_count = synthetic_count
        self.mean, self.std = mean, std
        self.keep_aspect, self.max_side = keep_aspect, max_side  # how the cache was scaled
        self._datasets = {
            name: SegmentationDataset(
                cache, [cache.index_of[i] for i in self.splits[name]], name, mean, std
            )
            for name in SPLIT_NAMES
        }

    @property
    def class_names(self) -> list[str]:
        return list(self.cache.class_names)

    @property
    def num_classes(self) -> int:
        return self.cache.num_classes

    @property
    def train(self) -> SegmentationDataset:
        return self._datasets["train"]

    @property
    def val(self) -> SegmentationDataset:
        return self._datasets["val"]

    @property
    def test(self) -> SegmentationDataset:
        return self._datasets["test"]

    def split(self, name: str) -> SegmentationDataset:
        if name not in self._datasets:
            raise KeyError(f"unknown split {name!r}; splits are {', '.join(SPLIT_NAMES)}")
        return self._datasets[name]

    def train_augmented(self, seed: int, config: AugmentationConfig | None = None) -> CropDataset:
        """The train split with the paper's augmentation and no defect-centring: crops of
        `image_size`, i.e. the whole image where images have that size; deterministic in
        (seed, epoch)."""
        return self.train_crops(seed, CropConfig(self.image_size, 0.0), config or AugmentationConfig())

    def train_crops(
        self, seed: int, crop: CropConfig, augmentation: AugmentationConfig | None = AugmentationConfig()
    ) -> CropDataset:
        """The train split as defect-aware crops (see `crops.py`), deterministic in (seed, epoch);
        `augmentation=None` cuts plain crops."""
        return CropDataset(self.train, self.num_classes, crop, seed, augmentation, self.ignore_index)

    def manifest(self) -> dict[str, Any]:
        """The JSON-able split manifest (pass it back to `load_dataset` to reuse the split)."""
        return make_manifest(
            fmt=self.format,
            root=self.root,
            seed=self.seed,
            ratios=self.ratios,
            splits=self.splits,
            class_names=self.class_names,
            image_size=self.image_size,
            split_source=self.split_source,
            synthetic_count=self.synthetic_count,
        )

    def class_frequencies(self, split: str = "train") -> np.ndarray:
        """float64 [num_classes]: each class's share of the split's labelled pixels (at native
        resolution; all zeros for an empty split)."""
        rows = self.split(split).indices
        counts = self.cache.class_pixel_counts()[rows, : self.num_classes].sum(axis=0).astype(np.float64)
        total = counts.sum()
        return counts / total if total > 0 else counts

    def save_manifest(self, path: str | Path) -> Path:
        return save_manifest(self.manifest(), path)

    def classes_missing_from(self, split: str) -> list[str]:
        """The defect classes train holds and `split` has no pixel of. Val without a class can
        neither calibrate its threshold nor score it (calibration leaves it alone)."""
        pixels = self.cache.class_pixel_counts()[:, : self.num_classes]
        in_train = pixels[self._datasets["train"].indices].sum(axis=0) > 0
        in_split = pixels[self._datasets[split].indices].sum(axis=0) > 0
        return [self.class_names[c] for c in range(1, self.num_classes) if in_train[c] and not in_split[c]]

    def describe(self) -> dict[str, Any]:
        """Classes, counts per split and class, native image sizes and pixel frequencies.

        images_by_class: each image once, under its class (MT: folder; else dominant defect,
        "background" if it has none). images_containing: images with >= 1 pixel of the class.
        pixel_frequency: share of labelled (non-ignored) pixels per class, at native resolution.
        loaded_size: the cached images' sizes (keep_aspect: the long side scaled down to
        max_side, None = native; else squashed to image_size).
        """
        cache, names = self.cache, self.class_names
        pixels = cache.class_pixel_counts()  # [N, C + 1], last = ignored
        splits: dict[str, Any] = {}
        for name in SPLIT_NAMES:
            rows = self._datasets[name].indices
            strata = np.bincount(cache.strata[rows], minlength=self.num_classes)
            containing = (pixels[rows, : self.num_classes] > 0).sum(axis=0)
            splits[name] = {
                "images": int(len(rows)),
                "images_by_class": {n: int(c) for n, c in zip(names, strata)},
                "images_containing": {n: int(c) for n, c in zip(names, containing)},
            }
        totals = pixels.sum(axis=0)
        labelled = max(int(totals[:-1].sum()), 1)
        heights, widths = cache.native_sizes[:, 0], cache.native_sizes[:, 1]
        loaded = np.array([image.shape[:2] for image in cache.images], dtype=np.int64)
        return {
            "format": self.format,
            "root": self.root,
            "num_classes": self.num_classes,
            "class_names": names,
            "ignore_index": self.ignore_index,
            "image_size": list(self.image_size),
            "keep_aspect": self.keep_aspect,
            "max_side": self.max_side,
            "num_images": len(cache),
            "seed": self.seed,
            "ratios": list(self.ratios),
            "split_source": self.split_source,
            "splits": splits,
            "native_size": {
                "height": {"min": int(heights.min()), "max": int(heights.max())},
                "width": {"min": int(widths.min()), "max": int(widths.max())},
            },
            "loaded_size": {
                "height": {"min": int(loaded[:, 0].min()), "max": int(loaded[:, 0].max())},
                "width": {"min": int(loaded[:, 1].min()), "max": int(loaded[:, 1].max())},
            },
            "pixel_frequency": {n: float(c) / labelled for n, c in zip(names, totals[:-1])},
            "ignored_pixel_fraction": float(totals[-1]) / max(int(totals.sum()), 1),
        }


def _synthetic_cache(count: int, size_hw: tuple[int, int], seed: int) -> ImageCache:
    images, masks = generate_synthetic(count, size_hw, seed)
    return build_cache(
        ids=synthetic_ids(count),
        samples=[(image, mask, size_hw, label_histogram(mask)) for image, mask in zip(images, masks)],
        class_names=list(SYNTHETIC_CLASSES),
        strata=None,
        sources=[None] * count,
    )


def _voc_splits(
    index_splits: dict[str, list[str] | None],
    cache: ImageCache,
    ratios: tuple[float, float, float],
    seed: int,
) -> tuple[dict[str, list[str]], str]:
    """Splits from the ImageSets lists; a missing val or test list is carved out of train
    (stratified), so that no figure is ever called "test" that was used to choose a model."""
    train = list(index_splits["train"] or [])
    missing = [name for name in ("val", "test") if index_splits[name] is None]
    if not missing:
        return {"train": train, "val": list(index_splits["val"]), "test": list(index_splits["test"])}, "ImageSets"
    train_r, val_r, test_r = ratios
    shares = {"train": train_r, "val": val_r if "val" in missing else 0.0, "test": test_r if "test" in missing else 0.0}
    kept = sum(shares.values())
    strata = [int(cache.strata[cache.index_of[i]]) for i in train]
    carved = stratified_split(train, strata, tuple(shares[n] / kept for n in SPLIT_NAMES), seed)
    splits = {name: carved[name] if name in missing or name == "train" else list(index_splits[name])
              for name in SPLIT_NAMES}
    return splits, f"ImageSets ({' and '.join(missing)} carved from train)"


def load_dataset(
    path: str | Path | None,
    fmt: str = "synthetic",
    image_size: int | tuple[int, int] = 320,
    seed: int = 0,
    split_ratios: Sequence[float] = DEFAULT_RATIOS,
    synthetic_count: int = 240,
    manifest: dict[str, Any] | None = None,
    keep_aspect: bool = True,
    max_side: int | None = None,
) -> SegmentationData:
    """Load a dataset into memory and split it.

    keep_aspect (the default): images keep their aspect ratio and native pixels, the long side
    scaled down to `max_side` when given; training cuts `image_size` crops and inference tiles.
    keep_aspect=False squashes every image to `image_size` (the paper's fixed-size resize).
    Synthetic images are generated at `image_size` either way.

    fmt: "mt" (magnetic-tile layout), "voc" (VOC layout), "synthetic" (generated in memory
    when `path` is None, else a VOC directory written by `autonad-edge data synth`), or
    "auto" (detect from `path`). image_size: int or (height, width). `seed` drives the split
    (and the synthetic images). With `manifest` (from `SegmentationData.manifest()`), the
    splits, seed and ratios come from it, `path` defaults to its root, and its format and
    class names must match.
    """
    fmt = fmt.lower()
    if fmt == "auto":
        if path is None:
            raise DatasetError("fmt='auto' needs a dataset path")
        fmt = detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(
            f"unknown dataset format {fmt!r}; expected one of {', '.join(FORMATS)} or auto"
        )
    size_hw = image_size_hw(image_size)
    ratios = check_ratios(split_ratios)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")

    wanted: list[str] | None = None
    split_source: str | None = None
    if manifest is not None:
        manifest = check_manifest(manifest)
        if manifest["format"] != fmt:
            raise DatasetError(f"the manifest is for format {manifest['format']!r}, not {fmt!r}")
        if path is None and manifest.get("root"):
            path = manifest["root"]
        seed = int(manifest["seed"])
        ratios = check_ratios(manifest["ratios"])
        split_source = manifest.get("split_source", "manifest")
        wanted = [i for name in SPLIT_NAMES for i in manifest["splits"][name]]

    synthetic_count_used: int | None = None
    if fmt == "synthetic" and path is None:
        count = synthetic_count
        if manifest is not None:
            count = int(manifest.get("synthetic_count") or synthetic_count)
            if list(manifest.get("image_size", size_hw)) != list(size_hw):
                raise DatasetError(
                    f"the manifest's synthetic images were {manifest['image_size'][0]}x"
                    f"{manifest['image_size'][1]}, not {size_hw[0]}x{size_hw[1]}: "
                    "synthetic images depend on their size, so the split would not be the same data"
                )
        cache = _synthetic_cache(count, size_hw, seed)
        synthetic_count_used = count
        root = None
    elif path is None:
        raise DatasetError(f"format {fmt!r} needs a dataset path")
    elif fmt == "mt":
        root = Path(path).expanduser().resolve()  # absolute, so a manifest works from any cwd
        cache = load_mt(root, None if keep_aspect else size_hw, ids=wanted, max_side=max_side)
    else:  # "voc", or "synthetic" read back from disk
        root = Path(path).expanduser().resolve()
        index = read_voc_index(root)
        if wanted is None:
            wanted = [i for name in SPLIT_NAMES for i in (index.splits[name] or [])]
        cache = load_voc(root, None if keep_aspect else size_hw, wanted, index.class_names, max_side=max_side)

    if manifest is not None:
        splits = {name: list(manifest["splits"][name]) for name in SPLIT_NAMES}
        missing = [i for name in SPLIT_NAMES for i in splits[name] if i not in cache.index_of]
        if missing:
            raise DatasetError(
                f"manifest id {missing[0]!r} not in the dataset ({len(missing)} missing)"
            )
        if list(manifest["class_names"]) != cache.class_names:
            raise DatasetError(
                f"the manifest's classes {manifest['class_names']} differ from the dataset's "
                f"{cache.class_names}"
            )
    elif fmt in ("voc", "synthetic") and root is not None:
        splits, split_source = _voc_splits(index.splits, cache, ratios, seed)
    else:
        splits = stratified_split(cache.ids, cache.strata.tolist(), ratios, seed)
        split_source = "stratified"

    return SegmentationData(
        cache,
        splits,
        fmt=fmt,
        root=root,
        seed=seed,
        ratios=ratios,
        split_source=split_source or "manifest",
        image_size=size_hw,
        synthetic_count=synthetic_count_used,
        keep_aspect=keep_aspect,
        max_side=max_side if keep_aspect else None,
    )
