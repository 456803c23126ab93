"""Spatial shift (S2-MLPv2, AutoNAD Eq. 18/19) as a torch custom op.

The operator is its own op (not a handful of slicing calls inlined into a block) because
deployment exports it as one TensorRT plugin node; `autonad_edge.export` lowers it to
Slice/Concat for portable ONNX.

Semantics, for an NCHW tensor with C channels split into four groups
``g = 0..3`` covering channels ``[floor(g*C/4), floor((g+1)*C/4))`` (so when C is not a
multiple of 4 the remainder goes to groups 1 and 3, e.g. C=6 -> sizes 1, 2, 1, 2; groups may
be empty when C < 4):

=========  ==================  ==================
group      pattern 1 (Eq. 18)  pattern 2 (Eq. 19)
=========  ==================  ==================
0          down  (H, +1)       right (W, +1)
1          up    (H, -1)       left  (W, -1)
2          right (W, +1)       down  (H, +1)
3          left  (W, -1)       up    (H, -1)
=========  ==================  ==================

"down" means ``y[..., h, :] = x[..., h-1, :]`` for ``h >= 1``. The row or column the shift
vacates keeps its original value (``y[..., 0, :] = x[..., 0, :]``), as in S2-MLPv2's
reference, rather than being zero-filled.
"""

from __future__ import annotations

import torch
from torch import Tensor

# (dim, step) per group; dim 2 is H, dim 3 is W of an NCHW tensor.
SHIFT_PATTERNS: dict[int, tuple[tuple[int, int], ...]] = {
    1: ((2, +1), (2, -1), (3, +1), (3, -1)),
    2: ((3, +1), (3, -1), (2, +1), (2, -1)),
}


def channel_groups(channels: int) -> list[tuple[int, int]]:
    """The four ``[start, stop)`` channel ranges of the shift groups."""
    bounds = [(g * channels) // 4 for g in range(5)]
    return [(bounds[g], bounds[g + 1]) for g in range(4)]


def _shift_one(x: Tensor, dim: int, step: int) -> Tensor:
    """Shift by one along ``dim``; the vacated border keeps its original value."""
    n = x.shape[dim]
    if n <= 1:
        return x
    if step > 0:
        return torch.cat([x.narrow(dim, 0, 1), x.narrow(dim, 0, n - 1)], dim=dim)
    return torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim=dim)


def _unshift_one(g: Tensor, dim: int, step: int) -> Tensor:
    """Adjoint of `_shift_one` (its vector-Jacobian product)."""
    n = g.shape[dim]
    if n <= 1:
        return g
    if step > 0:
        # y[0] = x[0], y[h] = x[h-1]: x[0] receives y[0] + y[1], x[h] receives y[h+1], x[n-1] none.
        head = g.narrow(dim, 0, 1) + g.narrow(dim, 1, 1)
        parts = [head, g.narrow(dim, 2, n - 2), torch.zeros_like(g.narrow(dim, 0, 1))]
    else:
        tail = g.narrow(dim, n - 1, 1) + g.narrow(dim, n - 2, 1)
        parts = [torch.zeros_like(g.narrow(dim, 0, 1)), g.narrow(dim, 0, n - 2), tail]
    return torch.cat(parts, dim=dim)


def _apply_groups(x: Tensor, pattern: int, fn) -> Tensor:
    if pattern not in SHIFT_PATTERNS:
        raise ValueError(f"spatial shift pattern must be 1 or 2, got {pattern}")
    if x.dim() != 4:
        raise ValueError(f"spatial shift expects an NCHW tensor, got shape {tuple(x.shape)}")
    pieces = []
    for (start, stop), (dim, step) in zip(channel_groups(x.shape[1]), SHIFT_PATTERNS[pattern]):
        if stop > start:
            pieces.append(fn(x[:, start:stop], dim, step))
    return torch.cat(pieces, dim=1)


def spatial_shift_reference(x: Tensor, pattern: int) -> Tensor:
    """Reference implementation from standard ops (slices and concatenations only).

    This is also the form the portable ONNX export uses, so it must stay free of in-place ops.
    """
    return _apply_groups(x, pattern, _shift_one)


def spatial_shift_backward_reference(grad: Tensor, pattern: int) -> Tensor:
    return _apply_groups(grad, pattern, _unshift_one)


@torch.library.custom_op("autonad::spatial_shift", mutates_args=())
def spatial_shift(x: Tensor, pattern: int) -> Tensor:
    """Spatial shift of an NCHW tensor with pattern 1 (Eq. 18) or 2 (Eq. 19)."""
    return spatial_shift_reference(x, pattern).contiguous()


@spatial_shift.register_fake
def _(x: Tensor, pattern: int) -> Tensor:
    # Contiguous like the real output, whatever the input's strides (empty_like would keep
    # a channels-last input's, and compiled graphs check the strides).
    return x.new_empty(x.shape)


def _setup_context(ctx, inputs, output) -> None:
    ctx.pattern = inputs[1]


def _backward(ctx, grad: Tensor):
    return spatial_shift_backward_reference(grad, ctx.pattern), None


spatial_shift.register_autograd(_backward, setup_context=_setup_context)


class SpatialShift(torch.nn.Module):
    """Module form of `spatial_shift`, so a network shows the op in its printout."""

    def __init__(self, pattern: int) -> None:
        super().__init__()
        if pattern not in SHIFT_PATTERNS:
            raise ValueError(f"spatial shift pattern must be 1 or 2, got {pattern}")
        self.pattern = pattern

    def forward(self, x: Tensor) -> Tensor:
        return spatial_shift(x, self.pattern)

    def extra_repr(self) -> str:
        return f"pattern={self.pattern}"
