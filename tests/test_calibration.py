"""Decision calibration: the background offset chosen on val, folded into the classifier."""

import math

import pytest
import torch
from torch import nn

from autonad_edge.training.calibration import Calibration, _KeptPixels, apply_offset, calibrate, choose_offset
from autonad_edge.training.evaluate import evaluate


class ScoreNet(nn.Module):
    """Logits [0, 10 s - 3] from a pixel's defect score s (image channel 0): the network calls a
    defect where s > 0.3, where the truth (see `dataset`) is s > 0.7 -- it over-predicts."""

    num_classes = 2

    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            self.classifier.weight.zero_()
            self.classifier.weight[1, 0] = 10.0
            self.classifier.bias.copy_(torch.tensor([0.0, -3.0]))

    def forward(self, x):
        return self.classifier(x)


def dataset(n: int = 4, size: int = 16):
    g = torch.Generator().manual_seed(0)
    items = []
    for _ in range(n):
        score = torch.rand(size, size, generator=g)
        # Keep scores off the decision boundaries so float rounding cannot flip a pixel.
        score = torch.where((score - 0.7).abs() < 0.02, score + 0.05, score)
        image = torch.stack([score, torch.zeros_like(score), torch.zeros_like(score)])
        items.append((image, (score > 0.7).long()))
    return items


def test_choose_offset_prefers_the_best_then_the_smallest_change():
    assert choose_offset([-1.0, 0.0, 1.0, 2.0], [0.2, 0.3, 0.5, 0.4]) == 1.0
    assert choose_offset([-1.0, 0.0, 1.0], [0.5, 0.5, 0.5]) == 0.0  # flat: keep the network's own
    assert choose_offset([-2.0, -1.0, 3.0], [0.1, 0.6, 0.6]) == -1.0
    assert choose_offset([0.0, 1.0], [math.nan, 0.2]) == 1.0


def test_calibration_finds_the_threshold_and_folding_reproduces_it():
    model, val = ScoreNet(), dataset()
    before = evaluate(model, val).miou
    calibration = calibrate(model, val, offsets=[-1.0, 0.0, 2.0, 4.0, 6.0])
    # Background + b wins where 10 s - 3 < b: b = 4 puts the boundary at the truth's 0.7.
    assert calibration.background_offset == 4.0
    assert calibration.miou_after == pytest.approx(1.0)
    assert calibration.miou_before == pytest.approx(before) and before < 0.9
    assert calibration.gain > 0.1
    apply_offset(model.classifier, calibration)
    assert evaluate(model, val).miou == pytest.approx(calibration.miou_after)
    assert model.classifier.bias.tolist() == pytest.approx([4.0, -3.0])


def test_zero_offset_is_always_scored_and_the_record_round_trips():
    calibration = calibrate(ScoreNet(), dataset(2), offsets=[4.0, 8.0])
    assert 0.0 in calibration.offsets
    assert Calibration.from_dict(calibration.to_dict()) == calibration
    assert "+4" in calibration.summary()


def test_tiled_calibration_matches_whole_image():
    whole = calibrate(ScoreNet(), dataset(2, size=40), offsets=[0.0, 2.0, 4.0])
    tiled = calibrate(ScoreNet(), dataset(2, size=40), offsets=[0.0, 2.0, 4.0], tile_size=16)
    assert tiled.miou_per_offset == pytest.approx(whole.miou_per_offset)


def test_one_pass_histogram_equals_scoring_every_offset_separately():
    from autonad_edge.metrics import ConfusionMatrix

    class Fixed(nn.Module):
        num_classes = 4

        def forward(self, x):  # class 3's logit equals background's: exact ties at offset 0
            return torch.cat([x, x[:, :1]], dim=1)

    g = torch.Generator().manual_seed(1)
    items = []
    for _ in range(3):
        mask = torch.randint(0, 4, (9, 11), generator=g)
        mask[0, :3] = 255
        items.append((torch.randn(3, 9, 11, generator=g) * 2, mask))
    offsets = [-1.0, -0.3, 0.0, 0.2, 0.5, 1.5]
    fast = calibrate(Fixed(), items, offsets=offsets, num_classes=4)
    for offset, score in zip(fast.offsets, fast.miou_per_offset):
        confusion = ConfusionMatrix(4)
        for image, mask in items:
            logits = Fixed()(image[None])
            logits[:, 0] += offset
            confusion.update(logits.argmax(dim=1), mask[None])
        assert score == pytest.approx(confusion.compute().miou), offset


