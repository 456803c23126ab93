"""The deployment bundle: manifest, files and checksums, plugin sources, engine records, and
the bundled infer.py run with ONNX Runtime on one image (no torch in this file's models)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from autonad_edge.export.bundle import (
    BundleError,
    engine_record_path,
    plugin_source_dir,
    read_bundle,
    sha256_file,
    write_bundle,
)

H, W, CLASSES = 24, 40, 3


def _seg_model(path: Path, flavor: str = "portable", dynamic: bool = False) -> Path:
    """A stand-in segmentation net with the exported models' interface: image [N,3,H,W] ->
    logits [N,3,H,W] (a 1x1 conv whose class 1 fires on bright red, class 2 on bright blue)."""
    batch = "batch" if dynamic else 1
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, H, W])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, CLASSES, H, W])
    weight = np.array([[0, 0, 0], [4, -2, -2], [-2, -2, 4]], np.float32).reshape(CLASSES, 3, 1, 1)
    bias = np.array([3.0, 0, 0], np.float32)
    nodes = [helper.make_node("Conv", ["image", "w", "b"], ["conv"])]
    if flavor == "tensorrt":
        nodes.append(helper.make_node("SpatialShift", ["conv"], ["logits"], domain="autonad", pattern=1,
                                      plugin_version="1", plugin_namespace="autonad"))
    else:
        nodes.append(helper.make_node("Identity", ["conv"], ["logits"]))
    graph = helper.make_graph(nodes, "seg", [image], [logits],
                              initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    opsets = [helper.make_opsetid("", 18)] + ([helper.make_opsetid("autonad", 1)] if flavor == "tensorrt" else [])
    model = helper.make_model(graph, opset_imports=opsets)
    arch = {"version": 1, "stages": [], "mfam": {"edges": {}, "pool_sizes": []}}
    for key, value in {"autonad.flavor": flavor, "autonad.num_classes": str(CLASSES),
                       "autonad.arch": json.dumps(arch)}.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.save(model, str(path))
    return path


def test_bundle_contents_and_manifest(tmp_path):
    portable = _seg_model(tmp_path / "p.onnx")
    trt = _seg_model(tmp_path / "t.onnx", "tensorrt")
    out = tmp_path / "bundle"
    manifest_path = write_bundle(out, portable, extra_onnx=[trt],
                                 manifest={"classes": ["background", "red", "blue"], "line": "L3"})
    assert manifest_path == out / "manifest.json"
    m = read_bundle(out)
    assert m["format"] == "autonad-edge-bundle" and m["version"] == 1
    assert m["classes"] == ["background", "red", "blue"] and m["num_classes"] == 3
    assert m["input"]["shape"] == [1, 3, H, W] and m["input"]["name"] == "image"
    assert m["input"]["mean"] == [0.485, 0.456, 0.406] and m["input"]["std"] == [0.229, 0.224, 0.225]
    assert m["line"] == "L3", "extra manifest fields are kept"
    assert m["arch"]["version"] == 1, "arch comes from the ONNX metadata when not given"
    files = {e["file"]: e for e in m["models"]}
    assert set(files) == {"model.portable.onnx", "model.tensorrt.onnx"}
    assert files["model.tensorrt.onnx"]["custom_ops"] == ["autonad::SpatialShift"]
    assert files["model.tensorrt.onnx"]["opset"] == {"ai.onnx": 18, "autonad": 1}
    assert files["model.portable.onnx"]["sha256"] == sha256_file(portable) == sha256_file(out / "model.portable.onnx")
    assert m["engine"] is None
    for name in ("infer.py", "README.md"):
        assert (out / name).is_file()
    source = plugin_source_dir()
    if source is not None:  # the agent's plugin sources ship with the bundle
        assert m["plugin"]["source"] == "plugin/spatial_shift"
        assert (out / "plugin" / "spatial_shift" / "CMakeLists.txt").is_file()
        assert m["plugin"]["namespace"] == "autonad" and m["plugin"]["version"] == "1"
    # Nothing is left behind next to the bundle (it is built in a temp dir and renamed).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "p.onnx", "t.onnx"]


def test_bundle_refuses_to_clobber_and_verifies(tmp_path):
    model = _seg_model(tmp_path / "p.onnx")
    out = tmp_path / "bundle"
    write_bundle(out, model, plugin_dir=False, plugin_lib=False)
    assert not (out / "plugin").exists()
    with pytest.raises(BundleError, match="not empty"):
        write_bundle(out, model)
    write_bundle(out, model, overwrite=True, manifest={"classes": ["a", "b", "c"]})
    assert read_bundle(out)["classes"] == ["a", "b", "c"]
    (out / "model.portable.onnx").write_bytes(b"tampered")
    with pytest.raises(BundleError, match="sha256"):
        read_bundle(out)
    with pytest.raises(BundleError, match="class names"):
        write_bundle(tmp_path / "b2", model, manifest={"classes": ["only", "two"]})
    with pytest.raises(BundleError, match="no such ONNX"):
        write_bundle(tmp_path / "b3", tmp_path / "missing.onnx")


def test_bundle_with_engine_record(tmp_path):
    trt = _seg_model(tmp_path / "t.onnx", "tensorrt")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\x00serialized-engine")
    record = {"target": "jetson", "onnx_sha256": sha256_file(trt), "precision": "fp16",
              "fields": {"device": "Orin", "runtime_version": "10.3.0", "uses_spatial_shift_plugin": "true"}}
    engine_record_path(engine).write_text(json.dumps(record))
    write_bundle(tmp_path / "bundle", trt, engine_path=engine)
    m = read_bundle(tmp_path / "bundle")
    assert m["engine"]["file"] == "model.engine" and m["engine"]["sha256"] == sha256_file(engine)
    assert m["engine"]["built_from"] == "model.tensorrt.onnx"
    assert m["engine"]["device"] == "Orin" and m["engine"]["precision"] == "fp16"
    assert m["engine"]["target"] == "jetson"
    # An engine built from some other model does not go into the bundle.
    other = _seg_model(tmp_path / "other.onnx")
    with pytest.raises(BundleError, match="not in this bundle"):
        write_bundle(tmp_path / "bundle2", other, engine_path=engine)


def _image(path: Path) -> Path:
    from PIL import Image

    pixels = np.zeros((30, 50, 3), np.uint8)
    pixels[:, :20] = (250, 10, 10)  # red: class 1
    pixels[:, 35:] = (10, 10, 250)  # blue: class 2
    Image.fromarray(pixels).save(path)
    return path


def test_infer_py_runs_with_onnxruntime(tmp_path):
    from PIL import Image

    portable = _seg_model(tmp_path / "p.onnx", dynamic=True)
    trt = _seg_model(tmp_path / "t.onnx", "tensorrt")
    bundle = tmp_path / "bundle"
    write_bundle(bundle, portable, extra_onnx=[trt], manifest={"classes": ["background", "red", "blue"],
                                                               "image_size": [H, W]})
    image = _image(tmp_path / "part.png")
    out = tmp_path / "masks" / "part_mask.png"
    run = subprocess.run([sys.executable, str(bundle / "infer.py"), str(image), "--out", str(out),
                          "--backend", "auto"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "onnxruntime" in run.stdout and "red" in run.stdout and "blue" in run.stdout
    mask = Image.open(out)
    assert mask.mode == "P" and mask.size == (50, 30), "the mask has the input image's size"
    values = np.asarray(mask)
    assert values[:, :15].max() == values[:, :15].min() == 1
    assert values[:, 40:].max() == values[:, 40:].min() == 2
    assert values[:, 24:28].max() == 0
    # Without an engine there is no TensorRT path; the message says so in one line.
    run = subprocess.run([sys.executable, str(bundle / "infer.py"), str(image), "--backend", "tensorrt"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.strip().count("\n") == 0 and "no TensorRT engine" in run.stderr


def test_bundle_command(tmp_path):
    from typer.testing import CliRunner

    from autonad_edge.cli import app

    portable = _seg_model(tmp_path / "p.onnx")
    trt = _seg_model(tmp_path / "t.onnx", "tensorrt")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"engine")
    engine_record_path(engine).write_text(json.dumps({"onnx_sha256": sha256_file(trt), "precision": "fp32"}))
    out = tmp_path / "bundle"
    args = ["bundle", "--onnx", str(portable), "--onnx", str(trt), "--engine", str(engine), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "model.portable.onnx, model.tensorrt.onnx, model.engine" in result.output
    assert read_bundle(out)["engine"]["built_from"] == "model.tensorrt.onnx"
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0 and "not empty" in result.output
    assert CliRunner().invoke(app, [*args, "--force"]).exit_code == 0


def test_force_replaces_only_a_bundle_or_an_empty_directory(tmp_path):
    """--force / overwrite deletes the old tree: it replaces a bundle or an empty directory, and
    refuses (naming it, keeping every file) a directory that holds anything else, e.g. a run's
    checkpoints, or a file."""
    from typer.testing import CliRunner

    from autonad_edge.cli import app

    model = _seg_model(tmp_path / "p.onnx")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "best.pt").write_bytes(b"weights")
    with pytest.raises(BundleError, match="holds no bundle") as info:
        write_bundle(run_dir, model, overwrite=True)
    assert str(run_dir) in str(info.value) and "\n" not in str(info.value)
    result = CliRunner().invoke(app, ["bundle", "--onnx", str(model), "--out", str(run_dir), "--force"])
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0 and "holds no bundle" in result.output
    assert sorted(p.name for p in run_dir.iterdir()) == ["best.pt"]
    # A bundle's manifest of something else does not count.
    (run_dir / "manifest.json").write_text(json.dumps({"format": "someone-else"}))
    with pytest.raises(BundleError, match="holds no bundle"):
        write_bundle(run_dir, model, overwrite=True)
    assert (run_dir / "best.pt").read_bytes() == b"weights"
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    with pytest.raises(BundleError, match="not a directory"):
        write_bundle(a_file, model, overwrite=True)
    assert a_file.read_text() == "mine"

    empty = tmp_path / "empty"
    empty.mkdir()
    write_bundle(empty, model)
    assert read_bundle(empty)["num_classes"] == CLASSES
    write_bundle(empty, model, overwrite=True, manifest={"classes": ["a", "b", "c"]})
    assert read_bundle(empty)["classes"] == ["a", "b", "c"]


def test_bundle_is_readable_by_others_and_out_may_be_the_cwd(tmp_path, monkeypatch):
    """The staging directory (mkdtemp: 0700) is renamed into place, so it gets the mode mkdir
    would give; `--out .` names the working directory."""
    import os
    import stat

    mask = os.umask(0o022)
    os.umask(mask)
    model = _seg_model(tmp_path / "p.onnx")
    write_bundle(tmp_path / "bundle", model)
    assert stat.S_IMODE((tmp_path / "bundle").stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((tmp_path / "bundle" / "manifest.json").stat().st_mode) == 0o666 & ~mask

    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert write_bundle(".", model) == Path("manifest.json")
    # The directory was replaced by the new bundle (this process's working directory is the
    # old, now removed, one): read it by its absolute path.
    assert read_bundle(here)["num_classes"] == CLASSES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "here", "p.onnx"]


def test_a_model_alone_carries_its_class_names_and_training_scale(tmp_path):
    """Without a checkpoint, the class names, max_side and squash `export` records in the
    model's metadata reach the manifest; class names given to write_bundle win (a training
    scale given must agree: test_the_flavours_and_the_checkpoint_must_describe_one_network);
    unreadable metadata is a one-line BundleError."""
    model = _seg_model(tmp_path / "p.onnx")
    proto = onnx.load(str(model))
    for key, value in {"autonad.class_names": json.dumps(["ok", "crack", "dent"]), "autonad.max_side": "640",
                       "autonad.squash": "false"}.items():
        proto.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.save(proto, str(model))
    m = read_bundle(write_bundle(tmp_path / "b1", model).parent)
    assert m["classes"] == ["ok", "crack", "dent"] and m["max_side"] == 640 and "squash" not in m
    m = read_bundle(write_bundle(tmp_path / "b2", model, manifest={"classes": ["a", "b", "c"], "max_side": 640,
                                                                   "squash": False}).parent)
    assert m["classes"] == ["a", "b", "c"] and m["max_side"] == 640 and "squash" not in m

    for key, value, match in (("autonad.class_names", "[oops", "autonad.class_names"),
                              ("autonad.squash", "yes", "autonad.squash")):
        bad = onnx.load(str(model))
        next(p for p in bad.metadata_props if p.key == key).value = value
        onnx.save(bad, str(tmp_path / "bad.onnx"))
        with pytest.raises(BundleError, match=match) as info:
            write_bundle(tmp_path / "b3", tmp_path / "bad.onnx")
        assert "\n" not in str(info.value) and not (tmp_path / "b3").exists()


def test_engine_record_must_be_readable_and_of_this_engine(tmp_path):
    """A record left beside a rebuilt engine (its engine_sha256 is another engine's) would vouch
    for the wrong engine, plugin flag included: refused, as is a record that is not JSON; both
    in one line, from write_bundle and the CLI."""
    from typer.testing import CliRunner

    from autonad_edge.cli import app

    trt = _seg_model(tmp_path / "t.onnx", "tensorrt")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\x00rebuilt-engine")
    stale = {"onnx_sha256": sha256_file(trt), "engine_sha256": "0" * 64,
             "fields": {"uses_spatial_shift_plugin": "false"}}
    engine_record_path(engine).write_text(json.dumps(stale))
    with pytest.raises(BundleError, match="another engine") as info:
        write_bundle(tmp_path / "b1", trt, engine_path=engine)
    assert "\n" not in str(info.value) and not (tmp_path / "b1").exists()
    # The sha256 the agent reported counts too when the record has none of its own.
    engine_record_path(engine).write_text(json.dumps({**stale, "engine_sha256": None,
                                                      "fields": {"engine_sha256": "1" * 64}}))
    with pytest.raises(BundleError, match="another engine"):
        write_bundle(tmp_path / "b1", trt, engine_path=engine)

    fresh = {**stale, "engine_sha256": sha256_file(engine),
             "fields": {"uses_spatial_shift_plugin": "true", "output_check": "skipped: no onnxruntime"}}
    engine_record_path(engine).write_text(json.dumps(fresh))
    m = read_bundle(write_bundle(tmp_path / "b1", trt, engine_path=engine).parent)
    assert m["engine"]["uses_spatial_shift_plugin"] == "true"
    assert m["engine"]["output_check"] == "skipped: no onnxruntime", "the agent's verdict shows in the manifest"

    engine_record_path(engine).write_text('{"onnx_sha256": "trunc')
    with pytest.raises(BundleError, match="not a readable engine build record") as info:
        write_bundle(tmp_path / "b2", trt, engine_path=engine)
    assert "\n" not in str(info.value)
    result = CliRunner().invoke(app, ["bundle", "--onnx", str(trt), "--engine", str(engine),
                                      "--out", str(tmp_path / "b2")])
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0
    assert "not a readable engine build record" in result.output and not (tmp_path / "b2").exists()


def _with_metadata(src: Path, dst: Path, **meta: str) -> Path:
    proto = onnx.load(str(src))
    for key, value in meta.items():
        key = f"autonad.{key}"
        entry = next((p for p in proto.metadata_props if p.key == key), None)
        if entry is None:
            proto.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
        else:
            entry.value = value
    onnx.save(proto, str(dst))
    return dst


def test_the_flavours_and_the_checkpoint_must_describe_one_network(tmp_path):
    """A bundle's models are two flavours of one network and its manifest fields (from a
    checkpoint) must not contradict them: infer.py would otherwise run another network on one
    backend, or preprocess and name classes for another. Each refusal is one line and writes
    nothing."""
    import random

    from autonad_edge.space import SearchSpace

    space = SearchSpace.tiny()
    arch, other_arch = (space.sample(random.Random(seed)) for seed in (1, 2))
    assert arch.hash != other_arch.hash
    portable = _with_metadata(_seg_model(tmp_path / "p.onnx"), tmp_path / "p.onnx", max_side="640",
                              arch=arch.to_json(indent=None))
    trt = _with_metadata(_seg_model(tmp_path / "t.onnx", "tensorrt"), tmp_path / "t.onnx",
                         arch=arch.to_json(indent=None))
    other_scale = _with_metadata(trt, tmp_path / "t512.onnx", max_side="512")
    wider = onnx.load(str(trt))
    wider.graph.input[0].type.tensor_type.shape.dim[3].dim_value = W + 8
    onnx.save(wider, str(tmp_path / "wide.onnx"))
    cases = [
        ({"extra_onnx": [other_scale]}, "max_side 512 against 640"),
        ({"extra_onnx": [tmp_path / "wide.onnx"]}, "input"),
        ({"manifest": {"num_classes": 5, "classes": [f"c{i}" for i in range(5)]}}, "3 output classes"),
        ({"manifest": {"max_side": None}}, "exported for max_side 640"),
        ({"manifest": {"arch": other_arch}}, "is the network"),
    ]
    for kwargs, match in cases:
        with pytest.raises(BundleError, match=match) as info:
            write_bundle(tmp_path / "b", portable, **kwargs)
        assert "\n" not in str(info.value) and not (tmp_path / "b").exists()
    # What agrees is accepted: the other flavour of the network, the checkpoint's own values.
    m = read_bundle(write_bundle(tmp_path / "b", portable, extra_onnx=[trt],
                                 manifest={"num_classes": CLASSES, "max_side": 640, "arch": arch}).parent)
    assert m["max_side"] == 640 and len(m["models"]) == 2


def test_replacing_a_bundle_swaps_it_in_one_step(tmp_path):
    """--force swaps the new bundle in with one exchange (Linux): no moment without a bundle at
    --out, and nothing left beside it."""
    from autonad_edge.export import bundle

    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "f").write_text("first")
    (second / "f").write_text("second")
    if not bundle._exchange(first, second):
        pytest.skip("no renameat2 RENAME_EXCHANGE here")
    assert (first / "f").read_text() == "second" and (second / "f").read_text() == "first"

    model = _seg_model(tmp_path / "p.onnx")
    write_bundle(tmp_path / "out", model, manifest={"line": "old"})
    write_bundle(tmp_path / "out", model, manifest={"line": "new"}, overwrite=True)
    assert read_bundle(tmp_path / "out")["line"] == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "out", "p.onnx"]
