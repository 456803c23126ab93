"""Latency units: shapes as the network computes them, signatures, exported graphs in ORT."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from autonad_edge.export.onnx_export import export_unit
from autonad_edge.latency.blocks import (
    Unit,
    block_units,
    edge_unit,
    feature_sizes,
    ffn_hidden,
    mixer_unit,
    ppm_units,
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
        for j in range(stage.depth):  # a block is timed as its two steps, both on its input's shape
            expected += [("mixer", seen[f"stage{i}.block{j}"]), ("ffn", seen[f"stage{i}.block{j}"])]
    (x4,) = seen["ppm"]
    branch = (1, dec.ppm.branches[0][0].out_channels, *x4[-2:])
    expected += [("pool_branch", [x4])] * len(arch.pool_sizes)
    expected.append(("pool_fuse", [x4] + [branch] * len(arch.pool_sizes)))
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


def test_parts_compute_the_whole_block_and_pyramid_pooling():
    """A block is its mixer then its FFN, the PPM its branches then its fuse: with the
    network's weights copied in, the unit modules compute the network's output exactly."""
    torch.manual_seed(0)
    net = SegmentationNet.from_arch(SPACE.largest("transformer", "conv3x3"), SPACE, 5).eval()
    block, stage_arch = net.stages[1].blocks[0], net.arch.stages[1]
    mixer, ffn = (u.build() for u in block_units(stage_arch.width, stage_arch.blocks[0], (8, 8), SPACE.head_dim,
                                                 SPACE.stages[1].sr_ratio))
    for part in (mixer, ffn):
        missing = part.load_state_dict(block.state_dict(), strict=False).missing_keys
        assert not missing
    x = torch.randn(1, stage_arch.width, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ffn(mixer(x)), block(x))
    ppm = net.decoder.ppm
    *branch_units, fuse_unit = ppm_units(net.arch.stages[3].width, SPACE.decoder_channels, net.arch.pool_sizes, (4, 3))
    x4 = torch.randn(1, net.arch.stages[3].width, 4, 3)
    with torch.no_grad():
        pooled = []
        for unit, branch in zip(branch_units, ppm.branches):
            module = unit.build()
            module.branch.load_state_dict(branch.state_dict())
            pooled.append(module(x4))
        fuse = fuse_unit.build()
        fuse.fuse.load_state_dict(ppm.fuse.state_dict())
        torch.testing.assert_close(fuse(x4, *pooled), ppm(x4))


def test_units_cover_the_network_parameters():
    for seed in range(4):
        arch = _arch(seed)
        net = SegmentationNet.from_arch(arch, SPACE, 5)
        units = units_of(arch, SPACE, 5, 64)
        unit_params = sum(p.numel() for u in units for p in u.build().parameters())
        assert unit_params == sum(p.numel() for p in net.parameters())
    # Parts are shared: the default space needs far fewer units than blocks and PPMs.
    kinds = {}
    for u in space_units(SearchSpace.tiny(), 5, 128):
        kinds[u.kind] = kinds.get(u.kind, 0) + 1
    ops = len(SPACE.block_choices())
    deep = [s for s in SPACE.stages if s.max_depth]
    assert kinds["mixer"] == ops * sum(len(s.widths) for s in deep)
    assert kinds["ffn"] == sum(len(s.widths) * len(s.ffn_ratios) for s in deep)
    assert kinds["pool_branch"] == len(SPACE.stages[3].widths) * len(SPACE.pool_size_choices)
    assert kinds["pool_fuse"] == len(SPACE.stages[3].widths)


def test_mirrored_constants():
    from autonad_edge.latency import blocks
    from autonad_edge.models.mix_ffn import ffn_hidden as model_ffn_hidden

    assert (blocks.EMBED_KERNELS, blocks.EMBED_STRIDES) == (EMBED_KERNELS, EMBED_STRIDES)
    for c in (16, 24, 48, 288):
        for r in (2.0, 3.5, 7.5, 8.5):
            assert ffn_hidden(c, r) == model_ffn_hidden(c, r)


def test_signatures_are_stable_weight_free_and_position_free():
    unit, ffn = block_units(32, BlockArch("conv", 2.0, 5), (8, 8), 16, 4, label="stage2.block1")
    # Pinned: the same unit has the same key on every run and machine (the table relies on it).
    assert unit.signature == (
        '{"channels":32,"head_dim":16,"inputs":[[1,32,8,8]],"kernel":5,"kind":"mixer","op":"conv","v":2}'
    )
    assert ffn.signature == '{"channels":32,"hidden":64,"inputs":[[1,32,8,8]],"kind":"ffn","v":2}'
    assert unit.key == Unit.make("mixer", [(1, 32, 8, 8)], **unit.config).key
    # Position / label is not part of it; neither are weights.
    assert block_units(32, BlockArch("conv", 2.0, 5), (8, 8), 16, 4, label="stage2.block3") == (unit, ffn)
    # Two builds have different weights but are the same unit.
    a, b = unit.build(), unit.build()
    assert not torch.equal(a.proj.weight, b.proj.weight)
    # The sr ratio only matters to the transformer; the kernel only to conv; the FFN ratio
    # only to the FFN, which every operator shares.
    assert mixer_unit(32, "mlp", None, (8, 8), 16, 4).key == mixer_unit(32, "mlp", None, (8, 8), 16, 1).key
    assert mixer_unit(32, "transformer", None, (8, 8), 16, 4).key != mixer_unit(
        32, "transformer", None, (8, 8), 16, 2).key
    assert block_units(32, BlockArch("mlp", 2.0), (8, 8), 16, 4)[1] == ffn
    assert block_units(32, BlockArch("conv", 3.0, 5), (8, 8), 16, 4)[0] == unit


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
    keys = {block_units(**v) for v in variants}
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
    picked["transformer"] = mixer_unit(16, "transformer", None, (10, 9), 16, 8)
    picked["conv"] = mixer_unit(16, "conv", 5, (10, 9), 16, 8)
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
        assert len(space_units(SearchSpace.default(), 6, 320)) > 200
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
