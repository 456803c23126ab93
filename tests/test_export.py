"""ONNX export: portable parity with torch over many architectures, the TensorRT flavour's
plugin nodes, graph simplification, dynamic batch, and `export_module` on sub-modules."""

from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from autonad_edge.export import export_module, export_network
from autonad_edge.export.graph import dead_nodes, graph_report, op_counts, simplify, unused_initializers
from autonad_edge.models.hybrid_block import HybridBlock
from autonad_edge.models.mfam import DecoderEdge, PyramidPooling
from autonad_edge.models.network import SegmentationNet
from autonad_edge.models.spatial_shift import spatial_shift
from autonad_edge.models.supernet import HybridSupernet
from autonad_edge.space import EDGE_OPS, BlockArch, SearchSpace, iter_blocks

TOL = 1e-4
# Non-square (wide and tall), and sizes that are not multiples of the strides (patch
# embeddings and the attention's spatial reduction pad), so every padding path is exported
# too; aligned sizes are what every other export test uses.
SIZES = [(50, 74), (72, 40), (45, 61)]
N_TINY_ARCHS = len(SIZES)


def _choices(arch):
    ops = {f"conv{b.kernel}" if b.op == "conv" else b.op for _, _, b in iter_blocks(arch)}
    return ops, set(arch.edges)


def _pick_archs(space: SearchSpace, n: int):
    """`n` random archs (seeded) chosen greedily so that together they use every operator
    choice (transformer, conv3, conv5, mlp) and every MFAM edge op."""
    want_ops = {"transformer", "conv3", "conv5", "mlp"}
    want_edges = set(EDGE_OPS)
    # Shallow archs: export time grows with the graph, and depth adds no new export path.
    pool = [a for a in (space.sample(random.Random(seed)) for seed in range(400)) if sum(a.depths) <= 6]
    picked = []
    while len(picked) < n:
        def gain(a):
            ops, edges = _choices(a)
            return len((ops & want_ops) | (edges & want_edges)), -pool.index(a)

        best = max((a for a in pool if a not in picked), key=gain)
        picked.append(best)
        ops, edges = _choices(best)
        want_ops -= ops
        want_edges -= edges
    assert not want_ops and not want_edges, "the picked archs must cover every choice"
    return picked


TINY = SearchSpace.tiny()
TINY_ARCHS = _pick_archs(TINY, N_TINY_ARCHS)


