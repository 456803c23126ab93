"""Sliding-window inference: the tile plan partitions the image, tiled logits equal whole-image
logits where the receptive field allows, evaluation of mixed-size items, and the bundle's
infer.py tiling through ONNX Runtime (its planner mirrors the package's)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from autonad_edge.export.bundle import write_bundle
from autonad_edge.inference import Tile, plan_tiles, predict_logits, tiled_logits
from autonad_edge.models.network import SegmentationNet
from autonad_edge.space import SearchSpace
from autonad_edge.training.evaluate import evaluate

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PLANS = [(16, 5), (64, 16), (100, 0), (300, 150), (600, 100), (2000, 500)]


def _count_map(tiles: list[Tile], height: int, width: int) -> np.ndarray:
    counts = np.zeros((height, width), np.int32)
    for t in tiles:
        y0, x0, y1, x1 = t.keep
        counts[y0:y1, x0:x1] += 1
    return counts


@pytest.mark.parametrize("tile, overlap", PLANS)
def test_keep_regions_partition_the_image(tile, overlap):
    height, width = 517, 1283
    tiles = plan_tiles(height, width, tile, overlap)
    assert (_count_map(tiles, height, width) == 1).all()
    for t in tiles:
        wy0, wx0, wy1, wx1 = t.window
        ky0, kx0, ky1, kx1 = t.keep
        assert 0 <= wy0 < wy1 <= height and 0 <= wx0 < wx1 <= width
        assert t.window_hw == (min(tile, height), min(tile, width))
        assert wy0 <= ky0 < ky1 <= wy1 and wx0 <= kx0 < kx1 <= wx1, "a tile keeps only what it saw"
    starts = sorted({t.window[1] for t in tiles})
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:])), "windows overlap enough"
    assert max(t.window[3] for t in tiles) == width, "the last window is flush with the edge"


def test_an_image_that_fits_is_one_tile_and_bad_plans_fail():
    assert plan_tiles(40, 56, 64, 16) == [Tile((0, 0, 40, 56), (0, 0, 40, 56))]
    for tile, overlap, message in [(7, 0, "at least 8"), (32, 32, "overlap"), (32, -1, "overlap")]:
        with pytest.raises(ValueError, match=message):
            plan_tiles(100, 100, tile, overlap)


def _conv_net(kernel: int, classes: int = 3, layers: int = 1, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    convs = [nn.Conv2d(3 if i == 0 else classes, classes, kernel, padding=kernel // 2) for i in range(layers)]
    return nn.Sequential(*convs).eval()


def test_tiled_logits_match_the_whole_image():
    image = torch.randn(3, 517, 1283, generator=torch.Generator().manual_seed(0))
    pointwise = _conv_net(1)
    whole = pointwise(image[None])[0]
    tiled = tiled_logits(pointwise, image, tile=128, overlap=32, batch_size=5)
    assert tiled.shape == whole.shape and tiled.dtype == torch.float32
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-6)
    # Two 3x3 convs see 2 px around a pixel; every kept pixel is >= overlap/2 = 4 px from a
    # window border inside the image, so the tiles reproduce the whole-image output.
    local = _conv_net(3, layers=2)
    torch.testing.assert_close(tiled_logits(local, image[None], tile=96, overlap=8), local(image[None])[0],
                               rtol=0, atol=1e-5)
    # An image smaller than the tile: one window, zero-padded to the tile as the exported
    # network's fixed input sees it (the bundle's infer.py pads the same way); without a tile,
    # one forward of the whole image.
    import torch.nn.functional as F

    space = SearchSpace.tiny()
    net = SegmentationNet.from_arch(space.largest(), space, 3).eval()
    small = image[:, :40, :56]
    with torch.no_grad():
        padded = net(F.pad(small, (0, 8, 0, 24))[None])[0, :, :40, :56]
        whole = net(small[None])[0]
    assert torch.equal(tiled_logits(net, small, tile=64), padded)
    assert torch.equal(tiled_logits(net, small, tile=None), whole)


def test_predict_logits_returns_the_original_size():
    image = torch.randn(3, 300, 500, generator=torch.Generator().manual_seed(1))
    model = _conv_net(3)
    scaled = predict_logits(model, image, tile=64, max_side=128)
    assert scaled.shape == (3, 300, 500)
    native = predict_logits(model, image, tile=64)
    assert torch.equal(native, tiled_logits(model, image, tile=64))


def test_predict_logits_squashes_to_the_training_size_as_one_window():
    """A model trained on squashed images: one forward at exactly squash_hw, the logits
    resized back to the image's own size (tile and max_side do not apply)."""
    import torch.nn.functional as F

    image = torch.randn(3, 50, 90, generator=torch.Generator().manual_seed(2))
    model = _conv_net(3)
    shapes = []
    model.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    logits = predict_logits(model, image, tile=16, max_side=40, squash_hw=(32, 48))
    assert shapes == [(1, 3, 32, 48)] and logits.shape == (3, 50, 90)
    squashed = F.interpolate(image[None], size=(32, 48), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        expected = F.interpolate(model(squashed), size=(50, 90), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("max_side, squash_hw", [(40, None), (None, None), (None, (24, 24))])
def test_predicted_classes_are_the_argmax_of_the_logits_at_the_original_size(max_side, squash_hw):
    """`predict` resizes the logits back one class at a time (two planes of the image's size,
    not one a class): the classes are exactly the full logits' argmax, downscaled, native or
    squashed."""
    from autonad_edge.inference import predict_classes

    net = _conv_net(3, classes=5, seed=3)
    image = torch.randn(3, 61, 97, generator=torch.Generator().manual_seed(4))
    options = dict(tile=32, max_side=max_side, squash_hw=squash_hw)
    expected = predict_logits(net, image, **options).argmax(dim=0)
    classes = predict_classes(net, image, **options)
    assert classes.shape == (61, 97) and torch.equal(classes, expected)
    assert len(classes.unique()) > 1


def _mixed_items(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    items = []
    for height, width in [(40, 56), (40, 56), (64, 48), (33, 90), (40, 56), (96, 130)]:
        image = torch.randn(3, height, width, generator=generator)
        mask = torch.randint(0, 3, (height, width), generator=generator)
        mask[:2] = 255  # ignored rows
        items.append((image, mask))
    return items


@pytest.mark.parametrize("tile_size", [None, 48])
def test_evaluate_mixed_sizes_like_each_item_alone(tile_size):
    space = SearchSpace.tiny()
    torch.manual_seed(0)
    net = SegmentationNet.from_arch(space.largest(), space, 3)
    items = _mixed_items()
    result = evaluate(net, items, batch_size=4, tile_size=tile_size)
    alone = sum(evaluate(net, [item], tile_size=tile_size).metrics.matrix for item in items)
    np.testing.assert_array_equal(result.metrics.matrix, alone)
    assert result.num_images == len(items) and net.training, "the training mode is restored"
    defects = result.metrics.iou[1:]
    assert result.defect_miou == pytest.approx(np.nanmean(defects))
    assert result.to_dict()["miou_defects"] == pytest.approx(result.defect_miou)


# ---------------------------------------------------------------------------- the bundle's infer.py
S, CLASSES = 32, 3
WEIGHT = np.array([[0, 0, 0], [4, -2, -2], [-2, -2, 4]], np.float32)
BIAS = np.array([1.0, 0, 0], np.float32)


def _pointwise_onnx(path: Path) -> Path:
    """A stand-in net with the exported interface, fixed input [1,3,S,S] -> logits [1,3,S,S]:
    a 1x1 conv (class 1 fires on red, class 2 on blue), so tiling must not change a pixel."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, S, S])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, CLASSES, S, S])
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w", "b"], ["logits"])], "seg", [image], [logits],
        initializer=[numpy_helper.from_array(WEIGHT.reshape(CLASSES, 3, 1, 1), "w"),
                     numpy_helper.from_array(BIAS, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.metadata_props.append(onnx.StringStringEntryProto(key="autonad.flavor", value="portable"))
    onnx.save(model, str(path))
    return path


def _bundle(tmp_path: Path, **manifest) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "bundle"
    write_bundle(out, _pointwise_onnx(tmp_path / "p.onnx"), plugin_dir=False, plugin_lib=False,
                 manifest={"classes": ["background", "red", "blue"], **manifest})
    return out


def _load_infer(bundle: Path):
    spec = importlib.util.spec_from_file_location("bundle_infer", bundle / "infer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _expected_mask(pixels: np.ndarray, manifest: dict) -> np.ndarray:
    x = (pixels.astype(np.float32) / 255 - manifest["input"]["mean"]) / manifest["input"]["std"]
    return (x @ WEIGHT.T + BIAS).argmax(axis=-1)


def _part(height: int, width: int, seed: int = 0) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(60, 200, (height, width, 3), dtype=np.uint8)
    pixels[:, : width // 5] = (250, 10, 10)
    pixels[:, -width // 5:] = (10, 10, 250)
    pixels[height // 2] = (250, 10, 10)  # a 1-px "crack" across the whole part
    return pixels


def test_infer_py_planner_mirrors_the_package(tmp_path):
    infer = _load_infer(_bundle(tmp_path))
    for tile, overlap in PLANS:
        if overlap == tile // 4:
            ours = [(t.window, t.keep) for t in plan_tiles(517, 1283, tile, overlap)]
            assert infer.plan_tiles(517, 1283, (tile, tile)) == ours
    # A non-square input tiles each axis by its own side; the keeps still partition the image.
    tiles = infer.plan_tiles(517, 1283, (40, 56))
    counts = np.zeros((517, 1283), np.int32)
    for _, (y0, x0, y1, x1) in tiles:
        counts[y0:y1, x0:x1] += 1
    assert (counts == 1).all()


def test_infer_py_pads_an_image_smaller_than_the_input(tmp_path):
    from PIL import Image

    bundle = _bundle(tmp_path)
    infer = _load_infer(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    pixels = _part(20, 27)
    run = infer.onnxruntime_runner(bundle / "model.portable.onnx", "image")
    mask = infer.segment(run, Image.fromarray(pixels), manifest["input"], None)
    np.testing.assert_array_equal(mask, _expected_mask(pixels, manifest))


def test_a_small_image_is_scored_as_the_bundle_runs_it(tmp_path):
    """A window shorter than the network's input: the package pads it as infer.py must (the
    ONNX input is fixed), so the report's figures are the deployed model's. Two 3x3 convs, the
    first with a bias, see the padding at the border (their own zero padding differs from a
    padded input's first-layer output), so a difference would show."""
    rng = np.random.default_rng(4)
    w1, w2 = (rng.standard_normal((CLASSES, 3, 3, 3)).astype(np.float32) for _ in range(2))
    b1 = rng.standard_normal(CLASSES).astype(np.float32)
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, S, S])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, CLASSES, S, S])
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w1", "b1"], ["hidden"], pads=[1, 1, 1, 1]),
         helper.make_node("Conv", ["hidden", "w2"], ["logits"], pads=[1, 1, 1, 1])], "seg", [image], [logits],
        initializer=[numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
                     numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.metadata_props.append(onnx.StringStringEntryProto(key="autonad.flavor", value="portable"))
    onnx.save(model, str(tmp_path / "conv.onnx"))
    bundle = tmp_path / "bundle"
    write_bundle(bundle, tmp_path / "conv.onnx", plugin_dir=False, plugin_lib=False,
                 manifest={"classes": ["a", "b", "c"]})
    infer = _load_infer(bundle)
    run = infer.onnxruntime_runner(bundle / "model.portable.onnx", "image")
    conv = nn.Sequential(nn.Conv2d(3, CLASSES, 3, padding=1), nn.Conv2d(CLASSES, CLASSES, 3, padding=1, bias=False))
    with torch.no_grad():
        conv[0].weight.copy_(torch.from_numpy(w1))
        conv[0].bias.copy_(torch.from_numpy(b1))
        conv[1].weight.copy_(torch.from_numpy(w2))
    x = rng.standard_normal((3, 20, 27)).astype(np.float32)
    deployed = infer.tiled_logits(run, x, (S, S))
    with torch.no_grad():
        ours = tiled_logits(conv, torch.from_numpy(x), tile=S).numpy()
        unpadded = conv(torch.from_numpy(x)[None])[0].numpy()
    np.testing.assert_allclose(ours, deployed, rtol=1e-5, atol=1e-4)
    assert np.abs(unpadded - deployed).max() > 1e-3  # the padding shows at the border


def test_infer_py_tiles_a_large_non_square_image(tmp_path, run_infer_py):
    from PIL import Image

    bundle = _bundle(tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    pixels = _part(150, 410)
    image = tmp_path / "part.png"
    Image.fromarray(pixels).save(image)
    out = tmp_path / "part_mask.png"
    run, mask = run_infer_py(bundle, image, out=out, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert mask.shape == (150, 410), "the mask has the input image's size"
    np.testing.assert_array_equal(mask, _expected_mask(pixels, manifest))
    assert (mask[75, 90:320] == 1).all(), "the 1-px crack survives at native scale"
    # With a training scale the image is inferred smaller; the mask keeps the input size.
    scaled = _bundle(tmp_path / "scaled", max_side=100)
    assert json.loads((scaled / "manifest.json").read_text())["max_side"] == 100
    run, mask = run_infer_py(scaled, image, out=out, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert mask.shape == (150, 410) and (mask[:, :60] == 1).all() and (mask[:60, -60:] == 2).all()


def test_infer_py_squashes_for_a_squash_trained_model(tmp_path, run_infer_py):
    """A bundle whose model was trained on images squashed to its input (``squash``: true): the
    model is fed exactly its input size, once, and the mask has the original image's size."""
    from PIL import Image

    bundle = _bundle(tmp_path, squash=True)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["squash"] is True and "aspect not kept" in manifest["input"]["resize"]
    kept = json.loads((_bundle(tmp_path / "kept", squash=False) / "manifest.json").read_text())
    assert "squash" not in kept and "aspect kept" in kept["input"]["resize"]

    infer = _load_infer(bundle)
    ort_run = infer.onnxruntime_runner(bundle / "model.portable.onnx", "image")
    shapes = []

    def run(x: np.ndarray) -> np.ndarray:
        shapes.append(x.shape)
        return ort_run(x)

    pixels = _part(150, 410)
    mask = infer.segment(run, Image.fromarray(pixels), manifest["input"], None, squash=True)
    assert shapes == [(1, 3, S, S)], "one window at the model's input size"
    assert mask.shape == (150, 410) and (mask[:, :50] == 1).all() and (mask[:, -50:] == 2).all()
    shapes.clear()
    infer.segment(run, Image.fromarray(pixels), manifest["input"], None)
    assert len(shapes) > 1, "without squash: native-resolution tiles, as before"

    image = tmp_path / "part.png"
    Image.fromarray(pixels).save(image)
    out = tmp_path / "part_mask.png"
    done, written = run_infer_py(bundle, image, out=out, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(written, mask)


def test_infer_py_says_what_is_wrong_in_one_line(tmp_path, capsys):
    from PIL import Image

    bundle = _bundle(tmp_path)
    infer = _load_infer(bundle)
    image = tmp_path / "part.png"
    Image.fromarray(_part(20, 27)).save(image)
    cases = {
        "no bundle there": ["--bundle", str(tmp_path / "nowhere")],
        "an output format it cannot write": ["--out", str(tmp_path / "mask.xyz")],
        "an output that is a folder": ["--out", str(tmp_path)],
    }
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{not json")
    cases["a torn manifest"] = ["--bundle", str(tmp_path / "broken")]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text("{}")
    cases["a manifest of something else"] = ["--bundle", str(tmp_path / "other")]
    for why, args in cases.items():
        assert infer.main([str(image), *args]) == 2, why
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, (why, err)
