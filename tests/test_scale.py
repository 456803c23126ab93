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
    edge = bars(40, 60, (1, 0, 3))  # the image's border is outside: as wide as inside
    assert region_widths(edge, 1).tolist() == [3.0]
    assert region_widths(np.ones((6, 8), np.uint8), 1).tolist() == [5.0]  # whole image: 6 rows, rounded down


def test_thick_defects_scale_down_until_the_thinnest_class_keeps_its_width():
    # Class 1: bars 9 px wide; class 2: bars 15 px wide; long side 600.
    masks = [bars(300, 600, (1, 20, 9), (2, 100, 15)) for _ in range(3)]
    scale = training_scale(Split(masks), 3, min_width=3.0, floor=64, class_names=["bg", "dent", "rust"])
    assert scale.median_widths == {"dent": 9.0, "rust": 15.0} and scale.thinnest == "dent"
    assert scale.max_side == 200 and scale.scaled_widths == {"dent": 3.0, "rust": 5.0}
    assert scale.median_long_side == 600
    assert "long side 200 px" in scale.summary() and "dent" in scale.summary()


def test_each_image_shrinks_by_its_own_long_side():
    """Images of 300 and 900 px, each with a 9-px line: at a long side of S the small one keeps
    9 * min(1, S/300), the large one 9 * S/900: the median of the two (their mean) is 3 px at
    S = 150 (4.5 and 1.5), not at the 200 px one factor of the median side would give."""
    masks = [bars(200, 300, (1, 20, 9)), bars(600, 900, (1, 20, 9))]
    scale = training_scale(Split(masks), 2, min_width=3.0, floor=32)
    assert scale.max_side == 150 and scale.scaled_widths == {"class1": pytest.approx(3.0)}


def test_thin_cracks_keep_the_native_scale_and_the_crop_bounds_the_downscale():
    cracks = [bars(300, 600, (1, 20, 1), (2, 100, 25)) for _ in range(2)]
    scale = training_scale(Split(cracks), 3, min_width=3.0, floor=64)
    assert scale.max_side is None and scale.thinnest == "class1" and scale.scaled_widths == scale.median_widths
    thick = [bars(300, 600, (1, 20, 59)) for _ in range(2)]
    bounded = training_scale(Split(thick), 2, min_width=3.0, floor=256)  # 600 * 3/59 = 31 < 256
    assert bounded.max_side == 256 and bounded.scaled_widths["class1"] == pytest.approx(59 * 256 / 600)
    small = training_scale(Split([bars(100, 120, (1, 20, 40))]), 2, min_width=3.0, floor=128)
    assert small.max_side is None  # already smaller than a crop


def test_ignored_pixels_and_images_without_defects_are_not_regions():
    mask = bars(100, 200, (1, 10, 21))
    mask[50:51, :] = 255  # a 1-px ignore line must not count as a thin defect
    scale = training_scale(Split([mask, np.zeros((100, 200), np.uint8)]), 2, min_width=3.0, floor=16)
    assert scale.median_widths == {"class1": 21.0} and scale.max_side == 29  # 200 * 3/21, rounded
    empty = training_scale(Split([np.zeros((50, 50), np.uint8)]), 2, min_width=3.0, floor=16)
    assert empty.max_side is None and empty.thinnest is None and "no defect regions" in empty.summary()
    assert empty.to_dict()["thinnest"] is None
    with pytest.raises(ValueError, match="min_width"):
        training_scale(Split([mask]), 2, min_width=0, floor=16)


def thick_voc(root, n: int = 8):
    """A VOC set of 320x480 images with 15-px-wide defects (two classes)."""
    rng = np.random.default_rng(0)
    masks = np.stack([bars(320, 480, (1 + k % 2, 40 + 10 * k, 15)) for k in range(n)])
    images = rng.integers(0, 255, size=(n, 320, 480, 3), dtype=np.uint8)
    ids = [f"im{k}" for k in range(n)]
    return write_voc(root, ids, images, masks, ["background", "dent", "rust"],
                     {"train": ids[:4], "val": ids[4:6], "test": ids[6:]}), ids


def load_run_data_of(config, out):
    """What `SearchPipeline.run` does before training: check the config, load and scale the
    data, record the config."""
    from autonad_edge.search.pipeline import SearchPipeline, _check_config_unchanged

    pipeline = SearchPipeline(config, log=lambda msg: None)
    out.mkdir(exist_ok=True)
    _check_config_unchanged(out, pipeline.cfg, write=False, unknown=frozenset({"max_side"}))
    data = pipeline._load_data()
    _check_config_unchanged(out, pipeline.cfg)
    return pipeline, data


