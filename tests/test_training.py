"""Supernet training, resuming, retraining, evaluation and prediction: real (tiny) training runs.

The data is a small toy set (big coloured blobs, one defect class) that the tiny space learns in
a few dozen steps on a CPU; the embedded synthetic generator is exercised by the CLI tests.
"""

import json
import random
from dataclasses import replace
import time
import types

import numpy as np
import pytest
import torch
from PIL import Image

from autonad_edge.data.cache import build_cache, label_histogram
from autonad_edge.data.dataset import SegmentationData
from autonad_edge.data.splits import stratified_split
from autonad_edge.models.network import SegmentationNet
from autonad_edge.space import Arch, SearchSpace
from autonad_edge.training.checkpoint import load_checkpoint, load_model, load_supernet
from autonad_edge.training.config import RetrainConfig, SupernetConfig, val_passes
from autonad_edge.training.engine import ResumeError, epoch_batches, epochs_within
from autonad_edge.training.evaluate import constant_baseline, evaluate
from autonad_edge.training.hooks import BackgroundHook
from autonad_edge.training.predict import predict_image, predict_images
from autonad_edge.training.retrain import RetrainTrainer
from autonad_edge.training.schedules import CosineFactor, PolyFactor, resize_schedule
from autonad_edge.training.supernet_trainer import SupernetTrainer

SIZE = 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")
SPACE = SearchSpace.tiny()


