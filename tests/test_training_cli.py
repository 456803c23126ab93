"""`autonad-edge supernet train | retrain | evaluate | predict` through the real Typer app,
on the embedded synthetic data (no dataset files)."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from autonad_edge.cli import app
from autonad_edge.space import SearchSpace
from autonad_edge.training.checkpoint import load_checkpoint

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_torch_thread")
SMALL = ["--space", "tiny", "--image-size", "32", "--synthetic-count", "24", "--device", "cpu", "--quiet"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    result = invoke("supernet", "train", *SMALL, "--epochs", "2", "--batch-size", "8", "--out", root / "sup")
    assert result.exit_code == 0, result.output
    arch = root / "arch.json"
    assert invoke("arch", "sample", "--space", "tiny", "--seed", "2", "--out", arch).exit_code == 0
    return root


def _random_images(folder, shapes: dict):
    """A folder of random 8-bit images, file name -> shape ([H, W] grey or [H, W, 3] colour)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, shape in shapes.items():
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(folder / name)
    return folder


def test_supernet_train_writes_a_run(run):
    sup = run / "sup"
    for name in ("supernet.pt", "splits.json", "train_log.jsonl", "config.json", "summary.json"):
        assert (sup / name).is_file(), name
    log = [json.loads(line) for line in (sup / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and all("val_miou" in r for r in log)
    splits = json.loads((sup / "splits.json").read_text())
    assert splits["format"] == "synthetic" and splits["image_size"] == [32, 32]


def test_resume_of_a_finished_run_and_conflicting_resume(run, tmp_path):
    again = invoke("supernet", "train", "--out", run / "sup", "--resume", "--quiet")
    assert again.exit_code == 0, again.output  # all settings come from the checkpoint
    conflict = invoke("supernet", "train", "--out", run / "sup", "--resume", "--lr", "0.1", "--quiet")
    assert conflict.exit_code == 2
    assert "lr" in conflict.output and "Traceback" not in conflict.output


def test_evaluate_supernet_with_arch_json(run):
    result = invoke("evaluate", "--checkpoint", run / "sup" / "supernet.pt", "--arch", run / "arch.json",
                    "--split", "val", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["kind"] == "supernet" and report["split"] == "val"
    assert 0 <= report["miou"] <= 1 and 0 <= report["mf1"] <= 1
    assert set(report["per_class"]) == {"background", "scratch", "pit", "crack", "stain"}
    assert set(report["per_class"]["background"]) == {"iou", "f1", "precision", "recall"}
    table = invoke("evaluate", "--checkpoint", run / "sup" / "supernet.pt", "--arch", run / "arch.json")
    assert table.exit_code == 0 and "mIoU" in table.stdout


def test_retrain_scratch_and_inherited_then_evaluate_and_predict(run, tmp_path):
    scratch = tmp_path / "scratch"
    result = invoke("retrain", "--arch", run / "arch.json", *SMALL, "--epochs", "1", "--out", scratch)
    assert result.exit_code == 0, result.output
    assert (scratch / "best.pt").is_file() and (scratch / "last.pt").is_file()

    inherited = tmp_path / "inherited"
    # --supernet alone inherits (it was silently unused without --init inherited).
    result = invoke("retrain", "--arch", run / "arch.json", "--supernet",
                    run / "sup" / "supernet.pt", "--epochs", "1", "--device", "cpu", "--quiet",
                    "--out", inherited)
    assert result.exit_code == 0, result.output
    assert load_checkpoint(inherited / "last.pt")["init"] == "inherited"
    # The supernet's split and image size are reused, so val/test stay unseen.
    sup_splits = json.loads((run / "sup" / "splits.json").read_text())
    assert json.loads((inherited / "splits.json").read_text())["splits"] == sup_splits["splits"]
    # From scratch beside it (a fair baseline): the supernet's split and space, fresh weights.
    fresh = tmp_path / "fresh"
    result = invoke("retrain", "--arch", run / "arch.json", "--init", "scratch", "--supernet",
                    run / "sup" / "supernet.pt", "--epochs", "1", "--device", "cpu", "--quiet", "--out", fresh)
    assert result.exit_code == 0, result.output
    assert load_checkpoint(fresh / "last.pt")["init"] == "scratch"
    assert json.loads((fresh / "splits.json").read_text())["splits"] == sup_splits["splits"]

    result = invoke("evaluate", "--checkpoint", inherited / "best.pt", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["kind"] == "subnet" and report["split"] == "test" and report["image_size"] == [32, 32]

    images = _random_images(tmp_path / "images", {"a.png": (40, 56, 3), "b.jpg": (33, 33)})
    out = tmp_path / "pred"
    result = invoke("predict", "--checkpoint", inherited / "best.pt", "--images", images, "--out", out)
    assert result.exit_code == 0, result.output
    assert np.asarray(Image.open(out / "masks" / "a.png")).shape == (40, 56)
    assert Image.open(out / "overlays" / "b.png").size == (33, 33)
    # A supernet checkpoint predicts through an extracted subnet.
    result = invoke("predict", "--checkpoint", run / "sup" / "supernet.pt", "--arch", run / "arch.json",
                    "--images", images / "a.png", "--out", tmp_path / "pred2")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pred2" / "masks" / "a.png").is_file()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["supernet", "train", "--data", "/nonexistent/mt", "--format", "mt", "--out", "{tmp}/x"], "nonexistent"),
        (["supernet", "train", "--format", "coco", "--out", "{tmp}/x"], "--format"),
        (["supernet", "train", "--space", "huge", "--out", "{tmp}/x"], "huge"),
        (["evaluate", "--checkpoint", "{tmp}/missing.pt"], "no such checkpoint"),
        (["evaluate", "--checkpoint", "{sup}"], "--arch"),
        (["evaluate", "--checkpoint", "{sup}", "--arch", "{tmp}/bad.json"], "width"),
        (["retrain", "--arch", "{tmp}/bad.json", "--space", "tiny", "--out", "{tmp}/r"], "width"),
        (["retrain", "--arch", "{tmp}/bad.json", "--init", "inherited", "--out", "{tmp}/r"], "--supernet"),
        (["predict", "--checkpoint", "{sup}", "--arch", "{arch}", "--images", "{tmp}/none", "--out", "{tmp}/p"],
         "no such image folder"),
        # Values no run can use: each used to end in a traceback deep in the engine or, worse,
        # train 0 steps and report success.
        (["supernet", "train", "--batch-size", "0", "--out", "{tmp}/x"], "--batch-size must be a whole number >= 1"),
        (["supernet", "train", "--batch-size", "-2", "--out", "{tmp}/x"], "--batch-size"),
        (["supernet", "train", "--epochs", "-1", "--out", "{tmp}/x"], "--epochs"),
        (["supernet", "train", "--max-steps-per-epoch", "0", "--out", "{tmp}/x"], "--max-steps-per-epoch"),
        (["supernet", "train", "--workers", "-1", "--out", "{tmp}/x"], "--workers"),
        (["supernet", "train", "--lr", "-1", "--out", "{tmp}/x"], "--lr"),
        (["evaluate", "--checkpoint", "{sup}", "--arch", "{arch}", "--threads", "-1"], "--threads"),
        (["predict", "--checkpoint", "{sup}", "--arch", "{arch}", "--images", "{tmp}", "--out", "{tmp}/p",
          "--image-size", "0"], "--image-size"),
        (["predict", "--checkpoint", "{sup}", "--arch", "{arch}", "--images", "{tmp}", "--out", "{tmp}/p",
          "--alpha", "5"], "--alpha"),
        (["arch", "show", "{arch}", "--space", "tiny", "--num-classes", "0"], "--num-classes"),
        (["arch", "sample", "--space", "tiny", "--out", "{tmp}"], "is a directory"),
    ],
)
def test_errors_are_one_line(run, tmp_path, args, needle):
    bad = SearchSpace.tiny().sample(__import__("random").Random(0)).to_dict()
    bad["stages"][1]["width"] = 999
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    subst = {"tmp": tmp_path, "sup": run / "sup" / "supernet.pt", "arch": run / "arch.json"}
    result = invoke(*[a.format(**subst) for a in args])
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_predict_squashes_for_a_squash_trained_checkpoint(tmp_path):
    """A checkpoint trained on images squashed to its (height, width): predict squashes each
    image to exactly that, one window, and writes masks at the image's size; --tile is refused."""
    import torch

    from autonad_edge.models.network import SegmentationNet
    from autonad_edge.training.checkpoint import save_subnet

    space = SearchSpace.tiny()
    torch.manual_seed(0)
    net = SegmentationNet.from_arch(space.largest(), space, 2)
    checkpoint = save_subnet(tmp_path / "best.pt", net, space, ["background", "defect"], (32, 48),
                             max_side=None, squash=True)
    images = _random_images(tmp_path / "images", {"tall.png": (70, 30, 3), "wide.png": (33, 90)})
    out = tmp_path / "pred"
    result = invoke("predict", "--checkpoint", checkpoint, "--images", images, "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert np.asarray(Image.open(out / "masks" / "tall.png")).shape == (70, 30)
    assert Image.open(out / "overlays" / "wide.png").size == (90, 33)
    report = json.loads((out / "predictions.json").read_text())
    assert report["squash"] is True and report["image_size"] == [32, 48] and report["tile"] is None
    result = invoke("predict", "--checkpoint", checkpoint, "--images", images, "--out", out, "--tile", "16")
    assert result.exit_code == 2 and "--tile does not apply" in result.output and "32x48" in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
