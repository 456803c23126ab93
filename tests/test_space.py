"""The search space and architecture encoding (pure Python)."""

import dataclasses
import json
import random
import subprocess
import sys
from collections import Counter

import pytest

from autonad_edge.space import EDGE_NAMES, Arch, ArchError, ChoicePrior, SearchSpace


@pytest.fixture(scope="module")
def space():
    return SearchSpace.default()


def test_default_space_is_table_one(space):
    s1, s2, s3, s4 = space.stages
    assert s1.widths == (32, 64)
    assert s2.widths == (32, 64, 96, 128)
    assert s3.widths == (128, 160, 192, 224)
    assert s4.widths == (192, 224, 256, 288)
    assert s1.ffn_ratios == s2.ffn_ratios == (7.5, 8.0, 8.5, 9.0)
    assert s3.ffn_ratios == s4.ffn_ratios == (3.5, 4.0, 4.5, 5.0)
    assert all(s.depths == (1, 2, 3, 4) for s in space.stages)
    assert space.kernels == (3, 5)
    assert space.operators == ("transformer", "conv", "mlp")
    assert space.pool_size_choices == (1, 2, 3, 4, 5, 6)


def test_space_module_imports_without_torch():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, *a):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import autonad_edge.space as s, random\n"
        "print(s.SearchSpace.default().sample(random.Random(0)).hash)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert len(out.stdout.strip()) == 16


def test_json_round_trip_and_stable_hash(space):
    rng = random.Random(7)
    for _ in range(50):
        arch = space.sample(rng)
        again = Arch.from_json(arch.to_json())
        assert again == arch
        assert again.hash == arch.hash
        assert space.validate(again) is again
    # The hash is a function of the content, fixed across runs and machines.
    assert space.largest().hash == SearchSpace.default().largest().hash
    assert space.largest().hash != space.smallest().hash


def test_space_round_trips_and_is_configurable():
    tiny = SearchSpace.tiny()
    assert SearchSpace.from_json(tiny.to_json()) == tiny
    data = json.loads(SearchSpace.default().to_json())
    data["stages"][0]["widths"] = [32]
    custom = SearchSpace.from_dict(data)
    assert all(custom.sample(random.Random(i)).stages[0].width == 32 for i in range(20))
    data["stages"][1]["widths"] = [48]  # not a multiple of head_dim 32
    with pytest.raises(ArchError, match=r"stages\[1\]\.widths"):
        SearchSpace.from_dict(data)


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda d: d["stages"][1].update(width=100), r"stages\[1\]\.width"),
        (lambda d: d["stages"][2]["blocks"][0].update(ffn_ratio=7.5), r"stages\[2\]\.blocks\[0\]\.ffn_ratio"),
        (lambda d: d["stages"][0]["blocks"][0].update(op="lstm"), r"stages\[0\]\.blocks\[0\]\.op"),
        (lambda d: d["stages"][0]["blocks"][0].update(op="conv", kernel=7), r"stages\[0\]\.blocks\[0\]\.kernel"),
        (lambda d: d["stages"][0]["blocks"][0].update(op="mlp", kernel=3), r"only conv blocks"),
        (lambda d: d["stages"][3].update(blocks=[]), r"stages\[3\]\.depth"),
        (lambda d: d["mfam"]["edges"].update(output2="conv7x7"), r"mfam\.edges\.output2"),
        (lambda d: d["mfam"].update(pool_sizes=[6, 1, 2, 3]), r"distinct and ascending"),
        (lambda d: d["mfam"].update(pool_sizes=[1, 2, 3]), r"expected 4 sizes"),
    ],
)
def test_validation_names_the_bad_field(space, edit, field):
    data = space.sample(random.Random(1)).to_dict()
    for s in data["stages"]:  # make edits land on blocks that exist
        while len(s["blocks"]) < 1:
            s["blocks"].append({"op": "mlp", "ffn_ratio": 8.0, "kernel": None})
    edit(data)
    with pytest.raises(ArchError, match=field):
        space.validate(Arch.from_dict(data))


def test_malformed_json_is_a_clear_error():
    with pytest.raises(ArchError, match="not valid JSON"):
        Arch.from_json("{nope")
    with pytest.raises(ArchError, match="missing the field 'stages'"):
        Arch.from_json('{"mfam": {}}')
    with pytest.raises(ArchError, match="missing lateral1"):
        Arch.from_dict({"stages": [], "mfam": {"edges": {}, "pool_sizes": []}})