def test_the_pipeline_trains_thick_defects_at_the_scale_the_masks_allow(tmp_path):
    """The cpu preset's rule (3 px) scales the long side to 96 px, loads the data there and
    records it in the run's config; a rerun, and a run started from that config, choose the
    same; an explicit --max-side turns the rule off."""
    from autonad_edge.search.pipeline import PipelineConfig, PipelineError

    root, ids = thick_voc(tmp_path / "voc")
    out = tmp_path / "run"
    config = PipelineConfig(out=str(out), data=str(root), format="voc", image_size=64, quiet=True)
    pipeline, data = load_run_data_of(config, out)
    assert pipeline.cfg.max_side == 96 and pipeline.cfg.min_defect_width == 3.0
    assert pipeline.scale.max_side == 96 and pipeline.scale.thinnest in ("dent", "rust")
    assert max(data.train.raw(0)[1].shape) == 96 and max(data.test.raw(0)[1].shape) == 96
    assert pipeline.cfg.retrain_config("s.pt").max_side == 96
    assert json.loads((out / "config.json").read_text())["max_side"] == 96
    manifest = json.loads((out / "splits.json").read_text())
    assert sorted(manifest["splits"]["train"]) == ids[:4]
    again, _ = load_run_data_of(config, out)  # a rerun: same scale, no conflict
    assert again.cfg.max_side == 96
    reloaded, _ = load_run_data_of(PipelineConfig.load(out / "config.json"), tmp_path / "from_config")
    assert reloaded.cfg.max_side == 96  # measured at the preset's cap, not at the recorded 96
    given, data = load_run_data_of(PipelineConfig(out=str(tmp_path / "run2"), data=str(root), format="voc",
                                                  image_size=64, max_side=400), tmp_path / "run2")
    assert max(data.train.raw(0)[1].shape) == 400 and given.cfg.max_side == 400 and given.scale is None
    with pytest.raises(PipelineError, match="other settings \\(max_side\\)"):
        load_run_data_of(PipelineConfig(out=str(out), data=str(root), format="voc", image_size=64,
                                        max_side=400), out)
    with pytest.raises(PipelineError, match="min-defect-width must be >= 0"):
        load_run_data_of(PipelineConfig(out=str(tmp_path / "run3"), data=str(root), format="voc",
                                        image_size=64, min_defect_width=-1.0), tmp_path / "run3")


def test_a_run_started_before_the_rule_keeps_its_scale(tmp_path):
    """A run directory whose config.json predates the rule (no min_defect_width) resumes at the
    scale it was trained at."""
    from autonad_edge.search.pipeline import PipelineConfig

    root, _ = thick_voc(tmp_path / "voc")
    out = tmp_path / "old"
    config = PipelineConfig(out=str(out), data=str(root), format="voc", image_size=64, quiet=True)
    saved = {k: v for k, v in config.resolved().to_dict().items() if k != "min_defect_width"}
    out.mkdir()
    (out / "config.json").write_text(json.dumps({**saved, "explicit": list(saved["explicit"])}))
    pipeline, data = load_run_data_of(config, out)
    assert pipeline.cfg.max_side == 1024 and pipeline.scale is None and max(data.train.raw(0)[1].shape) == 480


def test_a_checkpoint_without_its_own_scale_takes_its_run_configs():
    """A supernet checkpoint records the training scale only in its config: evaluate and
    predict read it from there (a squashing run has none)."""
    from autonad_edge.models.network import SegmentationNet
    from autonad_edge.space import SearchSpace
    from autonad_edge.training.checkpoint import checkpoint_info, subnet_payload

    space = SearchSpace.tiny()
    net = SegmentationNet.from_arch(space.largest(), space, 3)
    payload = subnet_payload(net, space, ["background", "dent", "rust"], (64, 64))
    assert checkpoint_info({**payload, "max_side": 215}, "a.pt").max_side == 215
    assert checkpoint_info({**payload, "config": {"max_side": 215}}, "b.pt").max_side == 215
    assert checkpoint_info({**payload, "config": {"max_side": 215, "keep_aspect": False}}, "c.pt").max_side is None
    assert checkpoint_info({**payload, "max_side": None, "config": {"max_side": 215}}, "d.pt").max_side is None


def strips_voc(root, n: int = 8):
    """A VOC set of 40 x 1200 line-scan strips, each with a 1-px crack along it."""
    rng = np.random.default_rng(1)
    masks = np.stack([bars(40, 1200, (1, 10 + 2 * k, 1)) for k in range(n)])
    images = rng.integers(0, 255, size=(n, 40, 1200), dtype=np.uint8)
    ids = [f"strip{k}" for k in range(n)]
    return write_voc(root, ids, images, masks, ["background", "crack"],
                     {"train": ids[:4], "val": ids[4:6], "test": ids[6:]}), ids


