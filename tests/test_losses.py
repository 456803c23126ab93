"""Losses for rare defect pixels: class-weighted cross-entropy and its use by the trainers,
soft Dice and Lovász-softmax (hand-computed cases and the definitions), distillation, and the
`SegmentationLoss` that combines them."""

from itertools import product

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autonad_edge.data import load_dataset
from autonad_edge.space import SearchSpace
from autonad_edge.training.config import LOSSES, RetrainConfig
from autonad_edge.training.losses import (
    MAX_WEIGHT_RATIO,
    SegmentationLoss,
    class_weights,
    distillation_loss,
    lovasz_softmax_loss,
    masked_cross_entropy,
    soft_dice_loss,
)
from autonad_edge.training.retrain import RetrainTrainer


def test_inverse_sqrt_weights_favour_rare_classes_and_keep_the_loss_scale():
    freq = np.array([0.95, 0.04, 0.01])
    w = class_weights(freq, "inverse_sqrt")
    assert w[2] > w[1] > w[0]
    assert w[2] / w[1] == pytest.approx(2.0)  # sqrt(0.04 / 0.01)
    # A labelled pixel weighs 1 on average, so learning rates tuned unweighted carry over.
    assert (w * freq).sum() == pytest.approx(1.0)


def test_weights_are_capped_and_absent_classes_get_the_largest():
    w = class_weights([0.9, 0.1, 0.0, 1e-9], "inverse_sqrt")
    assert w[3] / w[0] == pytest.approx(MAX_WEIGHT_RATIO)
    assert w[2] == w.max()
    assert class_weights([0.9, 0.1], "none") is None
    with pytest.raises(ValueError, match="class_weighting must be one of"):
        class_weights([0.9, 0.1], "inverse")


def test_masked_cross_entropy_weights_pixels_and_divides_by_their_count():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    target[0, 0, :] = 255
    weight = torch.tensor([0.5, 2.0, 4.0])
    per_pixel = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    labelled = target != 255
    expected = (per_pixel * weight[target.clamp(max=2)])[labelled].sum() / labelled.sum()
    assert torch.allclose(masked_cross_entropy(logits, target, 255, weight), expected)
    assert torch.allclose(masked_cross_entropy(logits, target, 255), per_pixel[labelled].mean())
    # A batch with no labelled pixel gives 0, not NaN.
    assert masked_cross_entropy(logits, torch.full_like(target, 255), 255, weight).item() == 0.0


def test_class_frequencies_of_a_split():
    data = load_dataset(None, "synthetic", image_size=48, synthetic_count=24, seed=0)
    freq = data.class_frequencies("train")
    assert freq.shape == (data.num_classes,) and freq.sum() == pytest.approx(1.0)
    assert freq[0] > 0.5  # background dominates
    assert (freq[1:] > 0).any()


def test_trainer_uses_weights_from_the_train_split(tmp_path):
    data = load_dataset(None, "synthetic", image_size=48, synthetic_count=24, seed=0)
    space = SearchSpace.tiny()
    cfg = RetrainConfig(image_size=48, epochs=1, batch_size=8, lr=1e-3, augment=False, eval_every=0,
                        device="cpu", init="scratch", class_weighting="inverse_sqrt", max_steps_per_epoch=1)
    trainer = RetrainTrainer(cfg, data, tmp_path, space=space, arch=space.smallest(), quiet=True)
    summary = trainer.fit()
    expected = class_weights(data.class_frequencies("train"), "inverse_sqrt")
    assert np.allclose(trainer.class_weight.numpy(), expected)
    assert np.isfinite(summary["last"]["loss"])


# ---- region losses, distillation, SegmentationLoss ---------------------------------------------


def _logits_of(probs) -> torch.Tensor:
    """Logits [1, C, H, W] whose softmax is `probs` given as [H][W][C]."""
    return torch.tensor(probs, dtype=torch.float64).log().permute(2, 0, 1).unsqueeze(0).float()


# Per pixel (class 0, 1, 2) of a 2x2 image.
PROBS = [[[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]],
         [[0.2, 0.3, 0.5], [0.3, 0.5, 0.2]]]


