"""`autonad-edge export` and `autonad-edge build-engine` through the Typer app: checkpoints
from the training API (subnet and supernet + arch), op-count report, bundle + infer.py, and
the one-line refusal of a target without TensorRT (the real in-process local agent)."""

from __future__ import annotations

import json
import random

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from typer.testing import CliRunner

from autonad_edge.cli import app
from autonad_edge.models.network import SegmentationNet
from autonad_edge.models.supernet import HybridSupernet
from autonad_edge.space import SearchSpace, iter_blocks
from autonad_edge.training.checkpoint import save_checkpoint, save_subnet

runner = CliRunner()
SPACE = SearchSpace.tiny()
CLASSES = ["background", "scratch", "dent"]


def _mlp_arch():
    return next(
        a for a in (SPACE.sample(random.Random(s)) for s in range(100))
        if sum(b.op == "mlp" for _, _, b in iter_blocks(a)) >= 2 and sum(a.depths) <= 6
    )


@pytest.fixture(scope="module")
def subnet_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    net = SegmentationNet.from_arch(_mlp_arch(), SPACE, len(CLASSES))
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_subnet(path, net, SPACE, CLASSES, image_size=(40, 56))
    return path


@pytest.fixture(scope="module")
def supernet_checkpoint(tmp_path_factory):
    torch.manual_seed(1)
    supernet = HybridSupernet(SPACE, num_classes=2)
    path = tmp_path_factory.mktemp("ckpt") / "supernet.pt"
    save_checkpoint(path, {
        "kind": "supernet", "model": supernet.state_dict(), "space": SPACE.to_json(indent=None),
        "sharing": "cross", "num_classes": 2, "class_names": ["ok", "defect"], "image_size": [48, 48],
    })
    return path


def _one_line_error(result) -> str:
    text = result.output.strip()
    assert text.count("\n") == 0, text
    assert text.startswith("error:"), text
    return text