def toy_data(count: int = 40, size: int = SIZE, seed: int = 0) -> SegmentationData:
    """Grey noise with (usually) one big red blob of class 1."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    samples = []
    for _ in range(count):
        image = np.repeat(rng.normal(128, 25, (size, size, 1)), 3, axis=2).clip(0, 255)
        mask = np.zeros((size, size), np.uint8)
        if rng.random() < 0.85:
            r = rng.uniform(0.2, 0.32) * size
            cy, cx = rng.uniform(r, size - r, 2)
            blob = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            image[blob] = (230, 40, 40)
            mask[blob] = 1
        samples.append((image.astype(np.uint8), mask, (size, size), label_histogram(mask)))
    ids = [f"toy{i:03d}" for i in range(count)]
    cache = build_cache(ids, samples, ["background", "blob"], None, [None] * count)
    ratios = (0.6, 0.2, 0.2)
    splits = stratified_split(ids, cache.strata.tolist(), ratios, seed)
    return SegmentationData(cache, splits, fmt="synthetic", root=None, seed=seed, ratios=ratios,
                            split_source="toy", image_size=(size, size), synthetic_count=count)


def read_log(run_dir):
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data():
    return toy_data()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data):
    """One real supernet training run shared by the tests below."""
    out = tmp_path_factory.mktemp("supernet")
    cfg = SupernetConfig(image_size=SIZE, epochs=10, batch_size=8, lr=2e-3, augment=False,
                         eval_every=5, device="cpu", space="tiny")
    trainer = SupernetTrainer(cfg, data, out, space=SPACE, quiet=True)
    seen = []
    trainer.add_step_hook(lambda step, arch: seen.append((step, arch)))
    epochs_seen = []
    trainer.add_epoch_hook(lambda epoch, record: epochs_seen.append(epoch))
    summary = trainer.fit()
    return {"out": out, "summary": summary, "seen": seen, "epochs": epochs_seen,
            "checkpoint": out / "supernet.pt"}


def test_supernet_training_learns(trained, data):
    out, log = trained["out"], read_log(trained["out"])
    assert [r["epoch"] for r in log] == list(range(1, 11)) == trained["epochs"]
    assert log[-1]["loss"] < 0.7 * log[0]["loss"]
    for key in ("loss", "lr", "images_per_s", "time"):
        assert all(key in r for r in log)
    evaluated = [r for r in log if "val_miou" in r]
    assert [r["epoch"] for r in evaluated] == [5, 10]
    floor = constant_baseline(data.val, data.num_classes).miou
    assert log[-1]["val_miou"] > floor + 0.1, (log[-1]["val_miou"], floor)
    # Cosine decay per step, down to 0 at the end.
    lrs = [r["lr"] for r in log]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    for name in ("supernet.pt", "splits.json", "config.json", "summary.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "splits.json").read_text())["splits"] == data.manifest()["splits"]
    ckpt = load_checkpoint(trained["checkpoint"])
    assert ckpt["kind"] == "supernet" and ckpt["epoch"] == 10 and ckpt["step"] == 30
    assert ckpt["class_names"] == data.class_names and ckpt["sharing"] == "cross"


def test_step_hooks_see_every_sampled_subnet(trained):
    seen = trained["seen"]
    assert [s for s, _ in seen] == list(range(1, 31))
    archs = [a for _, a in seen]
    assert all(SPACE.contains(a) for a in archs)
    assert len({a.hash for a in archs}) > 20  # uniform sampling: (almost) all different
    # The sampler is a seeded random.Random: the same seed gives the same subnets.
    rng = random.Random(0)
    assert [SPACE.sample(rng) for _ in range(5)] == archs[:5]


def test_supernet_with_arch_evaluates_like_the_extracted_subnet(trained, data):
    supernet, _ = load_supernet(trained["checkpoint"])
    for seed in (1, 2):
        arch = SPACE.sample(random.Random(seed))
        inherited = evaluate(supernet, data.val, arch, batch_size=4, class_names=data.class_names)
        model, info = load_model(trained["checkpoint"], arch)
        assert isinstance(model, SegmentationNet) and info.arch == arch
        extracted = evaluate(model, data.val, batch_size=3, class_names=data.class_names)
        assert np.array_equal(inherited.metrics.matrix, extracted.metrics.matrix)
        assert inherited.miou == extracted.miou and inherited.mf1 == extracted.mf1
        report = extracted.to_dict()
        assert set(report["per_class"]) == {"background", "blob"}
        assert report["per_class"]["blob"]["iou"] == report["iou"]["blob"]
    assert not supernet.training  # evaluate restores the mode it found


def _supernet_cfg(**changes):
    cfg = SupernetConfig(image_size=32, epochs=3, batch_size=8, lr=1e-3, sandwich=True,
                         sandwich_random=1, eval_every=1, device="cpu", space="tiny", seed=5)
    return cfg.replace(**changes)


class Killed(Exception):
    pass


def interrupt_after(trainer, epoch: int) -> None:
    """Run `trainer` and stop it after `epoch` (its checkpoint written), as a killed process."""
    def kill(done, record):
        if done == epoch:
            raise Killed

    trainer.add_epoch_hook(kill)
    with pytest.raises(Killed):
        trainer.fit()


def test_resume_is_bit_exact(tmp_path):
    data = toy_data(count=24, size=32, seed=1)  # 14 train images: 2 steps an epoch
    cfg = _supernet_cfg()
    straight = SupernetTrainer(cfg, data, tmp_path / "straight", space=SPACE, quiet=True)
    straight.fit()

    interrupt_after(SupernetTrainer(cfg, data, tmp_path / "resumed", space=SPACE, quiet=True), 1)
    assert load_checkpoint(tmp_path / "resumed" / "supernet.pt")["epoch"] == 1
    resumed = SupernetTrainer(cfg, data, tmp_path / "resumed", space=SPACE, quiet=True, resume=True)
    archs = []
    resumed.add_step_hook(lambda step, arch: archs.append(step))
    summary = resumed.fit()
    assert archs[0] == 3  # continued at the second epoch's first step (3 subnets a step)

    a = load_checkpoint(tmp_path / "straight" / "supernet.pt")
    b = load_checkpoint(tmp_path / "resumed" / "supernet.pt")
    assert a["epoch"] == b["epoch"] == 3 and a["step"] == b["step"] == summary["steps"] == 6
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for index, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][key]), (index, key)
    assert a["scheduler"] == b["scheduler"]
    assert a["rng"]["sampler"] == b["rng"]["sampler"]
    assert torch.equal(a["rng"]["data"], b["rng"]["data"])
    log_a, log_b = read_log(tmp_path / "straight"), read_log(tmp_path / "resumed")
    strip = lambda log: [{k: v for k, v in r.items() if "time" not in k and "per_s" not in k} for r in log]  # noqa: E731
    assert strip(log_a) == strip(log_b)

    # A resume that would not continue the same run is refused.
    with pytest.raises(ResumeError, match="lr"):
        SupernetTrainer(cfg.replace(lr=5e-4), data, tmp_path / "resumed", space=SPACE, quiet=True,
                        resume=True).fit()


def test_retrain_from_scratch_and_from_inherited_weights(tmp_path, trained, data):
    arch = SPACE.sample(random.Random(3))
    floor = constant_baseline(data.val, data.num_classes).miou

    cfg = RetrainConfig(image_size=SIZE, epochs=2, batch_size=8, lr=2e-3, augment=False, device="cpu")
    summary = RetrainTrainer(cfg, data, tmp_path / "scratch", space=SPACE, arch=arch, quiet=True).fit()
    assert (tmp_path / "scratch" / "last.pt").is_file() and (tmp_path / "scratch" / "best.pt").is_file()
    model, info = load_model(tmp_path / "scratch" / "best.pt")
    assert info.kind == "subnet" and info.arch == arch and info.image_size == (SIZE, SIZE)
    assert info.epoch == summary["best"]["epoch"]
    assert len(read_log(tmp_path / "scratch")) == 2
    last = load_checkpoint(tmp_path / "scratch" / "last.pt")
    assert last["epoch"] == 2 and "optimizer" in last and last["best"]["val_miou"] is not None
    # The kept network is calibrated once: its val mIoU is the calibration's, and a resumed run
    # with nothing left to train finds the record and does not shift the classifier again.
    best = load_checkpoint(tmp_path / "scratch" / "best.pt")
    calibration = summary["calibration"]
    assert best["calibration"] == calibration and calibration["miou_after"] >= calibration["miou_before"]
    val = evaluate(model, data.val, tile_size=SIZE)
    assert val.miou == pytest.approx(calibration["miou_after"])
    again = RetrainTrainer(cfg, data, tmp_path / "scratch", space=SPACE, arch=arch, quiet=True, resume=True).fit()
    assert again["calibration"] == calibration
    assert torch.equal(load_checkpoint(tmp_path / "scratch" / "best.pt")["model"]["decoder.classifier.bias"],
                       best["model"]["decoder.classifier.bias"])

    inherited_cfg = cfg.replace(init="inherited", supernet=str(trained["checkpoint"]), epochs=1, lr=1e-4)
    trainer = RetrainTrainer(inherited_cfg, data, tmp_path / "inherited", space=SPACE, arch=arch, quiet=True)
    start = trainer.build_model()
    extracted, _ = load_model(trained["checkpoint"], arch)
    for (name, p), q in zip(start.state_dict().items(), extracted.state_dict().values()):
        assert torch.equal(p, q), name
    summary = trainer.fit()
    # Inherited weights start from a trained supernet: already well above the floor.
    assert summary["best"]["val_miou"] > floor + 0.05, (summary["best"], floor)
    assert load_model(tmp_path / "inherited" / "best.pt")[1].config["init"] == "inherited"


def test_a_retraining_reuses_the_supernets_split_of_a_relative_data_path(tmp_path, monkeypatch):
    """The supernet's manifest records its data root resolved; `--data voc` from the directory
    holding it names the same data, so the retraining keeps the supernet's split (val and test
    unseen by both), and other data gets a split of its own."""
    from autonad_edge.training.retrain import retrain_split

    (tmp_path / "voc").mkdir()
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path)
    manifest = {"format": "voc", "root": str((tmp_path / "voc").resolve()), "splits": {"train": ["a"]}}
    checkpoint = {"splits": json.dumps(manifest), "image_size": [48, 48]}
    for data_path in ("voc", "./voc/", str(tmp_path / "voc"), None):
        config = RetrainConfig(format="voc", data=data_path, image_size=SIZE)
        saved, config = retrain_split(config, tmp_path / "out", supernet_checkpoint=checkpoint, image_size_given=False)
        assert saved == manifest and config.image_size == 48, data_path
    for config in (RetrainConfig(format="voc", data="other"), RetrainConfig(format="mt", data="voc")):
        assert retrain_split(config, tmp_path / "out", supernet_checkpoint=checkpoint)[0] is None


def test_channels_last_training_computes_what_contiguous_training_does(tmp_path, data):
    """The layout is an execution detail: the same run in either layout logs the same losses and
    scores, and the channels-last checkpoint loads into a plain network that scores as saved."""
    arch = SPACE.sample(random.Random(4))
    cfg = RetrainConfig(image_size=SIZE, epochs=2, batch_size=8, lr=2e-3, augment=False, device="cpu",
                        ema_decay=0.9)
    summaries = {}
    for layout in (False, True):
        trainer = RetrainTrainer(cfg.replace(channels_last=layout), data, tmp_path / f"cl{layout}", space=SPACE,
                                 arch=arch, quiet=True)
        summaries[layout] = trainer.fit()
        if layout:
            convs = [m.weight for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d)]
            assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
            assert trainer.optimizer.defaults["fused"] is True  # the one-pass Adam kernel
    plain, channels_last = (read_log(tmp_path / f"cl{layout}") for layout in (False, True))
    for a, b in zip(plain, channels_last, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3)
        assert b["val_miou"] == pytest.approx(a["val_miou"], abs=0.01)
    model, _ = load_model(tmp_path / "clTrue" / "best.pt")
    assert all(p.is_contiguous() for p in model.parameters())
    assert evaluate(model, data.val, tile_size=SIZE).miou == pytest.approx(summaries[True]["calibration"]["miou_after"])


def test_predict_writes_masks_and_overlays(tmp_path, trained, data):
    model, info = load_model(trained["checkpoint"], SPACE.largest())
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"wide.png": (50, 90), "grey.jpg": (64, 64), "big.bmp": (130, 110)}
    for name, (h, w) in sizes.items():
        pixels = rng.integers(90, 160, (h, w, 3), dtype=np.uint8)
        pixels[h // 4 : h // 2, w // 4 : w // 2] = (230, 40, 40)
        img = Image.fromarray(pixels)
        (img.convert("L") if name.startswith("grey") else img).save(images / name)
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "pred"
    records = predict_images(model, images, out, image_size=info.image_size, class_names=info.class_names)
    assert [r["mask"] for r in records] == ["masks/big.png", "masks/grey.png", "masks/wide.png"]
    for name, (h, w) in sizes.items():
        stem = name.split(".")[0]
        mask = np.asarray(Image.open(out / "masks" / f"{stem}.png"))
        assert mask.shape == (h, w) and mask.max() < data.num_classes
        over = Image.open(out / "overlays" / f"{stem}.png")
        assert over.size == (w, h) and over.mode == "RGB"
    report = json.loads((out / "predictions.json").read_text())
    assert len(report["images"]) == 3 and set(report["classes"]) == {"background", "blob"}
    # The red square is found (the model was trained on red blobs).
    wide = np.asarray(Image.open(out / "masks" / "wide.png"))
    assert wide[15:25, 25:45].mean() > 0.5



class _RecordingNet(torch.nn.Module):
    """A 1x1 conv (class 1 fires on red) that records the shape of every input it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[0.0, 0, 0], [4, -2, -2]]).view(2, 3, 1, 1))
            self.conv.bias.copy_(torch.tensor([1.0, 0]))
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        return self.conv(x)