def _perfect(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    return 30.0 * F.one_hot(target.clamp(max=num_classes - 1), num_classes).permute(0, 3, 1, 2).float()


def test_dice_hand_case_averages_the_defect_classes_present():
    logits = _logits_of(PROBS)
    target = torch.tensor([[[0, 1], [2, 1]]])
    # class 1: 1 - 2*(0.6+0.5) / (1.6 + 2) = 7/18; class 2: 1 - 2*0.5 / (1.1 + 1) = 11/21
    assert soft_dice_loss(logits, target, eps=0.0).item() == pytest.approx((7 / 18 + 11 / 21) / 2, rel=1e-5)
    assert soft_dice_loss(logits, target, classes=[2], eps=0.0).item() == pytest.approx(11 / 21, rel=1e-5)
    # class 0 (the background) is only scored when asked for: 1 - 2*0.7 / (1.3 + 1) = 9/23
    assert soft_dice_loss(logits, target, classes=slice(0, 1), eps=0.0).item() == pytest.approx(9 / 23, rel=1e-5)
    # Class 2 absent from the target: excluded, though it holds 1.1 of probability mass.
    absent = torch.tensor([[[0, 1], [0, 1]]])
    assert soft_dice_loss(logits, absent, eps=0.0).item() == pytest.approx(7 / 18, rel=1e-5)
    assert soft_dice_loss(logits, target).item() == pytest.approx((7 / 18 + 11 / 21) / 2, rel=1e-5)


def test_dice_is_0_when_perfect_1_when_all_background_and_0_without_labelled_pixels():
    torch.manual_seed(0)
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[0, 2:4, 2:5] = 1
    target[1, 5, 1:7] = 2
    assert soft_dice_loss(_perfect(target, 3), target).item() < 1e-6
    background = _perfect(torch.zeros_like(target), 3)
    assert soft_dice_loss(background, target).item() > 1 - 1e-6
    # No defect in the batch, or no labelled pixel at all: 0, not NaN, and still differentiable.
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    for empty in (torch.zeros_like(target), torch.full_like(target, 255)):
        loss = soft_dice_loss(logits, empty)
        assert loss.item() == 0.0
        loss.backward()


def test_dice_ignores_ignored_pixels_and_has_gradients():
    torch.manual_seed(1)
    logits = _logits_of(PROBS)
    target = torch.tensor([[[0, 1], [2, 1]]])
    # A third column of ignored pixels with arbitrary logits changes nothing.
    wide_logits = torch.cat([logits, torch.randn(1, 3, 2, 1) * 5], dim=3).requires_grad_(True)
    wide_target = torch.cat([target, torch.full((1, 2, 1), 255)], dim=2)
    loss = soft_dice_loss(wide_logits, wide_target)
    assert loss.item() == pytest.approx(soft_dice_loss(logits, target).item(), rel=1e-6)
    loss.backward()
    assert torch.isfinite(wide_logits.grad).all()
    assert wide_logits.grad[..., :2].abs().sum() > 0 and wide_logits.grad[..., 2].abs().sum() == 0


def _jaccard_set_loss(mispredicted: set[int], truth: set[int]) -> float:
    """The Jaccard loss of a class when the pixels `mispredicted` are wrong: |M| / |G u M|."""
    return len(mispredicted) / len(truth | mispredicted) if mispredicted else 0.0


def _lovasz_brute_force(probs: torch.Tensor, labels: torch.Tensor, classes) -> float:
    """From the definition: the Lovász extension of a set function D at errors m in [0, 1]^n is
    the integral over t in [0, 1] of D({i: m_i >= t}); the level set is constant between two
    consecutive values of m, so the integral is a sum over those intervals."""
    per_class = []
    for c in classes:
        truth = {i for i in range(len(labels)) if labels[i] == c}
        errors = [abs(float(labels[i] == c) - float(probs[i, c])) for i in range(len(labels))]
        cuts = sorted({0.0, 1.0, *errors})
        total = 0.0
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            t = (lo + hi) / 2
            total += (hi - lo) * _jaccard_set_loss({i for i, e in enumerate(errors) if e >= t}, truth)
        per_class.append(total)
    return sum(per_class) / len(per_class)


def test_lovasz_hand_case():
    # Three pixels, labels 1, 0, 1, foreground probabilities 0.8, 0.3, 0.4.
    p1 = torch.tensor([0.8, 0.3, 0.4])
    logits = torch.stack([torch.zeros(3), (p1 / (1 - p1)).log()]).view(1, 2, 1, 3)
    target = torch.tensor([[[1, 0, 1]]])
    # Class 1: errors .2 .3 .6 -> sorted .6 (fg) .3 (bg) .2 (fg): Jaccard losses 1/2, 2/3, 3/3,
    # increments 1/2, 1/6, 1/3 -> 0.3 + 0.05 + 0.2/3 = 5/12. Class 0: errors .2 .3 .6, sorted
    # .6 (bg) .3 (fg) .2 (bg): losses 1/2, 1, 1 -> 0.3 + 0.15 = 9/20. Mean: 13/30.
    assert lovasz_softmax_loss(logits, target).item() == pytest.approx(13 / 30, rel=1e-5)
    probs = torch.stack([1 - p1, p1], dim=1)
    assert _lovasz_brute_force(probs, target.view(-1), [0, 1]) == pytest.approx(13 / 30)


@pytest.mark.parametrize("seed", range(4))
def test_lovasz_matches_the_definition_on_random_tiny_cases(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, 3, 2, 2, generator=g) * 2
    target = torch.randint(0, 3, (1, 2, 2), generator=g)
    target[0, 0, 0] = 1  # at least one defect pixel
    probs = torch.softmax(logits, 1).permute(0, 2, 3, 1).reshape(-1, 3)
    labels = target.view(-1)
    present = sorted(set(labels.tolist()))
    assert lovasz_softmax_loss(logits, target).item() == pytest.approx(
        _lovasz_brute_force(probs, labels, present), rel=1e-5)
    assert lovasz_softmax_loss(logits, target, classes="all").item() == pytest.approx(
        _lovasz_brute_force(probs, labels, [0, 1, 2]), rel=1e-5)
    assert lovasz_softmax_loss(logits, target, classes=[1]).item() == pytest.approx(
        _lovasz_brute_force(probs, labels, [1]), rel=1e-5)


def test_lovasz_perfect_ignored_empty_and_gradients():
    torch.manual_seed(2)
    target = torch.zeros(2, 6, 6, dtype=torch.long)
    target[0, 1:3, 1:4] = 1
    target[1, 4, :] = 2
    assert lovasz_softmax_loss(_perfect(target, 3), target).item() < 1e-6
    logits = torch.randn(2, 3, 6, 6, requires_grad=True)
    loss = lovasz_softmax_loss(logits, target)
    assert 0 < loss.item() <= 1
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # Ignored pixels: neither their logits nor their presence change the value.
    masked = target.clone()
    masked[:, :, 5] = 255
    changed = logits.detach().clone()
    changed[:, :, :, 5] = torch.randn(2, 3, 6) * 10
    assert lovasz_softmax_loss(changed, masked).item() == pytest.approx(
        lovasz_softmax_loss(logits.detach()[..., :5], target[..., :5]).item(), rel=1e-6)
    assert lovasz_softmax_loss(logits, torch.full_like(target, 255)).item() == 0.0
    with pytest.raises(ValueError, match="classes must be"):
        lovasz_softmax_loss(logits, target, classes="some")


def test_distillation_is_the_temperature_scaled_kl_over_labelled_pixels():
    torch.manual_seed(3)
    teacher = torch.randn(2, 3, 4, 4, requires_grad=True)
    student = torch.randn(2, 3, 4, 4, requires_grad=True)
    assert distillation_loss(teacher.detach().clone(), teacher).abs().item() < 1e-6
    target = torch.randint(0, 3, (2, 4, 4))
    target[0, :, 0] = 255
    t = 2.0
    q = torch.softmax(teacher.detach() / t, 1)
    kl = (q * (q.log() - torch.log_softmax(student.detach() / t, 1))).sum(1)
    labelled = target != 255
    loss = distillation_loss(student, teacher, target, temperature=t)
    assert loss.item() > 0
    assert loss.item() == pytest.approx((kl[labelled].mean() * t**2).item(), rel=1e-5)
    assert distillation_loss(student, teacher, temperature=t).item() == pytest.approx((kl.mean() * t**2).item(),
                                                                                     rel=1e-5)
    # Padding pixels do not count; the teacher gets no gradient.
    other = student.detach().clone()
    other[0, :, :, 0] += 5.0
    assert distillation_loss(other, teacher, target, temperature=t).item() == pytest.approx(loss.item(), rel=1e-6)
    loss.backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    assert distillation_loss(student, teacher, torch.full_like(target, 255)).item() == 0.0


def test_segmentation_loss_combines_ce_with_the_region_term():
    torch.manual_seed(4)
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    target[1, 0] = 255
    weight = class_weights([0.9, 0.07, 0.03], "inverse_sqrt")
    ce = masked_cross_entropy(logits, target, 255, torch.as_tensor(weight, dtype=torch.float32))
    assert SegmentationLoss("ce", class_weight=weight)(logits, target).item() == pytest.approx(ce.item())
    dice = SegmentationLoss("ce+dice", class_weight=torch.as_tensor(weight), region_weight=0.5)
    assert dice(logits, target).item() == pytest.approx((ce + 0.5 * soft_dice_loss(logits, target)).item(), rel=1e-6)
    lovasz = SegmentationLoss("ce+lovasz")
    terms = lovasz.terms(logits, target)
    assert set(terms) == {"ce", "lovasz"}
    assert lovasz(logits, target).item() == pytest.approx((terms["ce"] + terms["lovasz"]).item(), rel=1e-6)
    assert [SegmentationLoss(name).region for name in LOSSES] == [None, "dice", "lovasz"]
    with pytest.raises(ValueError, match=r"loss must be one of ce, ce\+dice, ce\+lovasz, got 'focal'"):
        SegmentationLoss("focal")


def test_losses_compute_in_float32_from_half_logits():
    torch.manual_seed(5)
    logits = torch.randn(1, 3, 6, 6)
    target = torch.randint(0, 3, (1, 6, 6))
    half = logits.half()
    for fn in (soft_dice_loss, lovasz_softmax_loss, SegmentationLoss("ce+dice"), SegmentationLoss("ce+lovasz")):
        out = fn(half, target)
        assert out.dtype == torch.float32
        assert out.item() == pytest.approx(fn(half.float(), target).item(), rel=1e-6)
    assert distillation_loss(half, torch.randn(1, 3, 6, 6).half(), target).dtype == torch.float32


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_trains_logits_towards_the_target(name):
    """A few steps of Adam on free logits lower every configured loss."""
    torch.manual_seed(6)
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 2:5, 3:6] = 1
    logits = torch.zeros(1, 2, 8, 8, requires_grad=True)
    loss_fn = SegmentationLoss(name)
    opt = torch.optim.Adam([logits], lr=0.1)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = loss_fn(logits, target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_dice_brute_force_matches_a_per_pixel_loop():
    """The batched implementation against a plain loop over pixels (two images, an ignored one)."""
    torch.manual_seed(7)
    logits = torch.randn(2, 3, 3, 3)
    target = torch.randint(0, 3, (2, 3, 3))
    target[0, 0, 0] = 255
    probs = torch.softmax(logits, 1)
    per_class = []
    for c in (1, 2):
        inter = pred = true = 0.0
        for b, i, j in product(range(2), range(3), range(3)):
            if target[b, i, j] == 255:
                continue
            g = float(target[b, i, j] == c)
            p = float(probs[b, c, i, j])
            inter, pred, true = inter + p * g, pred + p, true + g
        if true > 0:
            per_class.append(1 - 2 * inter / (pred + true))
    assert soft_dice_loss(logits, target, eps=0.0).item() == pytest.approx(sum(per_class) / len(per_class), rel=1e-5)