def test_export_portable_json_bundle_and_infer(subnet_checkpoint, tmp_path, run_infer_py):
    out = tmp_path / "model.onnx"
    bundle = tmp_path / "bundle"
    result = runner.invoke(app, ["export", "--checkpoint", str(subnet_checkpoint), "--out", str(out),
                                 "--bundle", str(bundle), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["flavor"] == "portable" and report["input"]["shape"] == [1, 3, 40, 56]
    assert report["nodes"] == sum(report["ops"].values()) > 0
    assert report["ops"]["Slice"] > 0 and "autonad::SpatialShift" not in report["ops"]
    assert report["ort_max_abs_error"] < 1e-4
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert len(model.graph.node) == report["nodes"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["classes"] == CLASSES and manifest["input"]["shape"] == [1, 3, 40, 56]
    assert manifest["arch_hash"] == report["arch_hash"]
    assert manifest["models"][0]["sha256"] == report["sha256"]

    from PIL import Image

    image = tmp_path / "part.jpg"
    Image.fromarray((np.random.default_rng(0).random((45, 70, 3)) * 255).astype(np.uint8)).save(image)
    run, mask = run_infer_py(bundle, image)
    assert run.returncode == 0, run.stderr
    assert mask.shape == (45, 70) and mask.max() < len(CLASSES)



def test_a_squash_trained_checkpoint_bundles_squashed(subnet_checkpoint, tmp_path, run_infer_py):
    """A network trained on images squashed to its input (keep_aspect false): `export --bundle`
    and `bundle --checkpoint` record it, and infer.py's mask has the image's size; another
    checkpoint than the model's is refused."""
    from PIL import Image

    from autonad_edge.export.bundle import read_bundle

    torch.manual_seed(0)
    net = SegmentationNet.from_arch(_mlp_arch(), SPACE, len(CLASSES))
    squashed = save_subnet(tmp_path / "squash.pt", net, SPACE, CLASSES, image_size=(40, 56), max_side=None,
                           squash=True)
    out = tmp_path / "model.onnx"
    bundle = tmp_path / "bundle"
    result = runner.invoke(app, ["export", "--checkpoint", str(squashed), "--out", str(out), "--bundle", str(bundle)])
    assert result.exit_code == 0, result.output
    manifest = read_bundle(bundle)
    assert manifest["squash"] is True and manifest["max_side"] is None and manifest["input"]["shape"] == [1, 3, 40, 56]
    image = tmp_path / "part.png"
    Image.fromarray((np.random.default_rng(0).random((90, 33, 3)) * 255).astype(np.uint8)).save(image)
    run, mask = run_infer_py(bundle, image)
    assert run.returncode == 0, run.stderr
    assert mask.shape == (90, 33) and mask.max() < len(CLASSES)
    written = tmp_path / "bundle_squash"
    result = runner.invoke(app, ["bundle", "--onnx", str(out), "--checkpoint", str(squashed), "--out", str(written)])
    assert result.exit_code == 0, result.output
    assert read_bundle(written).get("squash") is True
    # Another checkpoint (aspect kept, another network) contradicts what the model records:
    # refused in one line rather than bundled to preprocess for the wrong network.
    result = runner.invoke(app, ["bundle", "--onnx", str(out), "--checkpoint", str(subnet_checkpoint),
                                 "--out", str(tmp_path / "bundle_other")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "the manifest given says" in result.output and not (tmp_path / "bundle_other").exists()
    # Without the checkpoint, the model's own metadata says it was trained squashed.
    result = runner.invoke(app, ["bundle", "--onnx", str(out), "--out", str(tmp_path / "bundle_alone")])
    assert result.exit_code == 0, result.output
    manifest = read_bundle(tmp_path / "bundle_alone")
    assert manifest["squash"] is True and manifest["classes"] == CLASSES


def test_bundle_without_checkpoint_keeps_class_names_and_training_scale(tmp_path):
    """`export` writes the checkpoint's class names and training scale into the model's
    metadata, so `bundle --onnx` alone gives infer.py the scale and names training used (not
    native scale and class1, class2); --arch without --checkpoint is refused, not ignored."""
    from autonad_edge.export.bundle import read_bundle

    torch.manual_seed(0)
    net = SegmentationNet.from_arch(_mlp_arch(), SPACE, len(CLASSES))
    checkpoint = save_subnet(tmp_path / "best.pt", net, SPACE, CLASSES, image_size=(40, 56), max_side=96)
    out = tmp_path / "model.onnx"
    result = runner.invoke(app, ["export", "--checkpoint", str(checkpoint), "--out", str(out), "--no-verify"])
    assert result.exit_code == 0, result.output
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["autonad.class_names"]) == CLASSES
    assert meta["autonad.max_side"] == "96" and meta["autonad.squash"] == "false"
    result = runner.invoke(app, ["bundle", "--onnx", str(out), "--out", str(tmp_path / "bundle")])
    assert result.exit_code == 0, result.output
    manifest = read_bundle(tmp_path / "bundle")
    assert manifest["classes"] == CLASSES and manifest["max_side"] == 96 and "squash" not in manifest

    arch_path = tmp_path / "arch.json"
    arch_path.write_text(_mlp_arch().to_json())
    result = runner.invoke(app, ["bundle", "--onnx", str(out), "--arch", str(arch_path),
                                 "--out", str(tmp_path / "bundle2")])
    assert result.exit_code == 2 and "--arch needs the supernet --checkpoint" in _one_line_error(result)
    assert not (tmp_path / "bundle2").exists()


def test_export_bundle_refusals_come_before_the_export(subnet_checkpoint, tmp_path):
    """--out inside --bundle (the bundle would replace it) is refused, with or without --force,
    and --force does not replace a directory that holds no bundle: one line each, nothing
    exported, nothing deleted."""
    deploy = tmp_path / "deploy"
    for extra in ([], ["--force"]):
        result = runner.invoke(app, ["export", "--checkpoint", str(subnet_checkpoint), "--out",
                                     str(deploy / "model.onnx"), "--bundle", str(deploy), *extra])
        assert result.exit_code == 2 and "is inside --bundle" in _one_line_error(result)
        assert not deploy.exists()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "last.pt").write_bytes(b"weights")
    result = runner.invoke(app, ["export", "--checkpoint", str(subnet_checkpoint), "--out", str(tmp_path / "m.onnx"),
                                 "--bundle", str(run_dir), "--force"])
    assert result.exit_code == 2
    line = _one_line_error(result)
    assert "holds no bundle" in line and str(run_dir) in line
    assert not (tmp_path / "m.onnx").exists() and sorted(p.name for p in run_dir.iterdir()) == ["last.pt"]


def test_export_tensorrt_from_supernet_and_build_engine_on_local(supernet_checkpoint, tmp_path):
    arch = _mlp_arch()
    arch_path = tmp_path / "arch.json"
    arch_path.write_text(arch.to_json())
    out = tmp_path / "model.onnx"
    result = runner.invoke(app, ["export", "--checkpoint", str(supernet_checkpoint), "--arch", str(arch_path),
                                 "--out", str(out), "--flavor", "tensorrt", "--image-size", "32", "48"])
    assert result.exit_code == 0, result.output
    n_mlp = sum(b.op == "mlp" for _, _, b in iter_blocks(arch))
    assert "autonad::SpatialShift" in result.output and "nodes" in result.output
    model = onnx.load(str(out))
    assert sum(n.op_type == "SpatialShift" for n in model.graph.node) == 2 * n_mlp
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 32, 48]

    engine = tmp_path / "model.engine"
    result = runner.invoke(app, ["build-engine", "--target", "local", "--onnx", str(out), "--out", str(engine)])
    assert result.exit_code == 3
    line = _one_line_error(result)
    assert "target 'local' has no TensorRT" in line and f"kept {out}" in line
    assert not engine.exists() and not (tmp_path / "model.engine.json").exists()


def test_export_errors_are_one_line(supernet_checkpoint, subnet_checkpoint, tmp_path):
    out = tmp_path / "m.onnx"
    result = runner.invoke(app, ["export", "--checkpoint", str(supernet_checkpoint), "--out", str(out)])
    assert result.exit_code == 2 and "--arch" in _one_line_error(result)
    result = runner.invoke(app, ["export", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(out)])
    assert result.exit_code == 2 and "no such checkpoint" in _one_line_error(result)
    result = runner.invoke(app, ["export", "--checkpoint", str(subnet_checkpoint), "--out", str(out),
                                 "--flavor", "coreml"])
    assert result.exit_code == 2 and "--flavor" in _one_line_error(result)
    assert not out.exists()


def test_build_engine_refuses_dynamic_shapes_and_unknown_targets(tmp_path):
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, 8, 8])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["image"], ["logits"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path / "dyn.onnx"
    onnx.save(model, str(path))
    result = runner.invoke(app, ["build-engine", "--target", "local", "--onnx", str(path),
                                 "--out", str(tmp_path / "e.engine")])
    assert result.exit_code == 3 and "dynamic" in _one_line_error(result)
    static = tmp_path / "static.onnx"
    for v in (*model.graph.input, *model.graph.output):
        v.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, str(static))
    targets = tmp_path / "targets.toml"
    targets.write_text('[targets.jetson]\nagents = ["127.0.0.1:9"]\n')
    result = runner.invoke(app, ["build-engine", "--target", "orin", "--targets", str(targets),
                                 "--onnx", str(static), "--out", str(tmp_path / "e.engine")])
    assert result.exit_code == 3 and "'orin' not found" in _one_line_error(result)
    result = runner.invoke(app, ["build-engine", "--target", "local", "--onnx", str(tmp_path / "none.onnx"),
                                 "--out", str(tmp_path / "e.engine")])
    assert result.exit_code == 2 and "no such ONNX file" in _one_line_error(result)
    assert not (tmp_path / "e.engine").exists()