def test_uniform_sampling_covers_every_choice(space):
    rng = random.Random(0)
    archs = [space.sample(rng) for _ in range(600)]
    ops = Counter(b.op for a in archs for s in a.stages for b in s.blocks)
    # Uniform over three operators: each near a third.
    total = sum(ops.values())
    assert all(abs(ops[o] / total - 1 / 3) < 0.04 for o in space.operators)
    assert {b.kernel for a in archs for s in a.stages for b in s.blocks if b.op == "conv"} == {3, 5}
    assert {a.stages[2].width for a in archs} == set(space.stages[2].widths)
    assert {a.stages[0].depth for a in archs} == {1, 2, 3, 4}
    assert {e for a in archs for e in a.edges} == set(space.edge_ops)
    assert {p for a in archs for p in a.pool_sizes} == set(range(1, 7))
    assert len({a.hash for a in archs}) == len(archs)


def test_prior_biases_operator_sampling(space):
    prior = ChoicePrior(
        ops=tuple(tuple({"mlp": 0.8, "conv": 0.1, "transformer": 0.1} for _ in range(4)) for _ in range(4)),
        edges={n: {"conv1x1": 1.0} for n in EDGE_NAMES},
    )
    rng = random.Random(0)
    archs = [space.sample(rng, prior) for _ in range(300)]
    ops = Counter(b.op for a in archs for s in a.stages for b in s.blocks)
    assert ops["mlp"] / sum(ops.values()) > 0.7
    assert all(set(a.edges) == {"conv1x1"} for a in archs)
    assert ChoicePrior.from_dict(json.loads(json.dumps(prior.to_dict()))) == prior


def test_mutation_and_crossover_stay_in_space(space):
    rng = random.Random(3)
    parents = [space.sample(rng) for _ in range(40)]
    for a, b in zip(parents, parents[1:]):
        assert space.mutate(a, rng, 0.0) == a
        m = space.mutate(a, rng, 0.5)
        space.validate(m)
        c = space.crossover(a, b, rng)
        space.validate(c)
        # Every gene of a child comes from a parent.
        for i, stage in enumerate(c.stages):
            assert stage.width in (a.stages[i].width, b.stages[i].width)
            for j, block in enumerate(stage.blocks):
                assert block in [s.blocks[j] for s in (a.stages[i], b.stages[i]) if j < s.depth]
        assert all(e in pair for e, pair in zip(c.edges, zip(a.edges, b.edges)))
    changed = sum(space.mutate(a, rng, 0.3) != a for a in parents)
    assert changed > 30


def test_extremes(space):
    big, small = space.largest(), space.smallest()
    assert big.widths == (64, 128, 224, 288) and big.depths == (4, 4, 4, 4)
    assert small.widths == (32, 32, 128, 192) and small.depths == (1, 1, 1, 1)
    assert big.pool_sizes == (3, 4, 5, 6) and small.pool_sizes == (1, 2, 3, 4)


def test_the_detail_path_is_a_space_setting_absent_from_the_paper_space_and_old_json():
    from autonad_edge.latency.blocks import space_units

    assert SearchSpace.named("tiny").detail_channels == SearchSpace.named("default").detail_channels == 16
    assert SearchSpace.named("paper").detail_channels == 0
    old = SearchSpace.tiny().to_dict()
    del old["detail_channels"]  # a space saved before the detail path existed
    plain = SearchSpace.from_dict(old)
    assert plain.detail_channels == 0 and plain != SearchSpace.tiny()
    # Without the path the head keeps its earlier signature (its table entries stay valid);
    # with it the head reads the image as a fifth input.
    head = {s.detail_channels: [u for u in space_units(s, 5, 64) if u.kind == "head"][0]
            for s in (plain, SearchSpace.tiny())}
    assert "detail_channels" not in head[0].config and len(head[0].inputs) == 4
    assert head[16].config["detail_channels"] == 16 and head[16].inputs[-1] == (1, 3, 64, 64)
    with pytest.raises(ArchError, match="detail_channels"):
        SearchSpace.from_dict({**old, "detail_channels": 6})


def test_repeated_pool_sizes_are_refused_where_the_space_is_read():
    """An arch's pool sizes are distinct: a space offering one size twice would sample archs its
    own validate() refuses, so it is refused when read, naming the field."""
    data = json.loads(SearchSpace.default().to_json())
    data["pool_size_choices"] = [1, 2, 2, 3, 6]
    with pytest.raises(ArchError, match="pool_size_choices: sizes must be distinct"):
        SearchSpace.from_dict(data)


def test_integer_ratios_hash_as_their_json_round_trip():
    """A space built in Python with integer FFN ratios samples archs whose hash (a cache and
    export key) is the one they have after a JSON round trip."""
    from autonad_edge.space import StageSpace

    tiny = SearchSpace.tiny()
    stages = tuple(StageSpace(s.depths, s.widths, tuple(int(r) for r in s.ffn_ratios), s.sr_ratio)
                   for s in tiny.stages)
    spaced = dataclasses.replace(tiny, stages=stages)
    arch = spaced.sample(random.Random(3))
    assert arch.hash == Arch.from_json(arch.to_json()).hash