def _ort(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # small graphs; no spinning thread pool on a 2-core CI box
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _assert_clean(model: onnx.ModelProto) -> None:
    assert dead_nodes(model) == []
    assert unused_initializers(model) == []
    counts = op_counts(model)
    assert counts["Identity"] == 0 and counts["Constant"] == 0
    assert all(not n.doc_string for n in model.graph.node)
    assert sum(counts.values()) == len(model.graph.node) == graph_report(model).nodes


def _mlp_blocks(arch) -> int:
    return sum(b.op == "mlp" for _, _, b in iter_blocks(arch))


@pytest.mark.parametrize("index", range(N_TINY_ARCHS), ids=[a.summary() for a in TINY_ARCHS])
def test_portable_matches_torch(index):
    arch, (h, w) = TINY_ARCHS[index], SIZES[index]
    torch.manual_seed(index)
    net = SegmentationNet.from_arch(arch, TINY, num_classes=3).eval()
    dynamic = index == N_TINY_ARCHS - 1  # one dynamic-batch export: it costs twice a static one
    model = export_network(net, (h, w), "portable", dynamic_batch=dynamic)
    onnx.checker.check_model(model, full_check=True)
    _assert_clean(model)
    assert not any(n.domain == "autonad" for n in model.graph.node)
    assert [o.domain for o in model.opset_import] == [""] and model.opset_import[0].version >= 17
    session = _ort(model)
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("image", "logits")
    assert inp.shape[1:] == [3, h, w]
    for batch in (1, 3) if dynamic else (1,):
        x = torch.randn(batch, 3, h, w)
        with torch.no_grad():
            expected = net(x).numpy()
        got = session.run(None, {"image": x.numpy()})[0]
        assert got.shape == (batch, 3, h, w)
        assert np.abs(got - expected).max() < TOL
    if dynamic:
        assert isinstance(inp.shape[0], str) and isinstance(out.shape[0], str)
    else:
        assert inp.shape[0] == 1


def test_default_space_arch_both_flavours():
    """A paper-space arch (Table I widths) with MLP blocks: portable parity, and the TensorRT
    flavour with one plugin node per shift (two per MLP block)."""
    space = SearchSpace.default()
    arch = next(
        a for a in (space.sample(random.Random(s)) for s in range(100))
        if _mlp_blocks(a) >= 2 and sum(a.depths) <= 7
    )
    net = SegmentationNet.from_arch(arch, space, num_classes=4).eval()
    x = torch.randn(1, 3, 80, 112)
    portable = export_network(net, (80, 112), "portable")
    onnx.checker.check_model(portable, full_check=True)
    with torch.no_grad():
        expected = net(x).numpy()
    assert np.abs(_ort(portable).run(None, {"image": x.numpy()})[0] - expected).max() < TOL

    trt = export_network(net, (80, 112), "tensorrt")
    onnx.checker.check_model(trt, full_check=True)
    _assert_clean(trt)
    shifts = [n for n in trt.graph.node if n.op_type == "SpatialShift"]
    assert len(shifts) == 2 * _mlp_blocks(arch)
    # Everything else is the same graph, with the Slice/Concat lowering gone.
    p, t = op_counts(portable), op_counts(trt)
    assert t["Slice"] == 0 and p["Slice"] > 0
    assert {k: v for k, v in p.items() if k not in ("Slice", "Concat")} == {
        k: v for k, v in t.items() if k not in ("autonad::SpatialShift", "Concat")
    }


def test_tensorrt_flavour_plugin_nodes():
    arch = next(a for a in TINY_ARCHS if _mlp_blocks(a) >= 2)
    net = SegmentationNet.from_arch(arch, TINY, num_classes=2).eval()
    model = export_network(net, (48, 80), "tensorrt")
    onnx.checker.check_model(model, full_check=True)
    _assert_clean(model)
    shifts = [n for n in model.graph.node if n.op_type == "SpatialShift"]
    assert len(shifts) == 2 * _mlp_blocks(arch)
    assert all(n.domain == "autonad" for n in shifts)
    assert {o.domain: o.version for o in model.opset_import} == {"": 18, "autonad": 1}
    patterns = []
    for node in shifts:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert set(attrs) == {"pattern", "plugin_version", "plugin_namespace"}
        assert attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == b"autonad"
        # The plugin creator reads `pattern` as an INT field (kINT32): a float or string breaks it.
        kinds = {a.name: a.type for a in node.attribute}
        assert kinds["pattern"] == onnx.AttributeProto.INT
        assert kinds["plugin_version"] == kinds["plugin_namespace"] == onnx.AttributeProto.STRING
        assert len(node.input) == len(node.output) == 1
        patterns.append(attrs["pattern"])
    # q is shifted with pattern 1, k with pattern 2, in every MLP block.
    assert Counter(patterns) == {1: _mlp_blocks(arch), 2: _mlp_blocks(arch)}
    # The plugin's outputs keep their shapes in the graph (TensorRT and shape inference).
    value_info = {v.name: v for v in model.graph.value_info}
    for node in shifts:
        dims = [d.dim_value for d in value_info[node.output[0]].type.tensor_type.shape.dim]
        assert len(dims) == 4 and all(d > 0 for d in dims)
    assert {p.key: p.value for p in model.metadata_props}["autonad.flavor"] == "tensorrt"
    # ONNX Runtime has no such op: it refuses the model, cleanly and by name.
    with pytest.raises(Exception, match="SpatialShift"):
        _ort(model)


@pytest.mark.parametrize("shape", [(2, 7, 3, 9), (1, 3, 1, 5), (1, 6, 4, 1), (1, 1, 2, 2)])
def test_portable_shift_lowering_edge_cases(shape):
    """C not divisible by 4, empty groups (C < 4), H or W of 1: the lowering is exact."""

    class Both(torch.nn.Module):
        def forward(self, x):
            return spatial_shift(x, 1), spatial_shift(x, 2)

    x = torch.randn(*shape)
    model = export_module(Both(), (x,), "portable", simplify="fast")
    onnx.checker.check_model(model, full_check=True)
    got = _ort(model).run(None, {"input": x.numpy()})
    for pattern, out in zip((1, 2), got):
        assert np.array_equal(out, spatial_shift(x, pattern).numpy())


def test_export_module_on_sub_modules():
    """What the latency tables export: blocks, edges, the PPM, a whole stage (from a supernet);
    portable runs in ONNX Runtime like torch, the TensorRT flavour has two plugin nodes per MLP."""
    torch.manual_seed(0)
    supernet = HybridSupernet(TINY, num_classes=3)
    arch = next(a for a in (TINY.sample(random.Random(seed)) for seed in range(400))
                if any(b.op == "mlp" for b in a.stages[1].blocks) and sum(a.depths) <= 6)
    stage = supernet.extract(arch).stages[1]
    modules = [
        (HybridBlock.build(32, BlockArch("mlp", 2.0), 16, 2), (1, 32, 9, 13)),
        (HybridBlock.build(32, BlockArch("transformer", 3.0), 16, 2), (1, 32, 9, 13)),
        (HybridBlock.build(48, BlockArch("conv", 2.0, 5), 16, 1), (1, 48, 5, 7)),
        (DecoderEdge("dwconv3x3", 48, 32), (1, 48, 7, 5)),
        (PyramidPooling(64, 32, (1, 2, 3, 6)), (1, 64, 5, 7)),
    ]
    for module, shape in modules:
        x = torch.randn(*shape)
        model = export_module(module, (x,), "portable", input_names=["x"], output_names=["y"])
        onnx.checker.check_model(model, full_check=True)
        _assert_clean(model)
        with torch.no_grad():
            expected = module.eval()(x).numpy()
        got = _ort(model).run(["y"], {"x": x.numpy()})[0]
        assert np.abs(got - expected).max() < TOL
    for module, shape in (modules[0], (stage, (1, arch.widths[0], 16, 24))):
        model = export_module(module, (torch.randn(*shape),), "tensorrt")
        onnx.checker.check_model(model, full_check=True)
        n_mlp = sum(type(m).__name__ == "ShiftMLP" for m in module.modules())
        assert n_mlp >= 1
        assert sum(n.op_type == "SpatialShift" for n in model.graph.node) == 2 * n_mlp
    # The byte form is the same model.
    from autonad_edge.export import export_module_bytes

    data = export_module_bytes(modules[3][0], (torch.randn(1, 48, 7, 5),), "portable")
    assert op_counts(onnx.load_model_from_string(data))["Conv"] == 2


def test_dynamic_batch_sub_module_and_training_mode_restored():
    block = HybridBlock.build(32, BlockArch("mlp", 2.0), 16, 2).train()
    model = export_module(block, (torch.randn(1, 32, 6, 10),), "portable", dynamic_batch=True)
    assert block.training, "export must restore the module's mode"
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.HasField("dim_value")
    session = _ort(model)
    block.eval()
    for batch in (1, 3):
        x = torch.randn(batch, 32, 6, 10)
        with torch.no_grad():
            expected = block(x).numpy()
        assert np.abs(session.run(None, {"input": x.numpy()})[0] - expected).max() < TOL


def test_simplify_removes_dead_code_and_folds_constants():
    """A hand-made graph with an Identity chain, a constant-only subgraph, a dead branch and an
    unused initializer comes out as one Add with a folded constant."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    two = helper.make_tensor("two", TensorProto.FLOAT, [3], [2.0, 2.0, 2.0])
    unused = helper.make_tensor("unused", TensorProto.FLOAT, [4], [0.0] * 4)
    nodes = [
        helper.make_node("Constant", [], ["c"], value=helper.make_tensor("cv", TensorProto.FLOAT, [3], [1, 2, 3])),
        helper.make_node("Mul", ["c", "two"], ["c2"]),  # constant-only: folds
        helper.make_node("Identity", ["x"], ["i1"]),
        helper.make_node("Identity", ["i1"], ["i2"]),
        helper.make_node("Add", ["i2", "c2"], ["y"]),
        helper.make_node("Relu", ["x"], ["dead"]),  # reaches no output
    ]
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=[two, unused])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert dead_nodes(model) == ["Relu"] and unused_initializers(model) == ["unused"]
    for level in ("full", "fast"):
        out = simplify(model, level)
        onnx.checker.check_model(out, full_check=True)
        assert op_counts(out) == {"Add": 1}
        assert len(out.graph.initializer) == 1
        folded = onnx.numpy_helper.to_array(out.graph.initializer[0])
        assert folded.tolist() == [2.0, 4.0, 6.0]
        session = _ort(out)
        xv = np.ones((2, 3), np.float32)
        assert session.run(None, {"x": xv})[0].tolist() == [[3.0, 5.0, 7.0]] * 2


def test_network_metadata_carries_the_checkpoints_classes_and_training_scale():
    """What only the checkpoint knows (class names, the training scale's max_side, squash) goes
    into the model's metadata when given, so a bundle of the model alone preprocesses as
    training did; not given, the model is as before (the export caches key on its bytes)."""
    from autonad_edge.export import ExportError

    net = SegmentationNet.from_arch(TINY_ARCHS[0], TINY, num_classes=3).eval()
    meta = {p.key: p.value for p in export_network(net, (32, 48), class_names=["bg", "crack", "dent"],
                                                   max_side=512, squash=False).metadata_props}
    assert json.loads(meta["autonad.class_names"]) == ["bg", "crack", "dent"]
    assert meta["autonad.max_side"] == "512" and meta["autonad.squash"] == "false"
    assert meta["autonad.num_classes"] == "3" and meta["autonad.image_size"] == "32x48"
    plain = {p.key for p in export_network(net, (32, 48)).metadata_props}
    assert not plain & {"autonad.class_names", "autonad.max_side", "autonad.squash"}
    with pytest.raises(ExportError, match="2 class names for a network of 3 classes"):
        export_network(net, (32, 48), class_names=["bg", "crack"])


def test_bad_arguments():
    block = DecoderEdge("conv1x1", 8, 8)
    x = torch.randn(1, 8, 4, 4)
    with pytest.raises(ValueError, match="flavor"):
        export_module(block, (x,), "tflite")
    with pytest.raises(ValueError, match="input names"):
        export_module(block, (x,), input_names=["a", "b"])
    with pytest.raises(ValueError, match="opset"):
        export_module(block, (x,), opset=13)

    class DataDependent(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x

    from autonad_edge.export import ExportError

    with pytest.raises(ExportError, match="DataDependent") as info:
        export_module(DataDependent(), (x,))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("flavor", ["portable", "tensorrt"])
def test_cached_exporter_registry_gives_the_public_exporters_model(flavor, monkeypatch):
    """Exports reuse one op registry (rebuilding it is half of a small export); the model must be
    byte-identical to what the public `torch.onnx.export` path writes."""
    import autonad_edge.export.onnx_export as onnx_export

    torch.manual_seed(0)
    block = HybridBlock.build(16, BlockArch("mlp", 2.0), 16, 2)
    x = torch.randn(1, 16, 8, 8)
    cached = export_module(block, (x,), flavor=flavor).SerializeToString()
    assert onnx_export._REGISTRIES[(flavor, onnx_export.OPSET)] is not None
    monkeypatch.setitem(onnx_export._REGISTRIES, (flavor, onnx_export.OPSET), None)
    public = export_module(block, (x,), flavor=flavor).SerializeToString()
    assert cached == public
