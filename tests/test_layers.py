"""The network's hand-written layers against torch's own."""

import pytest
import torch
import torch.nn.functional as F

from autonad_edge.models.layers import adaptive_avg_pool2d


@pytest.mark.parametrize("hw,size", [((4, 4), 1), ((4, 4), 3), ((4, 4), 6), ((7, 5), 3), ((13, 9), 5), ((8, 8), 4)])
def test_adaptive_avg_pool2d_equals_torch(hw, size):
    x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(adaptive_avg_pool2d(x, size), F.adaptive_avg_pool2d(x, size))