class _FakeClient:
    """Stands in for an `AgentClient` of a TensorRT target (no GPU here)."""

    address = "10.0.0.7:50051"

    def __init__(self, fail_with=None, output_check="ok (relative error 1.2e-07, tolerance 0.001)",
                 while_building=None):
        self.fail_with = fail_with
        self.output_check = output_check  # the agent's verdict; None: an agent that sends none
        self.while_building = while_building  # called during the (remote, long) build
        self.requests = []

    def device_info(self):
        from types import SimpleNamespace

        return SimpleNamespace(backends=[SimpleNamespace(name="tensorrt", available=True, reason="",
                                                         can_build_engine=True)])

    def build_engine(self, onnx_bytes, *, backend, precision, timeout_s=None):
        import hashlib

        from autonad_edge.latency.client import Engine

        self.requests.append((backend, precision))
        if self.fail_with is not None:
            raise self.fail_with
        if self.while_building is not None:
            self.while_building()
        fields = {"onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(), "device": "Orin",
                  "runtime_version": "10.3.0", "precision": precision, "latency_ms_median": "1.250000",
                  "uses_spatial_shift_plugin": "true"}
        if self.output_check is not None:
            fields["output_check"] = self.output_check
        return Engine(b"\x01engine-bytes", fields, None)


