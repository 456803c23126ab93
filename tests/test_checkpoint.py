"""Checkpoints: atomic writes, weights_only loading, RNG round trips, `load_model`."""

import io
import os
import random

import pytest
import torch

from autonad_edge.models.network import SegmentationNet
from autonad_edge.models.supernet import HybridSupernet
from autonad_edge.space import ArchError, SearchSpace
from autonad_edge.training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model,
    load_supernet,
    python_rng_state,
    save_checkpoint,
    save_subnet,
    set_python_rng_state,
)

CLASSES = ["background", "a", "b"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def space():
    return SearchSpace.tiny()


def _supernet_payload(net, space):
    return {
        "kind": "supernet",
        "model": net.state_dict(),
        "space": space.to_json(indent=None),
        "sharing": net.sharing,
        "num_classes": 3,
        "class_names": CLASSES,
        "image_size": [64, 64],
        "config": {"lr": 5e-4, "grad_clip": None, "space": "tiny"},
        "rng": {"sampler": python_rng_state(random.Random(3)), "torch": torch.get_rng_state()},
        "epoch": 2,
        "step": 10,
    }


def test_python_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    rng = random.Random(7)
    rng.random()
    save_checkpoint(tmp_path / "c.pt", {"kind": "subnet", "rng": python_rng_state(rng)})
    expected = [rng.random() for _ in range(5)]
    other = random.Random(0)
    set_python_rng_state(other, load_checkpoint(tmp_path / "c.pt")["rng"])
    assert [other.random() for _ in range(5)] == expected


def test_checkpoint_is_plain_data_loadable_with_weights_only(tmp_path, space):
    torch.manual_seed(0)
    net = HybridSupernet(space, 3)
    path = save_checkpoint(tmp_path / "s.pt", _supernet_payload(net, space))
    raw = torch.load(path, weights_only=True)  # no custom classes anywhere
    assert raw["kind"] == "supernet" and raw["format"] == "autonad-edge-checkpoint"
    assert isinstance(raw["space"], str) and raw["config"]["grad_clip"] is None
    supernet, info = load_supernet(path)
    assert info.class_names == CLASSES and info.epoch == 2 and info.step == 10
    for (name, a), b in zip(net.state_dict().items(), supernet.state_dict().values()):
        assert torch.equal(a, b), name


def test_failed_write_leaves_the_old_file_intact(tmp_path, space, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"kind": "subnet", "step": 1})
    before = path.read_bytes()

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        save_checkpoint(path, {"kind": "subnet", "step": 2, "blob": torch.zeros(1000)})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]  # no temp file left behind

    # A payload that cannot be serialised fails before anything touches the disk.
    with pytest.raises(Exception):
        save_checkpoint(path, {"kind": "subnet", "bad": lambda: 0})
    assert load_checkpoint(path)["step"] == 1


def test_a_killed_write_never_exposes_a_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"kind": "subnet", "step": 1})
    real_replace = os.replace

    def killed(src, dst):  # the process dies between writing the temp file and the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"kind": "subnet", "step": 2})
    monkeypatch.setattr(os, "replace", real_replace)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_bad_files_give_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable checkpoint") as err:
        load_checkpoint(junk)
    assert "\n" not in str(err.value)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not an autonad-edge checkpoint"):
        load_checkpoint(other)
    buf = io.BytesIO()
    torch.save({"kind": "subnet"}, buf)
    with pytest.raises(ValueError, match="kind"):
        save_checkpoint(tmp_path / "x.pt", {"kind": "weird"})


def test_load_model_from_subnet_and_from_supernet_plus_arch(tmp_path, space):
    torch.manual_seed(1)
    supernet = HybridSupernet(space, 3).eval()
    with torch.no_grad():
        for p in supernet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    sup_path = save_checkpoint(tmp_path / "supernet.pt", _supernet_payload(supernet, space))
    arch = space.sample(random.Random(4))
    x = torch.randn(2, 3, 48, 40)

    extracted, info = load_model(sup_path, arch)
    assert isinstance(extracted, SegmentationNet) and not extracted.training
    assert info.kind == "supernet" and info.arch == arch and info.sharing == "cross"
    with torch.no_grad():
        assert torch.allclose(extracted(x), supernet(x, arch), atol=1e-5)

    arch_file = tmp_path / "arch.json"
    arch_file.write_text(arch.to_json())
    from_file, _ = load_model(sup_path, arch_file)
    with torch.no_grad():
        assert torch.equal(from_file(x), extracted(x))

    sub_path = save_subnet(tmp_path / "subnet.pt", extracted, space, CLASSES, (64, 64), epoch=3)
    rebuilt, sub_info = load_model(sub_path)
    assert sub_info.kind == "subnet" and sub_info.arch == arch and sub_info.image_size == (64, 64)
    assert sub_info.class_names == CLASSES and sub_info.epoch == 3
    with torch.no_grad():
        assert torch.equal(rebuilt(x), extracted(x))

    with pytest.raises(CheckpointError, match="--arch"):
        load_model(sup_path)
    with pytest.raises(ArchError, match="holds the subnet"):
        load_model(sub_path, space.sample(random.Random(99)))
    bad = arch.to_dict()
    bad["stages"][0]["width"] = 999
    (tmp_path / "bad.json").write_text(__import__("json").dumps(bad))
    with pytest.raises(ArchError, match="width"):
        load_model(sup_path, tmp_path / "bad.json")


def test_a_squash_trained_checkpoint_says_so_and_an_old_one_does_not(tmp_path, space):
    """A network trained on images squashed to image_size (keep_aspect false) is recorded as such,
    so inference squashes too; a checkpoint without the field reads as it did (aspect kept)."""
    from autonad_edge.training.checkpoint import checkpoint_info, subnet_payload

    net = SegmentationNet.from_arch(space.largest(), space, 3)
    old = subnet_payload(net, space, CLASSES, (48, 80), max_side=1024)
    assert "squash" not in old
    info = checkpoint_info(old, "old.pt")
    assert info.squash is False and info.max_side == 1024 and info.to_dict()["squash"] is False

    path = save_subnet(tmp_path / "squash.pt", net, space, CLASSES, (48, 80), max_side=None, squash=True)
    _, info = load_model(path)
    assert info.squash is True and info.max_side is None and info.image_size == (48, 80)
    assert info.to_dict()["squash"] is True

    # Without the field (a supernet's checkpoint, a subnet from before it) the run config says.
    sup = _supernet_payload(HybridSupernet(space, 3), space)
    assert checkpoint_info(sup, "s.pt").squash is False
    assert checkpoint_info({**sup, "config": {"keep_aspect": True, "max_side": 1024}}, "s.pt").squash is False
    assert checkpoint_info({**sup, "config": {"keep_aspect": False, "max_side": 1024}}, "s.pt").squash is True
    assert checkpoint_info({**old, "max_side": None, "config": {"keep_aspect": False}}, "o.pt").squash is True