class TwoDefectNet(nn.Module):
    """Three classes from two score channels (one per defect class, the other 0): class 1's
    logit 10 s - 3 over-predicts it (truth: s > 0.7), class 2's 10 s - 5 under-predicts it once
    the background offset fixes class 1. No single background offset gets both right."""

    num_classes = 3

    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.classifier.weight.zero_()
            self.classifier.weight[1, 0] = 10.0
            self.classifier.weight[2, 1] = 10.0
            self.classifier.bias.copy_(torch.tensor([0.0, -3.0, -5.0]))

    def forward(self, x):
        return self.classifier(x)


def two_defect_dataset(n: int = 4, size: int = 24):
    g = torch.Generator().manual_seed(1)
    items = []
    for _ in range(n):
        score = torch.rand(size, size, generator=g)
        # Off every boundary an offset on the 0.5 grid can set (s = 0.05 k), so no pixel ties.
        score = torch.round(score * 20) / 20 + 0.025
        which = (torch.rand(size, size, generator=g) < 0.5).long()  # 0: class 1's channel, 1: class 2's
        image = torch.zeros(3, size, size)
        image[0] = torch.where(which == 0, score, torch.zeros_like(score))
        image[1] = torch.where(which == 1, score, torch.zeros_like(score))
        items.append((image, torch.where(score > 0.7, which + 1, torch.zeros_like(which))))
    return items


def test_per_class_offsets_fix_what_one_background_offset_cannot():
    val = two_defect_dataset()
    background_only = calibrate(TwoDefectNet(), val)
    assert background_only.class_offsets == () and background_only.miou_after < 0.95
    calibration = calibrate(TwoDefectNet(), val, per_class=True)
    assert calibration.miou_background_only == pytest.approx(background_only.miou_after)
    assert calibration.miou_after == pytest.approx(1.0)
    assert len(calibration.class_offsets) == 3 and "class logits" in calibration.summary()
    # Folded into the classifier, the network decides exactly as the calibration scored it.
    model = TwoDefectNet()
    apply_offset(model.classifier, calibration)
    assert evaluate(model, val).miou == pytest.approx(calibration.miou_after)
    assert Calibration.from_dict(calibration.to_dict()) == calibration


def test_per_class_refinement_keeps_the_background_offset_when_it_is_already_right():
    calibration = calibrate(ScoreNet(), dataset(), per_class=True)
    assert calibration.background_offset == 4.0
    # A move must gain val mIoU: a perfect decision is left as the background offset set it.
    assert calibration.class_offsets == (4.0, 0.0) and calibration.miou_after == pytest.approx(1.0)


def test_kept_pixels_stay_within_their_limit_and_weigh_up_what_was_thinned():
    kept = _KeptPixels(num_classes=3, floor=-100.0, limit=1000)
    g = torch.Generator().manual_seed(0)
    total = 0
    for _ in range(10):
        logits = torch.randn(700, 3, generator=g)
        target = torch.randint(0, 3, (700,), generator=g)
        kept.add(logits, target, logits[:, 1:].max(dim=1).values - logits[:, 0])
        total += 700
    assert kept.size <= 1000 and kept.rate < 1.0
    logits, target = torch.cat(kept.logits), torch.cat(kept.targets)
    weighted = kept.matrix(logits, target, torch.zeros(3)).sum()
    assert abs(weighted - total) / total < 0.1


class LogitNet(nn.Module):
    """Its logits are the image's channels (an identity classifier): a val set is its logits."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.classifier = nn.Conv2d(num_classes, num_classes, 1)
        with torch.no_grad():
            self.classifier.weight.copy_(torch.eye(num_classes).reshape(num_classes, num_classes, 1, 1))
            self.classifier.bias.zero_()

    def forward(self, x):
        return self.classifier(x)


def noisy_logits(seed: int, classes: int = 4, images: int = 3, size: int = 12):
    """Half background, per-image class biases, the true class's logit raised by 2.5."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(images):
        target = torch.randint(0, classes, (size, size), generator=g)
        target[torch.rand(size, size, generator=g) < 0.5] = 0
        bias = torch.randn(classes, generator=g) * 2
        logits = torch.randn(classes, size, size, generator=g) * 1.5 + bias[:, None, None]
        logits += 2.5 * nn.functional.one_hot(target, classes).permute(2, 0, 1)
        items.append((logits, target))
    return items