def _fake_target(monkeypatch, client):
    import contextlib
    from types import SimpleNamespace

    import autonad_edge.latency.targets as targets

    @contextlib.contextmanager
    def open_target(name, targets_path=None, **kwargs):
        yield SimpleNamespace(clients=[client])

    monkeypatch.setattr(targets, "open_target", open_target)


def _static_model(path):
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 8, 8])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["image"], ["logits"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, str(path))
    return path


def test_build_engine_success_writes_engine_record_and_bundles(monkeypatch, tmp_path):
    client = _FakeClient()
    _fake_target(monkeypatch, client)
    model = _static_model(tmp_path / "model.onnx")
    engine = tmp_path / "model.engine"
    result = runner.invoke(app, ["build-engine", "--target", "jetson", "--onnx", str(model), "--out", str(engine),
                                 "--fp16"])
    assert result.exit_code == 0, result.output
    assert client.requests == [("tensorrt", "fp16")]
    assert engine.read_bytes() == b"\x01engine-bytes"
    record = json.loads((tmp_path / "model.engine.json").read_text())
    assert record["target"] == "jetson" and record["precision"] == "fp16" and record["agent"] == client.address
    assert record["fields"]["device"] == "Orin" and "Orin" in result.output
    from autonad_edge.export.engine import build_engine

    assert build_engine("jetson", model, tmp_path / "again.engine").latency_ms == 1.25
    result = runner.invoke(app, ["bundle", "--onnx", str(model), "--engine", str(engine), "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["engine"]["device"] == "Orin" and manifest["engine"]["built_from"] == "model.portable.onnx"


def test_build_engine_rejected_by_the_agent(monkeypatch, tmp_path):
    import grpc

    from autonad_edge.latency.client import AgentError

    error = AgentError("10.0.0.7:50051", grpc.StatusCode.FAILED_PRECONDITION,
                       "the model uses autonad::SpatialShift but the TensorRT plugin is unavailable on this device: "
                       "not built (run `autonad-agent build-plugin`)")
    _fake_target(monkeypatch, _FakeClient(fail_with=error))
    model = _static_model(tmp_path / "model.onnx")
    result = runner.invoke(app, ["build-engine", "--target", "jetson", "--onnx", str(model),
                                 "--out", str(tmp_path / "model.engine")])
    assert result.exit_code == 3
    line = _one_line_error(result)
    assert "could not build the engine" in line and "build-plugin" in line and "kept" in line
    assert not (tmp_path / "model.engine").exists()


def test_engine_output_check_verdicts():
    """The decision on the agent's `output_check`, from its manifest fields alone: ok passes,
    a mismatch raises, a skipped (or unreported) check is a one-line warning."""
    from autonad_edge.export.engine import EngineBuildError, output_check_warning

    assert output_check_warning({"output_check": "ok (relative error 3.1e-05, tolerance 0.01)"}) is None
    for verdict in ("mismatch (relative error 0.42, tolerance 0.001)",
                    "mismatch: output 'logits' missing or of another shape in the engine"):
        with pytest.raises(EngineBuildError, match="differ from ONNX Runtime") as info:
            output_check_warning({"output_check": verdict})
        assert verdict in str(info.value) and not info.value.unavailable
    warning = output_check_warning({"output_check": "skipped: ONNX Runtime could not run the model\n(Fail: x)"})
    assert "not checked" in warning and "skipped: ONNX Runtime" in warning and "\n" not in warning
    assert "did not check" in output_check_warning({})


def test_build_engine_mismatch_writes_nothing_and_skipped_check_warns(monkeypatch, tmp_path):
    """An engine whose outputs the agent found to differ from ONNX Runtime is refused (exit 3,
    one line, no engine or record written); one whose check was skipped is written, with the
    verdict in its record and a one-line warning."""
    model = _static_model(tmp_path / "model.onnx")
    engine = tmp_path / "model.engine"
    _fake_target(monkeypatch, _FakeClient(output_check="mismatch (relative error 0.42, tolerance 0.001)"))
    result = runner.invoke(app, ["build-engine", "--target", "jetson", "--onnx", str(model), "--out", str(engine)])
    assert result.exit_code == 3
    line = _one_line_error(result)
    assert "differ from ONNX Runtime" in line and "relative error 0.42" in line and "no engine written" in line
    assert not engine.exists() and not (tmp_path / "model.engine.json").exists()

    skipped = "skipped: ONNX Runtime could not run the model (RuntimeError: no CPU kernel)"
    _fake_target(monkeypatch, _FakeClient(output_check=skipped))
    result = runner.invoke(app, ["build-engine", "--target", "jetson", "--onnx", str(model), "--out", str(engine)])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and skipped in warnings[0] and "not checked" in warnings[0]
    record = json.loads((tmp_path / "model.engine.json").read_text())
    assert record["output_check"] == record["fields"]["output_check"] == skipped
    # The search pipeline's bundle step reads the record: the verdict reaches the manifest.
    from autonad_edge.export.bundle import read_bundle, write_bundle

    write_bundle(tmp_path / "bundle", model, engine)
    assert read_bundle(tmp_path / "bundle")["engine"]["output_check"] == skipped


def test_build_engine_checks_out_before_contacting_the_target(monkeypatch, tmp_path):
    """--out that is the ONNX model, a directory, or under a file is refused in one line before
    any agent is asked (no build request); a write that fails after the build is one line too."""
    client = _FakeClient()
    _fake_target(monkeypatch, client)
    model = _static_model(tmp_path / "model.onnx")
    original = model.read_bytes()
    a_dir = tmp_path / "engines"
    a_dir.mkdir()
    (tmp_path / "afile").write_text("x")
    for out, why in ((model, "would overwrite the ONNX model"), (tmp_path / "." / "model.onnx", "would overwrite"),
                     (a_dir, "is a directory"), (tmp_path / "afile" / "model.engine", "not a directory")):
        result = runner.invoke(app, ["build-engine", "--target", "jetson", "--onnx", str(model), "--out", str(out)])
        assert result.exit_code == 2, (out, result.output)
        line = _one_line_error(result)
        assert line.startswith("error: --out") and why in line, line
    # The record <out>.json must not be the model either.
    model_json = _static_model(tmp_path / "model.json")
    result = runner.invoke(app, ["build-engine", "--target", "jetson", "--onnx", str(model_json),
                                 "--out", str(tmp_path / "model")])
    assert result.exit_code == 2 and "record model.json would overwrite" in _one_line_error(result)
    assert client.requests == [] and model.read_bytes() == original

    # The folder appears at --out while the target builds: the write fails, in one line.
    engine = tmp_path / "late.engine"
    _fake_target(monkeypatch, _FakeClient(while_building=engine.mkdir))
    result = runner.invoke(app, ["build-engine", "--target", "jetson", "--onnx", str(model), "--out", str(engine)])
    assert result.exit_code == 3
    assert "cannot write the engine to" in _one_line_error(result)
    assert engine.is_dir() and not any(engine.iterdir()) and not (tmp_path / "late.engine.json").exists()
