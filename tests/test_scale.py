"""The training scale read from the masks (`data.scale`) and the pipeline that applies it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from autonad_edge.data.scale import region_widths, training_scale
from autonad_edge.data.voc import write_voc


class Split:
    """The part of a split `training_scale` reads: ``len`` and ``raw(i)``."""

    def __init__(self, masks):
        self.masks = masks

    def __len__(self):
        return len(self.masks)

    def raw(self, i):
        return None, self.masks[i]


def bars(height: int, width: int, *bars_) -> np.ndarray:
    """A mask with horizontal bars (label, top row, thickness) across most of the width."""
    mask = np.zeros((height, width), np.uint8)
    for label, top, thickness in bars_:
        mask[top : top + thickness, 5 : width - 5] = label
    return mask


def test_region_widths_are_the_pixel_widths_of_lines_and_bars():
    mask = bars(40, 60, (1, 5, 1), (1, 12, 3), (2, 20, 7))
    mask[30:34, 10:14] = 1  # a 4x4 square: a 4-wide region measures 3 (an even width, rounded down)
    assert sorted(region_widths(mask, 1).tolist()) == [1.0, 3.0, 3.0]
    assert region_widths(mask, 2).tolist() == [7.0]
    assert region_widths(mask, 3).size == 0
    diagonal = np.eye(20, dtype=np.uint8)  # 8-connected: one region, one pixel wide
    assert region_widths(diagonal, 1).tolist() == [1.0]


def test_thick_defects_scale_down_until_the_thinnest_class_keeps_its_width():
    # Class 1: bars 9 px wide; class 2: bars 15 px wide; long side 600.
    masks = [bars(300, 600, (1, 20, 9), (2, 100, 15)) for _ in range(3)]
    scale = training_scale(Split(masks), 3, min_width=3.0, floor=64, class_names=["bg", "dent", "rust"])
    assert scale.median_widths == {"dent": 9.0, "rust": 15.0} and scale.thinnest == "dent"
    assert scale.factor == pytest.approx(3.0 / 9.0) and scale.max_side == 200
    assert scale.median_long_side == 600
    assert "long side 200 px" in scale.summary() and "dent" in scale.summary()


def test_thin_cracks_keep_the_native_scale_and_the_crop_bounds_the_downscale():
    cracks = [bars(300, 600, (1, 20, 1), (2, 100, 25)) for _ in range(2)]
    scale = training_scale(Split(cracks), 3, min_width=3.0, floor=64)
    assert scale.max_side is None and scale.factor == 1.0 and scale.thinnest == "class1"
    thick = [bars(300, 600, (1, 20, 60)) for _ in range(2)]
    bounded = training_scale(Split(thick), 2, min_width=3.0, floor=256)  # 600 * 3/60 = 30 < 256
    assert bounded.max_side == 256 and bounded.factor == pytest.approx(256 / 600)
    small = training_scale(Split([bars(100, 120, (1, 20, 40))]), 2, min_width=3.0, floor=128)
    assert small.max_side is None  # already smaller than a crop


def test_ignored_pixels_and_images_without_defects_are_not_regions():
    mask = bars(100, 200, (1, 10, 21))
    mask[50:51, :] = 255  # a 1-px ignore line must not count as a thin defect
    scale = training_scale(Split([mask, np.zeros((100, 200), np.uint8)]), 2, min_width=3.0, floor=16)
    assert scale.median_widths == {"class1": 21.0} and scale.max_side == 29  # 200 * 3/21, rounded
    empty = training_scale(Split([np.zeros((50, 50), np.uint8)]), 2, min_width=3.0, floor=16)
    assert empty.max_side is None and empty.thinnest is None and "no defect regions" in empty.summary()
    with pytest.raises(ValueError, match="min_width"):
        training_scale(Split([mask]), 2, min_width=0, floor=16)


def test_the_pipeline_trains_thick_defects_at_the_scale_the_masks_allow(tmp_path):
    """A VOC set of 320x480 images with 15-px-wide defects: the cpu preset's rule (3 px)
    scales the long side to 96 px, loads the data there and records it in the run's config;
    an explicit --max-side turns the rule off."""
    from autonad_edge.search.pipeline import PipelineConfig, SearchPipeline

    rng = np.random.default_rng(0)
    n = 8
    masks = np.stack([bars(320, 480, (1 + k % 2, 40 + 10 * k, 15)) for k in range(n)])
    images = rng.integers(0, 255, size=(n, 320, 480, 3), dtype=np.uint8)
    ids = [f"im{k}" for k in range(n)]
    root = write_voc(tmp_path / "voc", ids, images, masks, ["background", "dent", "rust"],
                     {"train": ids[:4], "val": ids[4:6], "test": ids[6:]})
    pipeline = SearchPipeline(PipelineConfig(out=str(tmp_path / "run"), data=str(root), format="voc",
                                             image_size=64, quiet=True), log=lambda msg: None)
    (tmp_path / "run").mkdir()
    data = pipeline._load_data()
    assert pipeline.cfg.max_side == 96 and pipeline.cfg.min_defect_width == 3.0
    assert max(data.train.raw(0)[1].shape) == 96 and max(data.test.raw(0)[1].shape) == 96
    assert pipeline.cfg.retrain_config("s.pt").max_side == 96
    manifest = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert sorted(manifest["splits"]["train"]) == ids[:4]
    given = SearchPipeline(PipelineConfig(out=str(tmp_path / "run2"), data=str(root), format="voc", image_size=64,
                                          max_side=400), log=lambda msg: None)
    (tmp_path / "run2").mkdir()
    assert max(given._load_data().train.raw(0)[1].shape) == 400 and given.cfg.max_side == 400