def test_per_class_refinement_also_starts_below_the_best_background_offset(monkeypatch):
    """From the best single offset alone the coordinate ascent can stay where that offset
    silenced a class; a start below it finds more, and is kept only when it gains."""
    import autonad_edge.training.calibration as calibration_module

    def one_start(val):
        with monkeypatch.context() as patch:
            patch.setattr(calibration_module, "START_STEPS_BELOW", ())
            return calibrate(LogitNet(4), val, per_class=True)

    val = noisy_logits(26)
    calibration = calibrate(LogitNet(4), val, per_class=True)
    single = one_start(val)
    assert single.background_offset == calibration.background_offset == 6.5
    assert single.class_offsets[0] == 6.5 and calibration.class_offsets[0] < 6.5
    assert calibration.miou_after > single.miou_after + 0.03
    model = LogitNet(4)
    apply_offset(model.classifier, calibration)
    assert evaluate(model, val).miou == pytest.approx(calibration.miou_after)
    # More starts never end lower than the one.
    for seed in range(5):
        more = calibrate(LogitNet(4), noisy_logits(seed), per_class=True).miou_after
        assert more >= one_start(noisy_logits(seed)).miou_after - 1e-9


def test_class_offsets_that_do_not_hold_on_held_out_images_are_declined():
    """Per-image class biases (zero mean): offsets fitted to these six images fit their noise.
    Each half of val chooses its own and the other half scores them; they lose there, so the
    background offset alone is kept (and the network folded with it decides as the calibration
    says). With other draws of the biases the offsets hold about half the time."""
    val = noisy_logits(4, images=6, size=16)
    unchecked = calibrate(LogitNet(4), val, per_class=True, check_holdout=False)
    assert unchecked.class_offsets and unchecked.miou_after > unchecked.miou_background_only
    checked = calibrate(LogitNet(4), val, per_class=True)
    assert checked.holdout_gain is not None and checked.holdout_gain <= 0 and checked.declined_class_offsets
    assert checked.class_offsets == () and checked.miou_after == pytest.approx(checked.miou_background_only)
    assert checked.background_offset == unchecked.background_offset and "declined" in checked.summary()
    model = LogitNet(4)
    apply_offset(model.classifier, checked)
    assert evaluate(model, val).miou == pytest.approx(checked.miou_after)
    assert Calibration.from_dict(checked.to_dict()) == checked


def test_class_offsets_that_hold_on_held_out_images_are_kept():
    calibration = calibrate(TwoDefectNet(), two_defect_dataset(n=6), per_class=True)
    assert calibration.holdout_gain is not None and calibration.holdout_gain > 0 and len(calibration.class_offsets) == 3
    assert calibration.miou_after == pytest.approx(1.0)


def test_kept_pixels_split_into_alternate_images():
    kept = _KeptPixels(num_classes=2, floor=-100.0)
    for image in range(5):  # image i: 10 pixels of class i % 2
        target = torch.full((10,), image % 2)
        logits = torch.zeros(10, 2)
        kept.add(logits, target, logits[:, 1] - logits[:, 0], torch.full((10,), image % 2))
    first, second = kept.half(0), kept.half(1)
    assert (first.size, second.size) == (30, 20)
    assert set(first.pixels()[1].tolist()) == {0} and set(second.pixels()[1].tolist()) == {1}


def test_a_class_val_does_not_hold_is_not_silenced():
    """Val without class 2 and a network with false alarms of it: the usual mIoU scores class 2
    at 0 while it is predicted anywhere and leaves it out once it never is, so silencing it
    looked like a large gain (its offset went to -2, folded into the deployed network). The
    calibration scores only the classes val holds and leaves class 2's offset alone."""
    g = torch.Generator().manual_seed(3)
    val = []
    for _ in range(4):
        target = (torch.rand(12, 12, generator=g) < 0.3).long()  # classes 0 and 1 only
        logits = torch.zeros(3, 12, 12)
        logits[1] = 3.0 * (target == 1) - 1.0 + 0.5 * torch.randn(12, 12, generator=g)
        logits[2] = -4.0
        logits[2, :2, :2] = 2.0  # a few false alarms of class 2 on background
        val.append((logits, target))
    calibration = calibrate(LogitNet(3), val, per_class=True, check_holdout=False)
    assert calibration.unscored_classes == (2,) and "class 2 not in val" in calibration.summary()
    assert calibration.logit_offsets(3)[2] == 0.0
    assert Calibration.from_dict(calibration.to_dict()) == calibration


def test_a_val_without_any_defect_pixel_leaves_the_network_as_it_is():
    """With no defect pixel in val the score is the background's IoU alone, which the largest
    background offset maximises by silencing every defect: that offset was folded into the
    deployed network. Now nothing is tuned (offset 0) and the classes are named unscored."""
    model, val = ScoreNet(), [(image, torch.zeros_like(target)) for image, target in dataset()]
    calibration = calibrate(model, val, offsets=[-1.0, 0.0, 2.0, 4.0, 8.0], per_class=True)
    assert calibration.background_offset == 0.0 and calibration.logit_offsets(2) == (0.0, 0.0)
    assert calibration.unscored_classes == (1,) and "not calibrated" in calibration.summary()