def test_predict_image_squashes_for_a_squash_trained_model():
    """squash: the network sees the image resized to exactly its training size, once, and the
    mask comes back at the image's own size; aspect kept: native tiles, as before."""
    net = _RecordingNet().eval()
    pixels = np.full((50, 90, 3), 128, np.uint8)
    pixels[:, 60:] = (230, 40, 40)
    image = Image.fromarray(pixels)
    cpu = torch.device("cpu")
    mask = predict_image(net, image, (32, 48), cpu, squash=True)
    assert net.shapes == [(1, 3, 32, 48)], "one window at exactly the training size"
    assert mask.shape == (50, 90) and mask.dtype == np.uint8
    assert (mask[:, :55] == 0).all() and (mask[:, 65:] == 1).all()
    assert predict_image(net, image.convert("L"), 40, cpu, squash=True).shape == (50, 90)
    assert net.shapes[-1] == (1, 3, 40, 40)

    net.shapes.clear()
    kept = predict_image(net, image, (32, 48), cpu)
    assert {s[-2:] for s in net.shapes} == {(48, 48)}, "aspect kept: native-resolution tiles of the input side"
    from autonad_edge.data.transforms import to_image_tensor

    with torch.no_grad():
        native = net.conv(to_image_tensor(pixels)[None])[0].argmax(0).numpy()
    np.testing.assert_array_equal(kept, native)
    with pytest.raises(ValueError, match="one window"):
        predict_image(net, image, (32, 48), cpu, squash=True, tile=32)


