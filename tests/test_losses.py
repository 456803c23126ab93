"""Class-weighted cross-entropy for rare defect pixels, and its use by the trainers."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autonad_edge.data import load_dataset
from autonad_edge.space import SearchSpace
from autonad_edge.training.config import RetrainConfig
from autonad_edge.training.losses import MAX_WEIGHT_RATIO, class_weights, masked_cross_entropy
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
