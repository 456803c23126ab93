"""Users' own labelled images: how masks, names, split lists, orientation and sizes are read
(tiny VOC and magnetic-tile sets built in tmp_path with test_data's helpers)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image, ImageFilter
from test_data import make_mt, make_voc  # the fixture builders of the data tests
from typer.testing import CliRunner

import autonad_edge
from autonad_edge.data import DatasetError, load_dataset
from autonad_edge.training.predict import read_image

from assertions import one_line

ORIENTATION = 0x0112  # the EXIF tag


def save_oriented(path: Path, displayed: np.ndarray, orientation: int) -> None:
    """Save `displayed` (what a viewer should show) as a camera does: pixels stored unturned,
    with an EXIF Orientation tag saying how to turn them. 3: turn 180; 6: turn 90 clockwise."""
    stored = {3: np.rot90(displayed, 2), 6: np.rot90(displayed, 1)}[orientation]
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(np.ascontiguousarray(stored)).save(path, exif=exif.tobytes(), quality=95)


def load_infer_module():
    """The bundle's stand-alone infer.py, imported as the device would run it."""
    path = Path(autonad_edge.__file__).parent / "deploy_template" / "infer.py"
    spec = importlib.util.spec_from_file_location("bundle_infer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _save_mask(root: Path, sample_id: str, mask: np.ndarray) -> None:
    Image.fromarray(mask.astype(np.uint8), mode="L").save(root / "SegmentationClass" / f"{sample_id}.png")


def _defect_scene(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A dark colour image with one bright defect block, and its mask (label 1)."""
    image = np.full((height, width, 3), 40, np.uint8)
    mask = np.zeros((height, width), np.uint8)
    image[4:12, 6:20] = 230
    mask[4:12, 6:20] = 1
    return image, mask


# ------------------------------------------------------------------------------------------
# Mask values must be class indices


@pytest.mark.parametrize("classes", [("background", "dent"), None])
def test_binary_0_255_masks_are_refused(tmp_path: Path, classes) -> None:
    # 255 is "ignore": defects drawn white would all be ignored (a background-only network at 100 % mIoU).
    root = make_voc(tmp_path / "voc", classes=classes)
    for k in range(12):
        mask = np.zeros((32, 40), np.uint8)
        mask[4:16, 4:20] = 255
        _save_mask(root, f"img{k:03d}", mask)
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(root, fmt="voc", image_size=16)
    one_line(excinfo, "SegmentationClass/img000.png", "every defect pixel of the set is 255 (= ignore)",
              "binary 0/255", "1..N")


def test_antialiased_masks_without_classes_file_are_refused(tmp_path: Path) -> None:
    # Without classes.txt every grey level of a blurred drawing would become a class (up to 255).
    root = make_voc(tmp_path / "voc", palette=False, classes=None)
    drawing = Image.new("L", (40, 32), 0)
    drawing.paste(255, (8, 6, 30, 24))
    _save_mask(root, "img003", np.asarray(drawing.filter(ImageFilter.GaussianBlur(2))))
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(root, fmt="voc", image_size=16)
    one_line(excinfo, "img003.png", "class indices", "anti-aliased", "classes.txt")


def test_a_genuine_set_of_20_classes_of_thin_lines_loads_without_classes_file(tmp_path: Path) -> None:
    # The refusal above must never hit real class indices: 20 classes, each a 1-px line
    # (a label that lies only on region edges, like a hairline crack).
    root = make_voc(tmp_path / "voc", palette=False, classes=None)
    mask = np.zeros((32, 40), np.uint8)
    for label in range(1, 21):
        mask[label, 2:38] = label
    _save_mask(root, "img000", mask)
    data = load_dataset(root, fmt="voc", image_size=16)
    assert data.num_classes == 21 and data.class_names[-1] == "class20"


def test_out_of_range_labels_say_masks_must_hold_class_indices(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc")  # classes.txt: 3 classes
    mask = np.zeros((32, 40), np.uint8)
    mask[5, 5] = 7
    _save_mask(root, "img005", mask)
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(root, fmt="voc", image_size=16)
    one_line(excinfo, "img005.png", "label 7 out of range", "class indices", "anti-aliased")


# ------------------------------------------------------------------------------------------
# Colour and orientation: training reads a file as predict and infer.py do


def test_mt_colour_photo_is_cached_as_predict_and_infer_py_read_it(tmp_path: Path) -> None:
    root = make_mt(tmp_path / "mt")
    path = root / "MT_Crack" / "Imgs" / "exp_0.jpg"
    colour = np.random.default_rng(3).integers(0, 256, (36, 44, 3), dtype=np.uint8)
    colour[..., 0] = 250  # clearly not grey
    Image.fromarray(colour).save(path, quality=95)
    data = load_dataset(root, fmt="mt", image_size=16)  # native pixels: no scaling
    cached = data.cache.images[data.cache.index_of["MT_Crack/exp_0"]]
    assert cached.shape == (36, 44, 3)
    np.testing.assert_array_equal(cached, np.asarray(read_image(path)))
    np.testing.assert_array_equal(cached, np.asarray(load_infer_module().load_image(path).convert("RGB")))
    grey = data.cache.images[data.cache.index_of["MT_Crack/exp_1"]]
    assert grey.shape == (36, 44, 1)  # a grey photo stays one channel
    for split in (data.train, data.val, data.test):
        for index in range(len(split)):
            assert split[index][0].shape == (3, 36, 44)


def test_exif_orientation_3_puts_the_mask_on_the_defect(tmp_path: Path) -> None:
    # Annotation tools draw on the displayed (turned) view; the pixels are stored unturned.
    root = make_voc(tmp_path / "voc")
    displayed, mask = _defect_scene(32, 40)
    save_oriented(root / "JPEGImages" / "img000.jpg", displayed, 3)
    _save_mask(root, "img000", mask)
    data = load_dataset(root, fmt="voc", image_size=16)
    row = data.cache.index_of["img000"]
    pixels, labels = data.cache.images[row], data.cache.masks[row]
    assert pixels[labels == 1].mean() > 200 and pixels[labels == 0].mean() < 80


def test_exif_orientation_6_loads_with_the_mask_of_the_displayed_view(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc")
    displayed, mask = _defect_scene(40, 32)  # portrait as shown; stored 32 high, 40 wide
    save_oriented(root / "JPEGImages" / "img000.jpg", displayed, 6)
    _save_mask(root, "img000", mask)
    data = load_dataset(root, fmt="voc", image_size=16)
    row = data.cache.index_of["img000"]
    pixels, labels = data.cache.images[row], data.cache.masks[row]
    assert pixels.shape[:2] == labels.shape == (40, 32)
    assert pixels[labels == 1].mean() > 200 and pixels[labels == 0].mean() < 80
    # A mask drawn on the stored pixels (a script that ignored the tag) is refused saying why.
    _save_mask(root, "img000", np.zeros((32, 40), np.uint8))
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(root, fmt="voc", image_size=16)
    one_line(excinfo, "img000.jpg", "image is 32x40 but its mask img000.png is 40x32", "EXIF orientation")


# ------------------------------------------------------------------------------------------
# File names and split lists


def test_voc_suffixes_in_any_case_and_tiff_are_read(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc")
    images, masks = root / "JPEGImages", root / "SegmentationClass"
    (images / "img000.jpg").rename(images / "img000.JPG")
    (images / "img001.jpg").rename(images / "img001.jpeg")
    tiff = np.asarray(Image.open(images / "img002.jpg"))
    Image.fromarray(tiff).save(images / "img002.tif")
    (images / "img002.jpg").unlink()
    (masks / "img003.png").rename(masks / "img003.PNG")
    data = load_dataset(root, fmt="voc", image_size=16)
    assert len(data.cache) == 12
    np.testing.assert_array_equal(data.cache.images[data.cache.index_of["img002"]], tiff)


def test_voc_id_with_two_images_is_refused_naming_both(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc")
    Image.open(root / "JPEGImages" / "img004.jpg").save(root / "JPEGImages" / "img004.png")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(root, fmt="voc", image_size=16)
    one_line(excinfo, "JPEGImages", "img004.jpg and img004.png", "'img004'")


def test_mt_suffixes_in_any_case_and_macos_dotfiles(tmp_path: Path) -> None:
    root = make_mt(tmp_path / "mt")
    folder = root / "MT_Crack" / "Imgs"
    (folder / "exp_0.jpg").rename(folder / "exp_0.JPG")
    (folder / "exp_1.png").rename(folder / "exp_1.PNG")
    for name in ("._exp_2.jpg", "._exp_2.png"):  # AppleDouble metadata, not images
        (folder / name).write_bytes(b"\x00\x05\x16\x07 Mac OS X resource fork")
    data = load_dataset(root, fmt="mt", image_size=16)
    assert len(data.cache) == 20 and "MT_Crack/exp_0" in data.cache.index_of


def test_mt_two_photos_of_one_id_are_refused_naming_both(tmp_path: Path) -> None:
    root = make_mt(tmp_path / "mt")
    folder = root / "MT_Fray" / "Imgs"
    shutil.copy(folder / "exp_3.jpg", folder / "exp_3.jpeg")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(root, fmt="mt", image_size=16)
    one_line(excinfo, "MT_Fray/Imgs", "exp_3.jpeg and exp_3.jpg", "'exp_3'")


def test_split_lists_with_bom_spaces_and_file_names(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc")
    for folder, suffix in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png")):
        (root / folder / f"img002{suffix}").rename(root / folder / f"img 002{suffix}")
    lists = root / "ImageSets" / "Segmentation"
    # Notepad's byte-order mark, an entry with its image suffix, an id holding a space.
    train = ["img000", "img001.jpg", "img 002"] + [f"img{k:03d}" for k in range(3, 8)]
    (lists / "train.txt").write_text("\n".join(train) + "\n", encoding="utf-8-sig")
    (root / "classes.txt").write_text("background\ndent\nrust\n", encoding="utf-8-sig")
    data = load_dataset(root, fmt="voc", image_size=16)
    assert data.train.ids[:3] == ["img000", "img001", "img 002"]
    assert data.class_names == ["background", "dent", "rust"]
    # A list with a second column (read as its first field before): the error says what to fix.
    (lists / "train.txt").write_text("img000 1\nimg001 0\n")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(root, fmt="voc", image_size=16)
    one_line(excinfo, "missing image for id 'img000 1'", "'img000' is an image: remove what follows it")


# ------------------------------------------------------------------------------------------
# Sizes


def test_image_above_pillows_limit_is_one_line_naming_file_and_size(tmp_path: Path, monkeypatch) -> None:
    root = make_voc(tmp_path / "voc")  # 40 x 32 = 1280 pixels an image
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600)  # Pillow refuses above twice this
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(root, fmt="voc", image_size=16)
    one_line(excinfo, "img000.jpg", "too large", "1,280 pixels", "1,200", "tiles")


def test_inspect_loads_at_the_runs_cap_and_says_so(tmp_path: Path) -> None:
    from autonad_edge.cli import data as data_cli

    app = typer.Typer()
    data_cli.register(app)
    app.command("noop", hidden=True)(lambda: None)  # keep "data" a subcommand group
    root = make_voc(tmp_path / "voc", size=(60, 1300))
    result = CliRunner().invoke(app, ["data", "inspect", str(root), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["native_size"]["width"] == {"min": 1300, "max": 1300}
    assert info["loaded_size"] == {"height": {"min": 47, "max": 47}, "width": {"min": 1024, "max": 1024}}
    assert info["max_side"] == 1024 and info["keep_aspect"] is True
    text = CliRunner().invoke(app, ["data", "inspect", str(root)]).output
    assert "height 47..47   width 1024..1024   (long side at most 1024 px, aspect kept)" in text
    assert "320x320" not in text
