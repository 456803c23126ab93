"""The hybrid supernet: extraction parity, weight-sharing semantics, slicing, sizes."""

import random

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from autonad_edge.models.complexity import count_flops, count_params
from autonad_edge.models.hybrid_block import HybridBlock
from autonad_edge.models.network import SegmentationNet
from autonad_edge.models.supernet import HybridSupernet
from autonad_edge.space import BlockArch, SearchSpace, StageArch

NUM_CLASSES = 6


def perturbed(net: nn.Module, seed: int = 0) -> nn.Module:
    """Move every weight off its initial value so slices that should differ do differ."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return net.eval()


def covering_archs(space: SearchSpace, count: int, seed: int):
    """`count` random archs that together use every operator, kernel, edge op and pool size."""
    rng = random.Random(seed)
    for _ in range(200):
        archs = [space.sample(rng) for _ in range(count)]
        blocks = [(b.op, b.kernel) for a in archs for s in a.stages for b in s.blocks]
        edges = {e for a in archs for e in a.edges}
        if set(blocks) >= set(space.block_choices()) and edges == set(space.edge_ops):
            return archs
    raise AssertionError("could not cover the space")


@pytest.fixture(scope="module")
def default_space():
    return SearchSpace.default()


@pytest.fixture(scope="module")
def default_supernet(default_space):
    torch.manual_seed(0)
    return perturbed(HybridSupernet(default_space, NUM_CLASSES, "cross"))


@pytest.mark.parametrize("size", [(200, 200), (320, 320), (150, 232)])
def test_extraction_parity_default_space(default_supernet, default_space, size):
    x = torch.randn(1, 3, *size)
    for arch in covering_archs(default_space, 3, seed=sum(size)):
        with torch.no_grad():
            expected = default_supernet(x, arch)
            static = default_supernet.extract(arch).eval()
            got = static(x)
        assert got.shape == (1, NUM_CLASSES, *size)
        assert (got - expected).abs().max().item() <= 1e-5, arch.summary()


@pytest.mark.parametrize("sharing", ["cross", "entangled", "classical"])
def test_extraction_parity_many_archs_every_sharing_mode(sharing):
    space = SearchSpace.tiny()
    torch.manual_seed(1)
    net = perturbed(HybridSupernet(space, NUM_CLASSES, sharing), seed=1)
    x = torch.randn(1, 3, 72, 56)
    for arch in covering_archs(space, 8, seed=5):
        with torch.no_grad():
            diff = (net.extract(arch).eval()(x) - net(x, arch)).abs().max().item()
        assert diff <= 1e-5, (sharing, arch.summary())


def test_extracted_network_is_static(default_supernet, default_space):
    arch = default_space.sample(random.Random(11))
    static = default_supernet.extract(arch)
    assert isinstance(static, SegmentationNet)
    assert not any(type(m).__name__.startswith("Elastic") for m in static.modules())
    # A copy, not a view: training the extract leaves the supernet alone.
    before = [p.clone() for p in default_supernet.parameters()]
    with torch.no_grad():
        for p in static.parameters():
            p.add_(1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, default_supernet.parameters()))


def test_outputs_depend_on_the_arch(default_supernet, default_space):
    x = torch.randn(1, 3, 64, 64)
    a, b = (default_space.sample(random.Random(s)) for s in (1, 2))
    with torch.no_grad():
        assert not torch.allclose(default_supernet(x, a), default_supernet(x, b))


def _one_block_arch(space: SearchSpace, op: str, kernel=None):
    base = space.smallest()
    stages = list(base.stages)
    stages[0] = StageArch(stages[0].width, (BlockArch(op, space.stages[0].ffn_ratios[0], kernel),))
    return base.__class__(tuple(stages), base.edges, base.pool_sizes)


def _step1_grads(net: HybridSupernet):
    block = net.stages[0].blocks[0]
    return {key: (m.weight.grad is not None and m.weight.grad.abs().sum().item() > 0) for key, m in block.qkv.items()}


def test_cross_sharing_one_step_one_for_all_operators():
    space = SearchSpace.tiny()
    net = HybridSupernet(space, NUM_CLASSES, "cross")
    block = net.stages[0].blocks[0]
    assert list(block.qkv) == ["shared"] and list(block.proj) == ["shared"]
    assert set(block.step2) == {"transformer", "conv", "mlp"}
    x = torch.randn(1, 3, 32, 32)
    shared_weight = block.qkv["shared"].weight
    for op, kernel in [("transformer", None), ("conv", 3), ("mlp", None)]:
        net.zero_grad(set_to_none=True)
        net(x, _one_block_arch(space, op, kernel)).sum().backward()
        # The transformer, convolution and MLP all update the very same step-I tensor.
        assert shared_weight.grad is not None and shared_weight.grad.abs().sum() > 0, op


def test_classical_sharing_keeps_choices_apart():
    space = SearchSpace.tiny()
    net = HybridSupernet(space, NUM_CLASSES, "classical")
    block = net.stages[0].blocks[0]
    assert set(block.qkv) == {"transformer", "conv3", "conv5", "mlp"}
    net(torch.randn(1, 3, 32, 32), _one_block_arch(space, "transformer")).sum().backward()
    grads = _step1_grads(net)
    assert grads == {"transformer": True, "conv3": False, "conv5": False, "mlp": False}


def test_entangled_sharing_is_per_type():
    space = SearchSpace.tiny()
    net = HybridSupernet(space, NUM_CLASSES, "entangled")
    block = net.stages[0].blocks[0]
    assert set(block.qkv) == {"transformer", "conv", "mlp"}
    net(torch.randn(1, 3, 32, 32), _one_block_arch(space, "conv", 3)).sum().backward()
    assert _step1_grads(net) == {"transformer": False, "conv": True, "mlp": False}
    # Within the type, kernel 3 trains the centre of the stored kernel-5 weights only.
    agg = block.step2["conv"].agg_weight.grad
    assert agg[:, :, 1:4, 1:4, 1:4, 1:4].abs().sum() > 0
    assert agg[:, :, 0].abs().sum() == 0 and agg[..., 0].abs().sum() == 0


def test_width_and_kernel_slicing_semantics(default_supernet, default_space):
    arch = default_space.sample(random.Random(4))
    i = next(i for i, s in enumerate(arch.stages) if s.width < default_space.stages[i].max_width)
    c = arch.stages[i].width
    block = default_supernet.stages[i].blocks[0]
    static: HybridBlock = default_supernet.extract(arch).stages[i].blocks[0]
    qkv = block.qkv["shared"].weight  # [3, Cmax, Cmax]
    fused = static.qkv.proj.weight[:, :, 0, 0]  # [3c, c]
    for t in range(3):  # channels: leading slice of each stored projection
        assert torch.equal(fused[t * c : (t + 1) * c], qkv[t, :c, :c])
    assert torch.equal(static.ffn.fc1.weight, block.ffn.fc1.weight[: static.ffn.fc1.out_channels, :c])
    # kernels: 3 is the centre crop of 5, in the conv operator and in the MFAM edges.
    conv = block.step2["conv"]
    small = conv.extract(c, kernel=3)
    heads = c // default_space.head_dim
    expected = conv.agg_weight[:, :heads, 1:4, 1:4, 1:4, 1:4].reshape(small.aggregate.weight.shape)
    assert torch.equal(small.aggregate.weight, expected)
    edge = default_supernet.decoder.outputs[0]
    stored = edge.shared.weight
    assert torch.equal(edge.extract("conv3x3", 128).conv.weight, stored[:, :, 1:4, 1:4])
    assert torch.equal(edge.extract("conv1x1", 128).conv.weight, stored[:, :, 2:3, 2:3])
    assert torch.equal(edge.extract("dilconv3x3", 128).conv.weight, stored[:, :, ::2, ::2])
    assert torch.equal(edge.extract("dwconv3x3", 128).conv[1].weight, stored[:, :, 2:3, 2:3])


def test_param_count_of_extracted_subnet(default_supernet, default_space):
    for seed in range(3):
        arch = default_space.sample(random.Random(seed))
        static = default_supernet.extract(arch)
        assert count_params(arch, default_space, NUM_CLASSES) == sum(p.numel() for p in static.parameters())
        fresh = SegmentationNet.from_arch(arch, default_space, NUM_CLASSES)
        assert [p.shape for p in fresh.parameters()] == [p.shape for p in static.parameters()]


def test_largest_and_smallest_build_and_run(default_supernet, default_space):
    x = torch.randn(1, 3, 96, 96)
    flops = {}
    for name, arch in (("largest", default_space.largest()), ("smallest", default_space.smallest())):
        with torch.no_grad():
            out = default_supernet.extract(arch).eval()(x)
        assert out.shape == (1, NUM_CLASSES, 96, 96) and torch.isfinite(out).all()
        flops[name] = count_flops(arch, default_space, NUM_CLASSES, (96, 96))
    assert flops["largest"] > 5 * flops["smallest"] > 0


def test_flop_count_is_that_of_the_extracted_subnet(default_supernet, default_space):
    arch = default_space.sample(random.Random(3))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        default_supernet.extract(arch).eval()(torch.zeros(1, 3, 64, 96))
    assert count_flops(arch, default_space, NUM_CLASSES, (64, 96)) == counter.get_total_flops() > 0


def test_supernet_trains_and_set_active(default_space):
    space = SearchSpace.tiny()
    net = HybridSupernet(space, 3, "cross")
    arch = space.sample(random.Random(0))
    net.set_active(arch)
    x, y = torch.randn(1, 3, 32, 32), torch.randint(0, 3, (1, 32, 32))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="sharing"):
        HybridSupernet(space, 3, "partial")


def test_a_decoder_that_pool_branches_do_not_split_into_fours_builds_and_extracts():
    # 64 decoder channels over 3 pyramid-pooling branches is 21 a branch: four channels a group
    # would be 5 groups, which GroupNorm refuses for 21 channels.
    import dataclasses

    space = dataclasses.replace(SearchSpace.tiny(), decoder_channels=64, num_pool_branches=3)
    torch.manual_seed(2)
    net = perturbed(HybridSupernet(space, NUM_CLASSES, "cross"), seed=2)
    x = torch.randn(1, 3, 64, 48)
    arch = space.sample(random.Random(3))
    with torch.no_grad():
        assert (net.extract(arch).eval()(x) - net(x, arch)).abs().max().item() <= 1e-5