def test_a_load_cap_that_thins_the_defects_gives_way_to_native_size(tmp_path, monkeypatch):
    """The rule measured the masks at the preset's 1024-px cap: a 1-px crack in a 1200-px strip,
    loaded at 1024 x 34, kept its line but not its pixels, and the run trained and deployed at
    the cap while saying "3 px kept". Now the masks are measured at native size when the cap
    thinned the thinnest class and the set fits in memory; when it does not, a warning says so."""
    import autonad_edge.search.pipeline as pipeline_module
    from autonad_edge.search.pipeline import PipelineConfig, SearchPipeline

    root, _ = strips_voc(tmp_path / "voc")
    out = tmp_path / "run"
    pipeline, data = load_run_data_of(PipelineConfig(out=str(out), data=str(root), format="voc", image_size=64,
                                                     quiet=True), out)
    assert pipeline.cfg.max_side is None and pipeline.scale.max_side is None and pipeline.scale.loaded_at is None
    assert data.train.raw(0)[1].shape == (40, 1200) and data.test.raw(0)[1].shape == (40, 1200)
    assert pipeline.scale.summary() == ("native size (thinnest class crack: median region width 1.0 px, "
                                        "under the 3 px the rule keeps: not scaled down)")
    assert json.loads((out / "config.json").read_text())["max_side"] is None

    # A run directory that trained at the cap (from before this measurement) resumes at it.
    before = tmp_path / "before"
    before.mkdir()
    (before / "config.json").write_text(json.dumps({**json.loads((out / "config.json").read_text()),
                                                    "out": str(before), "max_side": 1024}))
    resumed = SearchPipeline(PipelineConfig(out=str(before), data=str(root), format="voc", image_size=64,
                                            quiet=True), log=lambda line: None)
    resumed.worked = True  # its stages.json records work
    assert resumed._load_data().train.raw(0)[1].shape == (34, 1024) and resumed.cfg.max_side == 1024

    monkeypatch.setattr(pipeline_module, "native_load_limit", lambda: 1000)  # bytes: nothing fits
    lines = []
    capped = SearchPipeline(PipelineConfig(out=str(tmp_path / "capped"), data=str(root), format="voc",
                                           image_size=64, quiet=True), log=lines.append)
    data = capped._load_data()
    assert data.train.raw(0)[1].shape == (34, 1024) and capped.cfg.max_side == 1024
    assert capped.scale.loaded_at == 1024 and "as loaded (long side at most 1024 px)" in capped.scale.summary()
    warning = next(line for line in lines if "warning" in line)
    assert "the 1024-px load cap leaves crack a median width of 1.0 px" in warning and "--max-side" in warning


def test_a_run_that_chose_its_scale_at_native_size_resumes_at_it(tmp_path):
    """5-px cracks along 6000-px strips are under a pixel at the preset's 1024 cap: the rule
    measures them at native size and chooses a long side above the cap (3 px kept: 3600). A rerun used to
    measure again at the cap, reach another side and refuse its own directory ("other
    settings (max_side)"); it now resumes at the side its run recorded."""
    from autonad_edge.search.pipeline import PipelineConfig, SearchPipeline, _check_config_unchanged

    rng = np.random.default_rng(2)
    masks = np.stack([bars(40, 6000, (1, 10 + 2 * k, 5)) for k in range(8)])
    images = rng.integers(0, 255, size=(8, 40, 6000), dtype=np.uint8)
    ids = [f"strip{k}" for k in range(8)]
    root = write_voc(tmp_path / "voc", ids, images, masks, ["background", "crack"],
                     {"train": ids[:4], "val": ids[4:6], "test": ids[6:]})
    out = tmp_path / "run"
    config = PipelineConfig(out=str(out), data=str(root), format="voc", image_size=64, quiet=True)
    first, _ = load_run_data_of(config, out)
    side = first.cfg.max_side
    assert side is not None and 1024 < side < 6000, side
    resumed = SearchPipeline(config, log=lambda line: None)
    resumed.worked = True  # its stages.json records work
    data = resumed._load_data()
    _check_config_unchanged(out, resumed.cfg, worked=True)  # no "other settings (max_side)"
    assert resumed.cfg.max_side == side and max(data.train.raw(0)[1].shape) == side
    assert resumed.scale == first.scale  # the report says what the run chose, not a re-measure


def test_a_class_val_lacks_is_named_before_the_run(tmp_path):
    """Val carved by dominant class can miss a rare class: the run says so up front (the search
    cannot score it, calibration leaves its threshold alone)."""
    from autonad_edge.search.pipeline import PipelineConfig, SearchPipeline

    rng = np.random.default_rng(0)
    masks = np.stack([bars(64, 96, (1, 10, 6)) if k != 1 else bars(64, 96, (1, 10, 6), (2, 40, 6))
                      for k in range(6)])  # rust on im1 only, a train image
    images = rng.integers(0, 255, size=(6, 64, 96, 3), dtype=np.uint8)
    ids = [f"im{k}" for k in range(6)]
    root = write_voc(tmp_path / "voc", ids, images, masks, ["background", "dent", "rust"],
                     {"train": ids[:4], "val": ids[4:5], "test": ids[5:]})
    lines = []
    pipeline = SearchPipeline(PipelineConfig(out=str(tmp_path / "run"), data=str(root), format="voc",
                                             image_size=64, quiet=True), log=lines.append)
    data = pipeline._load_data()
    assert data.classes_missing_from("val") == ["rust"] and data.classes_missing_from("train") == []
    assert any(line.startswith("[data] warning: val has no pixel of rust:") for line in lines)
