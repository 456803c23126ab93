"""Latency units: shapes as the network computes them, signatures, exported graphs in ORT."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from autonad_edge.export.onnx_export import export_unit
from autonad_edge.latency.blocks import (
    Unit,
    block_unit,
    edge_unit,
    feature_sizes,
    ffn_hidden,
    space_units,
    units_of,
)
from autonad_edge.models.network import EMBED_KERNELS, EMBED_STRIDES, SegmentationNet
from autonad_edge.space import BlockArch, SearchSpace

SPACE = SearchSpace.tiny()


def _arch(seed: int):
    return SPACE.sample(random.Random(seed))


def _network_shapes(arch, size):
    """Input shapes of every unit's counterpart in the real network, in `units_of` order."""
    net = SegmentationNet.from_arch(arch, SPACE, 5).eval()
    seen: dict[str, list] = {}

    def pre(name):
        def hook(_module, args):
            seen[name] = [tuple(a.shape) for a in args]
        return hook

    def post(name):
        def hook(_module, _args, out):
            seen[name] = tuple(out.shape)
        return hook

    for i, stage in enumerate(net.stages):
        stage.register_forward_pre_hook(pre(f"stage{i}"))
        stage.register_forward_hook(post(f"stage{i}.out"))
        for j, block in enumerate(stage.blocks):
            block.register_forward_pre_hook(pre(f"stage{i}.block{j}"))
    dec = net.decoder
    dec.ppm.register_forward_pre_hook(pre("ppm"))
    dec.ppm.register_forward_hook(post("ppm.out"))
    for i in range(3):
        dec.laterals[i].register_forward_pre_hook(pre(f"lateral{i}"))
        dec.laterals[i].register_forward_hook(post(f"lateral{i}.out"))
        dec.outputs[i].register_forward_pre_hook(pre(f"output{i}"))
        dec.outputs[i].register_forward_hook(post(f"output{i}.out"))
    with torch.no_grad():
        logits = net(torch.randn(1, 3, *size))
    expected = []
    for i, stage in enumerate(arch.stages):
        expected.append(("embed", seen[f"stage{i}"]))
        expected += [("block", seen[f"stage{i}.block{j}"]) for j in range(stage.depth)]
    expected.append(("ppm", seen["ppm"]))
    coarse = seen["ppm.out"]
    for i in (2, 1, 0):
        expected.append(("edge", seen[f"lateral{i}"]))
        expected.append(("merge", [coarse, seen[f"lateral{i}.out"]]))
        expected.append(("edge", seen[f"output{i}"]))
        coarse = seen[f"output{i}"][0]  # the merged f at this level
    head_in = [seen["ppm.out"], seen["output2.out"], seen["output1.out"], seen["output0.out"]]
    if dec.detail is not None:  # the detail path reads the image: the head's fifth input
        head_in.append((1, 3, *size))
    expected.append(("head", head_in))
    stage_out = [seen[f"stage{i}.out"] for i in range(4)]
    return expected, stage_out, tuple(logits.shape)


