"""Spatial shift against a direct NumPy transcription of AutoNAD Eq. (18)/(19)."""

import numpy as np
import pytest
import torch

from autonad_edge.models.spatial_shift import SpatialShift, channel_groups, spatial_shift


def numpy_shift(x: np.ndarray, pattern: int) -> np.ndarray:
    """Eq. (18)/(19) written out index by index (NCHW, border keeps its value)."""
    n, c, h, w = x.shape
    y = x.copy()
    b = [(g * c) // 4 for g in range(5)]
    g0, g1, g2, g3 = (slice(b[i], b[i + 1]) for i in range(4))
    down, up, right, left = (g0, g1, g2, g3) if pattern == 1 else (g2, g3, g0, g1)
    for i in range(1, h):
        y[:, down, i, :] = x[:, down, i - 1, :]
    for i in range(h - 1):
        y[:, up, i, :] = x[:, up, i + 1, :]
    for j in range(1, w):
        y[:, right, :, j] = x[:, right, :, j - 1]
    for j in range(w - 1):
        y[:, left, :, j] = x[:, left, :, j + 1]
    return y


@pytest.mark.parametrize("pattern", [1, 2])
@pytest.mark.parametrize("shape", [(2, 8, 5, 6), (1, 6, 4, 4), (1, 7, 3, 9), (2, 3, 2, 2), (1, 1, 1, 5), (1, 5, 1, 1)])
def test_matches_numpy_transcription(pattern, shape):
    x = torch.randn(*shape)
    expected = numpy_shift(x.numpy(), pattern)
    assert np.array_equal(spatial_shift(x, pattern).numpy(), expected)


def test_channel_rule_for_counts_not_divisible_by_four():
    assert channel_groups(8) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert channel_groups(6) == [(0, 1), (1, 3), (3, 4), (4, 6)]
    assert channel_groups(3) == [(0, 0), (0, 1), (1, 2), (2, 3)]


def test_border_keeps_original_value():
    x = torch.arange(16.0).reshape(1, 4, 2, 2)
    y = spatial_shift(x, 1)
    # group 0 shifts down: row 0 keeps its own values, row 1 takes row 0.
    assert y[0, 0].tolist() == [[0.0, 1.0], [0.0, 1.0]]
    # group 3 shifts left: the last column keeps its own values.
    assert y[0, 3].tolist() == [[13.0, 13.0], [15.0, 15.0]]


@pytest.mark.parametrize("pattern", [1, 2])
@pytest.mark.parametrize("shape", [(2, 6, 4, 5), (1, 5, 1, 3), (1, 4, 2, 2)])
def test_gradcheck(pattern, shape):
    x = torch.randn(*shape, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: spatial_shift(t, pattern), (x,))


def test_is_a_registered_custom_op_and_module():
    assert hasattr(torch.ops.autonad, "spatial_shift")
    x = torch.randn(1, 8, 3, 3)
    assert torch.equal(torch.ops.autonad.spatial_shift(x, 2), SpatialShift(2)(x))
    with pytest.raises(ValueError, match="pattern"):
        SpatialShift(3)
    with pytest.raises(ValueError, match="NCHW"):
        spatial_shift(torch.randn(8, 3, 3), 1)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_fake_kernel_describes_the_real_output(memory_format):
    # torch.compile and torch.export trace with the fake kernel: its output must have the real
    # output's shape and strides (contiguous), whatever the input's layout.
    x = torch.randn(2, 8, 4, 5).to(memory_format=memory_format).requires_grad_()
    torch.library.opcheck(torch.ops.autonad.spatial_shift.default, (x, 1))