def test_a_squash_trained_retraining_is_recorded_and_predicted_squashed(tmp_path, data):
    """keep_aspect=False (the paper's resize): best.pt and last.pt say so, and predict squashes
    every image to the training size as one window, masks and overlays at the image's size."""
    arch = SPACE.sample(random.Random(3))
    cfg = RetrainConfig(image_size=SIZE, epochs=1, batch_size=8, max_steps_per_epoch=2, augment=False,
                        device="cpu", keep_aspect=False)
    RetrainTrainer(cfg, data, tmp_path / "squash", space=SPACE, arch=arch, quiet=True).fit()
    for name in ("best.pt", "last.pt"):
        ckpt = load_checkpoint(tmp_path / "squash" / name)
        assert ckpt["squash"] is True and ckpt["max_side"] is None, name
    model, info = load_model(tmp_path / "squash" / "best.pt")
    assert info.squash and info.max_side is None and info.image_size == (SIZE, SIZE)
    RetrainTrainer(cfg.replace(keep_aspect=True), data, tmp_path / "kept", space=SPACE, arch=arch, quiet=True).fit()
    kept = load_checkpoint(tmp_path / "kept" / "best.pt")
    assert "squash" not in kept and kept["max_side"] == cfg.max_side
    assert load_model(tmp_path / "kept" / "best.pt")[1].squash is False

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"wide.png": (50, 150), "tall.png": (120, 40)}
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(90, 160, (h, w, 3), dtype=np.uint8)).save(images / name)
    shapes = []
    model.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    out = tmp_path / "pred"
    predict_images(model, images, out, image_size=info.image_size, class_names=info.class_names,
                   max_side=info.max_side, squash=info.squash)
    assert shapes == [(1, 3, SIZE, SIZE)] * 2, "each image squashed to the training size, one window"
    for name, (h, w) in sizes.items():
        stem = name.split(".")[0]
        assert np.asarray(Image.open(out / "masks" / f"{stem}.png")).shape == (h, w)
        assert Image.open(out / "overlays" / f"{stem}.png").size == (w, h)
    report = json.loads((out / "predictions.json").read_text())
    assert report["squash"] is True and report["tile"] is None and report["max_side"] is None
    with pytest.raises(ValueError, match="one window"):
        predict_images(model, images, out, image_size=info.image_size, class_names=info.class_names,
                       squash=True, tile=32)
    # The aspect-kept network's predictions.json is as it was: tiles, no squash field.
    kept_model, kept_info = load_model(tmp_path / "kept" / "best.pt")
    predict_images(kept_model, images, tmp_path / "pred_kept", image_size=kept_info.image_size,
                   class_names=kept_info.class_names, max_side=kept_info.max_side, squash=kept_info.squash)
    report = json.loads((tmp_path / "pred_kept" / "predictions.json").read_text())
    assert "squash" not in report and report["tile"] == SIZE and report["max_side"] == cfg.max_side