@pytest.mark.parametrize("seed,size", [(0, (64, 64)), (3, (70, 50)), (5, (33, 97))])
def test_unit_shapes_match_the_network(seed, size):
    arch = _arch(seed)
    units = units_of(arch, SPACE, 5, size)
    expected, stage_out, logits_shape = _network_shapes(arch, size)
    assert [(u.kind, [tuple(s) for s in u.inputs]) for u in units] == expected
    assert [s[-2:] for s in stage_out] == feature_sizes(size)
    # ceil(H/4), then ceil(/2) per stage
    h, w = size
    sizes = []
    for k in range(4):
        h, w = (-(-h // 4), -(-w // 4)) if k == 0 else (-(-h // 2), -(-w // 2))
        sizes.append((h, w))
    assert feature_sizes(size) == sizes
    # The unit modules compute the same output shapes as the network.
    with torch.no_grad():
        embeds = [u for u in units if u.kind == "embed"]
        assert [tuple(u.build()(*u.example_inputs()).shape) for u in embeds] == stage_out
        head = units[-1]
        assert tuple(head.build()(*head.example_inputs()).shape) == logits_shape


def test_units_cover_the_network_parameters():
    for seed in range(4):
        arch = _arch(seed)
        net = SegmentationNet.from_arch(arch, SPACE, 5)
        units = units_of(arch, SPACE, 5, 64)
        unit_params = sum(p.numel() for u in units for p in u.build().parameters())
        assert unit_params == sum(p.numel() for p in net.parameters())


def test_mirrored_constants():
    from autonad_edge.latency import blocks
    from autonad_edge.models.mix_ffn import ffn_hidden as model_ffn_hidden

    assert (blocks.EMBED_KERNELS, blocks.EMBED_STRIDES) == (EMBED_KERNELS, EMBED_STRIDES)
    for c in (16, 24, 48, 288):
        for r in (2.0, 3.5, 7.5, 8.5):
            assert ffn_hidden(c, r) == model_ffn_hidden(c, r)


def test_signatures_are_stable_weight_free_and_position_free():
    unit = block_unit(32, BlockArch("conv", 2.0, 5), (8, 8), 16, 4, label="stage2.block1")
    # Pinned: the same unit has the same key on every run and machine (the table relies on it).
    assert unit.signature == (
        '{"channels":32,"head_dim":16,"hidden":64,"inputs":[[1,32,8,8]],"kernel":5,"kind":"block","op":"conv","v":1}'
    )
    assert unit.key == Unit.make("block", [(1, 32, 8, 8)], **unit.config).key
    # Position / label is not part of it; neither are weights.
    assert block_unit(32, BlockArch("conv", 2.0, 5), (8, 8), 16, 4, label="stage2.block3") == unit
    # Two builds have different weights but are the same unit.
    a, b = unit.build(), unit.build()
    assert not torch.equal(a.proj.weight, b.proj.weight)
    # The sr ratio only matters to the transformer; the kernel only to conv.
    assert block_unit(32, BlockArch("mlp", 2.0), (8, 8), 16, 4).key == block_unit(32, BlockArch("mlp", 2.0), (8, 8), 16, 1).key
    assert block_unit(32, BlockArch("transformer", 2.0), (8, 8), 16, 4).key != block_unit(
        32, BlockArch("transformer", 2.0), (8, 8), 16, 2).key


def test_signatures_differ_for_different_configs():
    base = dict(channels=32, block=BlockArch("conv", 2.0, 3), hw=(8, 8), head_dim=16, sr_ratio=4)
    variants = [
        dict(base),
        {**base, "channels": 48},
        {**base, "block": BlockArch("conv", 2.0, 5)},
        {**base, "block": BlockArch("conv", 3.0, 3)},
        {**base, "block": BlockArch("mlp", 2.0)},
        {**base, "block": BlockArch("transformer", 2.0)},
        {**base, "hw": (8, 9)},
        {**base, "head_dim": 8},
    ]
    keys = {block_unit(**v).key for v in variants}
    assert len(keys) == len(variants)
    edges = {edge_unit(op, 32, 32, (8, 8)).key for op in SPACE.edge_ops}
    assert len(edges) == len(SPACE.edge_ops)
    # Every unit of the space is distinct, and every unit of a sampled arch is one of them.
    every = space_units(SPACE, 5, 64)
    assert len({u.key for u in every}) == len(every)
    keys = {u.key for u in every}
    for seed in range(20):
        assert {u.key for u in units_of(_arch(seed), SPACE, 5, 64)} <= keys


def test_exported_units_run_in_onnxruntime():
    import onnxruntime as ort

    arch = SearchSpace.tiny().largest("mlp", "dwconv3x3")
    units = units_of(arch, SPACE, 5, (40, 36))
    picked = {}
    for u in units:
        picked.setdefault(u.kind, u)
    picked["transformer"] = block_unit(16, BlockArch("transformer", 2.0), (10, 9), 16, 8)
    picked["conv"] = block_unit(16, BlockArch("conv", 2.0, 5), (10, 9), 16, 8)
    for name, unit in picked.items():
        module = unit.build()
        inputs = unit.example_inputs()
        model = export_unit(unit, module=module)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        feed = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)}
        (out,) = session.run(None, feed)
        with torch.no_grad():
            ref = module(*inputs).numpy()
        assert out.shape == ref.shape, name
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4, err_msg=name)


def test_latency_modules_import_without_torch(run_without_torch):
    """The agent side imports `autonad_edge.latency`; these modules must not pull torch in."""
    result = run_without_torch(
        """
        import importlib, sys
        for name in ("blocks", "profiler", "estimator", "prior", "background"):
            importlib.import_module(f"autonad_edge.latency.{name}")
        importlib.import_module("autonad_edge.cli.latency_profile")
        from autonad_edge.latency.blocks import space_units
        from autonad_edge.space import SearchSpace
        assert len(space_units(SearchSpace.default(), 6, 320)) > 300
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
