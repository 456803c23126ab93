"""The search's noise-vs-spread verdict, on hand-made confusion matrices."""

import numpy as np
import pytest

from autonad_edge.search.signal import SearchSignal, bootstrap_std
from autonad_edge.training.evaluate import image_matrices


def test_identical_images_have_no_noise():
    one = np.array([[90, 10], [5, 20]])
    assert bootstrap_std(np.stack([one] * 12)) == 0.0
    assert bootstrap_std(np.stack([one])) == 0.0  # one image: nothing to resample


def test_images_that_disagree_make_noise_and_more_images_less():
    good, bad = np.array([[50, 0], [0, 50]]), np.array([[50, 0], [50, 0]])
    few = bootstrap_std(np.stack([good, bad] * 3), seed=1)
    many = bootstrap_std(np.stack([good, bad] * 30), seed=1)
    assert few > 0.05 and many < few
    assert bootstrap_std(np.stack([good, bad] * 3), seed=1) == few  # deterministic for a seed


def test_verdict_latency_decided_when_spread_is_within_the_noise():
    good, bad = np.array([[50, 0], [0, 50]]), np.array([[50, 0], [50, 0]])
    noisy = np.stack([good, bad] * 3)
    close = SearchSignal.measure(noisy, [0.60, 0.61, 0.605], chosen_miou=0.60)
    assert close.latency_decided and "made on latency" in close.summary()
    apart = SearchSignal.measure(np.stack([good] * 6), [0.2, 0.5, 0.8], chosen_miou=0.5)
    assert apart.noise == 0.0 and not apart.latency_decided
    assert apart.best_gap == pytest.approx(0.3) and "saw accuracy" in apart.summary()
    assert apart.to_dict()["latency_decided"] is False


def test_image_matrices_sum_to_the_split_matrix():
    import torch

    from autonad_edge.training.evaluate import evaluate

    class Half(torch.nn.Module):
        num_classes = 2

        def forward(self, x):  # class 1 where channel 0 is positive
            return torch.cat([torch.zeros_like(x[:, :1]), x[:, :1]], dim=1)

    g = torch.Generator().manual_seed(0)
    items = [(torch.randn(3, 8, 8, generator=g), torch.randint(0, 2, (8, 8), generator=g)) for _ in range(5)]
    matrices = image_matrices(Half(), items)
    assert matrices.shape == (5, 2, 2)
    np.testing.assert_array_equal(matrices.sum(axis=0), evaluate(Half(), items).metrics.matrix)
    shifted = image_matrices(Half(), items, background_offset=100.0)
    assert shifted[:, :, 1].sum() == 0  # a huge background offset predicts background only


def test_too_few_candidates_or_images_say_so_instead_of_a_verdict():
    """One candidate, or one val image (no noise to estimate), gave "within the noise, so the
    choice was made on latency" with a noise and spread of 0."""
    one_image = np.array([[[90, 2], [3, 5]]])
    lone = SearchSignal.measure(one_image, [0.5], 0.5)
    assert lone.summary() == "1 candidate scored on val: nothing to compare"
    blind = SearchSignal.measure(one_image, [0.4, 0.5, 0.7], 0.5)
    assert blind.latency_decided and "cannot be estimated" in blind.summary()
    assert "made on latency" not in blind.summary() and "saw accuracy" not in blind.summary()
