"""Datasets for defect segmentation: magnetic-tile, VOC layout and the embedded synthetic set.

    from autonad_edge.data import DatasetError, load_dataset, SegmentationData

Attributes are imported lazily (PEP 562), so `autonad_edge.data.synthetic`, `.splits` and
`autonad_edge.metrics` work with numpy alone; torch is imported only when a torch-side name
(`load_dataset`, `SegmentationData`, the transforms) is first used.

Modules: `synthetic` (generator), `magnetic_tile` and `voc` (readers/writer), `files` (which
files are images, and which one an id's), `labels` (masks must hold class indices), `cache` (the
decode-once in-memory store and image opening), `splits` (stratified splits + manifest), `transforms`
(normalisation + augmentation), `dataset` (torch Datasets and `load_dataset`), `inspect`
(the `data inspect` report).
"""

from __future__ import annotations

import importlib
from typing import Any

from autonad_edge.data.errors import DatasetError

_LAZY: dict[str, str] = {
    "load_dataset": "dataset",
    "detect_format": "dataset",
    "SegmentationData": "dataset",
    "SegmentationDataset": "dataset",
    "CropDataset": "crops",
    "CropConfig": "crops",
    "FORMATS": "dataset",
    "AugmentationConfig": "transforms",
    "IMAGENET_MEAN": "transforms",
    "IMAGENET_STD": "transforms",
    "IGNORE_INDEX": "cache",
    "ImageCache": "cache",
    "SYNTHETIC_CLASSES": "synthetic",
    "generate_synthetic": "synthetic",
    "synthetic_sample": "synthetic",
    "write_synthetic_voc": "synthetic",
    "MT_CLASSES": "magnetic_tile",
    "load_mt": "magnetic_tile",
    "load_voc": "voc",
    "read_voc_index": "voc",
    "write_voc": "voc",
    "DEFAULT_RATIOS": "splits",
    "stratified_split": "splits",
    "save_manifest": "splits",
    "load_manifest": "splits",
    "format_description": "inspect",
}

__all__ = ["DatasetError", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