def test_schedules():
    cos = CosineFactor(total_steps=100, warmup_steps=10)
    assert cos(0) == pytest.approx(0.01) and cos(10) == pytest.approx(1.0)
    assert cos(55) == pytest.approx(0.5) and cos(100) == pytest.approx(0.0, abs=1e-12)
    assert all(cos(s) >= cos(s + 1) for s in range(10, 100))
    poly = PolyFactor(total_steps=10, power=0.9)
    assert poly(0) == 1.0 and poly(5) == pytest.approx(0.5**0.9) and poly(10) == 0.0


def test_a_resized_schedule_ends_at_its_new_total():
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    from autonad_edge.training.schedules import make_schedule

    sched = make_schedule(opt, "cosine", total_steps=100, warmup_steps=10)
    factor = sched.lr_lambdas[0]
    before = [factor(s) for s in range(10)]
    resize_schedule(sched, 40)
    assert [factor(s) for s in range(10)] == before  # the warm-up is kept
    assert factor(25) == pytest.approx(0.5) and factor(40) == pytest.approx(0.0, abs=1e-12)
    assert sched.state_dict()["lr_lambdas"][0]["total_steps"] == 40  # what a resumed run reloads
    resize_schedule(sched, 3)  # never inside the warm-up
    assert factor.total_steps == 11
    for _ in range(20):
        opt.step()
        sched.step()
    resize_schedule(sched, 210)  # lengthened: the rate moves up to the longer decay's, at once
    assert factor(110) == pytest.approx(0.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(factor(20)) and factor(20) > CosineFactor(100, 10)(20)


def test_a_time_limit_cuts_the_epochs_and_ends_the_schedule_with_them(tmp_path, data):
    """A run whose epochs would overrun its time limit ends at the epochs that fit (at least
    one more after the pace is known), with the learning rate decayed to its end; a resumed run
    keeps the cut. No clock is read by the assertions: a limit of 0 s is overrun at any pace,
    one of 1e9 s never."""
    arch = SPACE.sample(random.Random(5))
    cfg = RetrainConfig(image_size=SIZE, epochs=7, batch_size=8, lr=2e-3, augment=False, device="cpu",
                        max_steps_per_epoch=2, eval_every=2, calibrate=False)
    pace = RetrainTrainer.PACE_EPOCHS
    cut = RetrainTrainer(cfg, data, tmp_path / "cut", space=SPACE, arch=arch, quiet=True, time_limit_s=0.0)
    summary = cut.fit()
    assert summary["epochs"] == pace + 1 and summary["planned_epochs"] == 7
    log = read_log(tmp_path / "cut")
    assert [r["epoch"] for r in log] == list(range(1, pace + 2))
    assert log[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # the cosine ended with the run
    assert "val_miou" in log[-1]  # its last epoch evaluates, as a planned last epoch does
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epochs"] == pace + 1
    again = RetrainTrainer(cfg, data, tmp_path / "cut", space=SPACE, arch=arch, quiet=True, resume=True).fit()
    assert again["epochs"] == pace + 1 and len(read_log(tmp_path / "cut")) == pace + 1
    # Judged first after epoch 3 of 7: too late in the schedule to lengthen it, however roomy.
    roomy = RetrainTrainer(cfg, data, tmp_path / "roomy", space=SPACE, arch=arch, quiet=True, time_limit_s=1e9).fit()
    assert roomy["epochs"] == 7 and len(read_log(tmp_path / "roomy")) == 7
    # Every second epoch and the last evaluate, as the budget planner counts them.
    assert sum("val_miou" in r for r in read_log(tmp_path / "roomy")) == val_passes(7, 2) == 4


def test_a_resumed_run_is_judged_from_its_first_epoch_on_the_pace_its_log_holds(tmp_path, data):
    """A run stopped after 4 of 10 epochs and resumed with its time spent (a limit of 0 s)
    waited for 3 epochs of its own before judging, so every resume overran by them (7 epochs
    here); it is judged after its first epoch now, and ends with the one more that evaluates."""
    arch = SPACE.sample(random.Random(5))
    cfg = RetrainConfig(image_size=SIZE, epochs=10, batch_size=8, lr=2e-3, augment=False, device="cpu",
                        max_steps_per_epoch=1, eval_every=2, calibrate=False)
    interrupt_after(RetrainTrainer(cfg, data, tmp_path / "run", space=SPACE, arch=arch, quiet=True,
                                   time_limit_s=1e9), 4)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 4
    resumed = RetrainTrainer(cfg, data, tmp_path / "run", space=SPACE, arch=arch, quiet=True, resume=True,
                             time_limit_s=0.0).fit()
    assert resumed["epochs"] == 6 and [r["epoch"] for r in read_log(tmp_path / "run")] == list(range(1, 7))


def test_a_best_left_by_a_rolled_back_epoch_is_what_the_record_says(tmp_path, data):
    """best.pt is written before last.pt: stopped between them, a run resumed from an earlier
    epoch while best.pt held a later one's weights, which on a non-exact device (CUDA) its rerun
    need not reproduce, and the summary named another epoch. The resumed record follows the
    file (here best.pt is made to claim epoch 3 at 99 %, as such a rerun could leave it)."""
    from autonad_edge.training.checkpoint import save_checkpoint

    arch = SPACE.sample(random.Random(5))
    cfg = RetrainConfig(image_size=SIZE, epochs=4, batch_size=8, lr=2e-3, augment=False, device="cpu",
                        max_steps_per_epoch=1, eval_every=1, calibrate=False)
    interrupt_after(RetrainTrainer(cfg, data, tmp_path, space=SPACE, arch=arch, quiet=True), 2)
    best = load_checkpoint(tmp_path / "best.pt")
    save_checkpoint(tmp_path / "best.pt", {**best, "epoch": 3, "metrics": {**best["metrics"], "val_miou": 0.99}})
    summary = RetrainTrainer(cfg, data, tmp_path, space=SPACE, arch=arch, quiet=True, resume=True).fit()
    assert summary["best"]["epoch"] == 3 and summary["best"]["val_miou"] == 0.99
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 3


def test_a_fresh_start_in_a_used_directory_does_not_inherit_the_previous_runs_best(tmp_path, data):
    """A retraining started afresh where another ran (another arch) used to keep that run's
    best.pt, then adopt, calibrate and report it as its own when it had no val pass that beat
    it (eval_every 0 here). The previous run's checkpoints are moved to previous/ instead."""
    arch_a, arch_b = SPACE.sample(random.Random(5)), SPACE.sample(random.Random(7))
    assert arch_a != arch_b
    first = RetrainConfig(image_size=SIZE, epochs=1, batch_size=8, lr=2e-3, augment=False, device="cpu",
                          max_steps_per_epoch=1, eval_every=1, calibrate=True)
    summary = RetrainTrainer(first, data, tmp_path, space=SPACE, arch=arch_a, quiet=True).fit()
    # The calibrated score sits beside the epoch's val_miou, not over it: calibration scores
    # only the classes val holds, the epochs every class.
    metrics = load_checkpoint(tmp_path / "best.pt")["metrics"]
    assert metrics["val_miou"] == read_log(tmp_path)[-1]["val_miou"] == summary["best"]["val_miou"]
    assert metrics["val_miou_calibrated"] == summary["calibration"]["miou_after"]
    second = replace(first, eval_every=0)
    summary = RetrainTrainer(second, data, tmp_path, space=SPACE, arch=arch_b, quiet=True).fit()
    assert summary["best_checkpoint"] is None and "calibration" not in summary
    assert not (tmp_path / "best.pt").exists()
    assert Arch.from_json(load_checkpoint(tmp_path / "previous" / "best.pt")["arch"]) == arch_a
    assert Arch.from_json(load_checkpoint(tmp_path / "last.pt")["arch"]) == arch_b


def _judging_trainer(monkeypatch, planned: int, limit_s: float, epoch_times) -> RetrainTrainer:
    """A trainer's time-limit judgement alone (its state set by hand): `planned` epochs, a
    limit of `limit_s`, and a log of epochs that took `epoch_times`."""
    import autonad_edge.training.engine as engine
    from autonad_edge.training.distributed import DistContext

    monkeypatch.setattr(engine, "resize_schedule", lambda scheduler, steps: None)
    monkeypatch.setattr(engine, "time", types.SimpleNamespace(perf_counter=lambda: NOW))  # a clock that stands still
    trainer = object.__new__(RetrainTrainer)
    trainer.config = types.SimpleNamespace(epochs=planned, eval_every=0)
    trainer._dist, trainer.steps_per_epoch, trainer.scheduler, trainer.title = DistContext(), 10, None, "retrain"
    trainer.epochs, trainer._epoch_hooks_s, trainer.time_limit_s = planned, 0.0, limit_s
    trainer.history = [{"epoch": i + 1, "train_time": t, "time": t} for i, t in enumerate(epoch_times)]
    return trainer


QUIET_PROGRESS = types.SimpleNamespace(message=lambda text: None, set_total_epochs=lambda n: None)
NOW = 1000.0  # the judging trainer's clock: the time spent is what `_pace_from` says, however slow the host


def test_one_slow_epoch_does_not_cut_the_run(monkeypatch):
    """The pace was the mean of the last three epochs: one slowed to 18 s by a passing load among
    4.5 s ones cut a default run from 60 epochs to 35, for good, and it ended 3 minutes inside
    its budget. The median is the pace now."""
    trainer = _judging_trainer(monkeypatch, 60, 275.0, [4.5, 18.0, 4.5])
    trainer._pace_from = (0, NOW - 27.0)
    trainer._fit_to_time_limit(3, QUIET_PROGRESS)
    assert trainer.epochs >= 58
    slow = _judging_trainer(monkeypatch, 60, 275.0, [4.5, 18.0, 18.0])  # a slowdown that lasts
    slow._pace_from = (0, NOW - 40.5)
    slow._fit_to_time_limit(3, QUIET_PROGRESS)
    assert slow.epochs < 20


def test_later_judgements_pace_the_run_on_fifty_epochs_and_give_back_what_a_cut_took(monkeypatch):
    """Judged on its last three epochs and cut whenever one epoch did not fit, a 60-minute
    Magnetic-tile retraining lost 60 epochs to a slow spell for good and ended 6 minutes inside
    its budget. After the first judgement the pace is the median of up to 50 epochs, the run is
    changed only when it ends more than 5 % of the epochs left off the limit, and epochs a cut
    took are given back (up to the plan's, not in the decay's last quarter). Each decision is
    kept in the epoch's log record."""
    messages = []
    progress = types.SimpleNamespace(message=messages.append, set_total_epochs=lambda n: None)

    def judged(times, epochs=200):
        trainer = _judging_trainer(monkeypatch, 200, 840.0, times)  # 210 epochs fit at 4 s
        trainer._pace_from = (0, NOW - sum(times))
        trainer.epochs = epochs
        trainer._fit_to_time_limit(len(times), progress)
        return trainer

    assert judged([4.0] * 10 + [6.0] * 3).epochs == 200  # a spell of three slow epochs: no cut
    slow = [4.0] * 10 + [6.0] * 20
    cut = judged(slow)
    assert cut.epochs == 143  # a slowdown that lasts: 113 more fit in the 680 s left at 6 s
    assert cut.history[-1]["epochs_set"] == 143 and "would overrun" in cut.history[-1]["epochs_why"]
    # Thirty epochs later: back at 4 s a cut epoch is no longer needed (560 s left: 140 more fit,
    # less one); still at 6 s, the cut stands; a brief fast spell does not move the median.
    assert judged(slow + [4.0] * 30, epochs=143).epochs == 199
    assert messages[-1] == "retrain: the cut to 143 epochs is no longer needed at 4.0 s an epoch; running 199"
    assert judged(slow + [6.0] * 30, epochs=143).epochs == 143
    assert judged(slow + [3.0] * 5, epochs=143).epochs == 143
    assert judged(slow + [1.0] * 30, epochs=143).epochs == 200  # never above the plan
    # Not once the decay's last quarter has begun (done 120 of 143): its rates are already used.
    assert judged([4.0] * 120, epochs=143).epochs == 143


def test_a_resumed_run_is_not_cut_by_a_slow_spell_before_its_stop(monkeypatch):
    """Judged from its first epoch after a resume, a run took the log's last epochs as its pace:
    40 planned at 2 s, stopped after 10 whose last two ran at 6 s (a busy host), resumed at 2 s
    with the 52 s its plan left (26 epochs at 2 s): the log's pace cut it to 21 epochs, for
    good. Until it has a pace of its own, the faster of the two judges."""
    before = [2.0] * 8 + [6.0, 6.0]
    trainer = _judging_trainer(monkeypatch, 40, 80.0 - sum(before), before)
    for done in range(11, 17):
        trainer.history.append({"epoch": done, "train_time": 2.0, "time": 2.0})
        trainer._pace_from = (10, NOW - 2.0 * (done - 10))
        trainer._fit_to_time_limit(done, QUIET_PROGRESS)
    assert trainer.epochs >= 35  # 36 fit at 2 s an epoch; the judgement keeps one epoch's margin
    # A limit already spent still ends the run at once: after the first epoch and one more.
    trainer.epochs, trainer.time_limit_s = 40, 0.0
    trainer.history = trainer.history[:11]
    trainer._pace_from = (10, NOW - 2.0)
    trainer._fit_to_time_limit(11, QUIET_PROGRESS)
    assert trainer.epochs == 12


def test_the_epochs_that_fit_count_the_val_passes_the_schedule_will_run():
    # 3 epochs done, val every 2nd and the last: the rest takes 10, 20, 26, 36 s for 4, 5, 6, 7
    # epochs in all (6 s of training each; 4 s for the passes after epochs 4, 6 and the last).
    lefts = (19.9, 20, 25.9, 26, 35.9, 36)
    assert [epochs_within(3, left, 6.0, 4.0, 2, cap=40) for left in lefts] == [4, 5, 5, 6, 6, 7]
    # Whatever the window of epochs a pace was taken on, one val pass every 2 epochs on 23 more.
    assert epochs_within(3, 23 * 6.0 + 12 * 4.0, 6.0, 4.0, 2, cap=40) == 26
    assert epochs_within(4, 22 * 6.0 + 11 * 4.0, 6.0, 4.0, 2, cap=40) == 26  # after an evaluated epoch
    assert epochs_within(3, 1e9, 6.0, 4.0, 2, cap=40) == 40  # capped
    assert epochs_within(3, -5.0, 6.0, 4.0, 2, cap=40) == 4  # overrun already: one more epoch
    assert epochs_within(3, 60.0, 6.0, 4.0, 0, cap=40) == 13  # no evaluation at all


def test_time_spent_in_epoch_hooks_is_not_the_epochs_time(tmp_path, data, monkeypatch):
    """A background profiler times blocks in an epoch hook, which a budget plans apart from the
    epochs: a time limit counts the epochs' time only. The trainer's clock is advanced by 1000 s
    in each epoch hook (no sleeping), against a limit of 100 s that the epochs alone keep."""
    import autonad_edge.training.engine as engine

    offset = [0.0]
    clock = types.SimpleNamespace(perf_counter=lambda: time.perf_counter() + offset[0])
    monkeypatch.setattr(engine, "time", clock)
    arch = SPACE.sample(random.Random(5))
    cfg = RetrainConfig(image_size=SIZE, epochs=7, batch_size=8, lr=2e-3, augment=False, device="cpu",
                        max_steps_per_epoch=1, eval_every=0, calibrate=False)
    trainer = RetrainTrainer(cfg, data, tmp_path / "hooks", space=SPACE, arch=arch, quiet=True, time_limit_s=100.0)
    trainer.add_epoch_hook(lambda epoch, record: offset.__setitem__(0, offset[0] + 1000.0))
    assert trainer.fit()["epochs"] == 7
    assert offset[0] == 7000.0  # every hook ran, and the clock the trainer read moved by 7000 s


def test_a_run_that_would_end_early_is_lengthened_once_and_early(tmp_path, data):
    """Judged after its first epochs, a run with time to spare runs more epochs, at most half
    again its plan, with the schedule decaying to the new end; a resumed run keeps them."""
    arch = SPACE.sample(random.Random(5))
    cfg = RetrainConfig(image_size=SIZE, epochs=12, batch_size=8, lr=2e-3, augment=False, device="cpu",
                        max_steps_per_epoch=1, eval_every=0, calibrate=False)
    assert RetrainTrainer.PACE_EPOCHS <= RetrainTrainer.EXTEND_WITHIN * 12
    longer = RetrainTrainer(cfg, data, tmp_path / "long", space=SPACE, arch=arch, quiet=True, time_limit_s=1e9)
    summary = longer.fit()
    extended = int(12 * RetrainTrainer.MAX_EXTENSION)
    assert summary["epochs"] == extended and summary["planned_epochs"] == 12
    log = read_log(tmp_path / "long")
    assert [r["epoch"] for r in log] == list(range(1, extended + 1))
    assert log[-1]["lr"] == pytest.approx(0.0, abs=1e-12) and log[11]["lr"] > 0.0  # decays to the new end
    assert load_checkpoint(tmp_path / "long" / "last.pt")["epochs"] == extended
    again = RetrainTrainer(cfg, data, tmp_path / "long", space=SPACE, arch=arch, quiet=True, resume=True,
                           time_limit_s=1e9).fit()
    assert again["epochs"] == extended and len(read_log(tmp_path / "long")) == extended


def test_epoch_batches_shard_the_same_permutation():
    def shards(world):
        return [epoch_batches(10, 3, torch.Generator().manual_seed(4), rank, world) for rank in range(world)]

    single = shards(1)[0]
    assert sorted(i for b in single for i in b) == list(range(10))
    two = shards(2)
    assert len(two[0]) == len(two[1])  # same number of steps on every rank
    flat = [i for rank in two for b in rank for i in b]
    assert sorted(set(flat)) == list(range(10)) and len(flat) == 10
    assert epoch_batches(10, 3, torch.Generator().manual_seed(4), max_steps=2) == single[:2]


def test_background_hook_never_blocks_the_step():
    done = []

    def slow(step, arch):
        time.sleep(0.05)
        done.append(step)

    hook = BackgroundHook(slow, maxsize=4)
    start = time.perf_counter()
    for step in range(1, 21):
        hook(step, None)
    assert time.perf_counter() - start < 0.05  # 20 calls, no waiting on the consumer
    hook.close()
    assert hook.dropped > 0 and len(done) + hook.dropped == 20 and done == sorted(done)

    def broken(step, arch):
        raise RuntimeError("agent down")

    with BackgroundHook(broken) as failing:
        failing(1, None)
    assert failing.errors == 1 and "agent down" in str(failing.last_error)
