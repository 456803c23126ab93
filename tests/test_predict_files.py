"""`predict` and the bundle's infer.py on a user's folder: unreadable files, macOS dotfiles,
EXIF orientation and images above Pillow's size limit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from test_user_images import load_infer_module, save_oriented
from typer.testing import CliRunner

from autonad_edge.data import DatasetError
from autonad_edge.training.predict import UnreadableImages, predict_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CLASSES = ["background", "scratch"]


def _folder(root: Path) -> Path:
    """Two good images, a torn one and the AppleDouble twin macOS leaves next to a copied file."""
    root.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / "a.png")
    Image.fromarray(rng.integers(0, 256, (18, 30), dtype=np.uint8)).save(root / "c.jpg")
    (root / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short by a failed copy")
    (root / "._a.png").write_bytes(b"\x00\x05\x16\x07 Mac OS X resource fork")
    return root


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Conv2d(3, len(CLASSES), 1)


def test_an_unreadable_file_is_skipped_and_the_others_are_kept(tmp_path: Path) -> None:
    images, out, lines = _folder(tmp_path / "images"), tmp_path / "out", []
    with pytest.raises(UnreadableImages) as excinfo:
        predict_images(_model(), images, out, image_size=16, class_names=CLASSES, log=lines.append)
    message = str(excinfo.value)
    assert isinstance(excinfo.value, DatasetError) and "\n" not in message
    assert "1 of 3 images" in message and "b.jpg" in message and "predictions.json" in message
    assert len(lines) == 1 and lines[0].startswith("skipped ") and "b.jpg: unreadable image" in lines[0]
    report = json.loads((out / "predictions.json").read_text())
    assert [r["mask"] for r in report["images"]] == ["masks/a.png", "masks/c.png"]
    assert [Path(s["image"]).name for s in report["skipped"]] == ["b.jpg"]
    assert excinfo.value.records == report["images"]
    assert np.asarray(Image.open(out / "masks" / "c.png")).shape == (18, 30)
    assert not (out / "masks" / "._a.png").exists()


def test_predict_cli_exits_non_zero_naming_the_skipped_file(tmp_path: Path) -> None:
    from autonad_edge.cli import train as train_cli
    from autonad_edge.models.network import SegmentationNet
    from autonad_edge.space import SearchSpace
    from autonad_edge.training.checkpoint import save_subnet

    space = SearchSpace.tiny()
    torch.manual_seed(0)
    net = SegmentationNet.from_arch(space.largest(), space, len(CLASSES))
    checkpoint = save_subnet(tmp_path / "best.pt", net, space, CLASSES, (32, 32), max_side=None)
    app = typer.Typer()
    train_cli.register(app)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["predict", "--checkpoint", str(checkpoint), "--images",
                                      str(_folder(tmp_path / "images")), "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert "skipped" in result.output and "b.jpg" in result.output and "Traceback" not in result.output
    assert len(json.loads((out / "predictions.json").read_text())["images"]) == 2


def test_predict_turns_images_as_their_exif_orientation_says(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    displayed = np.random.default_rng(1).integers(0, 256, (30, 20, 3), dtype=np.uint8)
    save_oriented(images / "portrait.jpg", displayed, 6)  # stored 20 high, 30 wide
    records = predict_images(_model(), images, tmp_path / "out", image_size=16, class_names=CLASSES)
    assert records[0]["size"] == [30, 20]
    assert np.asarray(Image.open(tmp_path / "out" / "masks" / "portrait.png")).shape == (30, 20)


def test_infer_py_turns_images_and_refuses_too_large_ones_in_one_line(tmp_path: Path, monkeypatch) -> None:
    infer = load_infer_module()
    displayed = np.random.default_rng(2).integers(0, 256, (30, 20, 3), dtype=np.uint8)
    save_oriented(tmp_path / "portrait.jpg", displayed, 6)
    assert infer.load_image(tmp_path / "portrait.jpg").size == (20, 30)  # (width, height) as shown
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 250)  # Pillow refuses above twice this
    with pytest.raises(infer.InferError) as excinfo:
        infer.load_image(tmp_path / "portrait.jpg")
    message = str(excinfo.value)
    assert "\n" not in message and "portrait.jpg" in message and "600 pixels" in message and "tiles" in message
