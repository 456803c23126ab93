"""The U-Net baseline: any input size, its parameter count, ONNX parity, and that it learns."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

# `onnx_export.translation_table` looks up torch.ops.autonad.spatial_shift, which exists only once
# this module is imported; a U-Net has no spatial shift, so nothing else imports it here.
import autonad_edge.models.spatial_shift  # noqa: F401
from autonad_edge.export import export_module_bytes
from autonad_edge.models.unet import UNet
from autonad_edge.training.losses import SegmentationLoss

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _unet_params(num_classes: int, in_channels: int, base: int, levels: int) -> int:
    """Parameters of `UNet`, with widths w_k = base * 2**k (k = 0..levels).

    A double conv in -> out: two bias-free 3x3 convs and two BatchNorms (scale and shift),
    9*out*(in + out) + 4*out. Encoder: in_channels -> w_0, then w_{k-1} -> w_k up to the
    bottleneck w_levels. Decoder level k: a 2x2 transposed conv w_{k+1} -> w_k with bias
    (4*w_{k+1}*w_k + w_k) and a double conv 2*w_k -> w_k. Classifier: 1x1 conv with bias."""
    w = [base * 2**k for k in range(levels + 1)]
    ins = [in_channels, *w[:-1]]

    def double(i: int, o: int) -> int:
        return 9 * o * (i + o) + 4 * o

    encoder = sum(double(i, o) for i, o in zip(ins, w))
    decoder = sum(4 * w[k + 1] * w[k] + w[k] + double(2 * w[k], w[k]) for k in range(levels))
    return encoder + decoder + w[0] * num_classes + num_classes


@pytest.mark.parametrize("size", [(64, 64), (50, 77)])
def test_output_matches_the_input_size(size):
    torch.manual_seed(0)
    net = UNet(num_classes=3, base_width=4)
    x = torch.randn(2, 3, *size)
    assert net(x).shape == (2, 3, *size)
    net.eval()
    with torch.no_grad():
        assert net(x[:1]).shape == (1, 3, *size)


def test_parameter_count_matches_the_formula():
    net = UNet(num_classes=2)
    assert net.num_params() == _unet_params(2, 3, 16, 4) == 1_942_594
    for args in [(5, 1, 8, 3), (2, 3, 4, 2)]:
        assert UNet(args[0], args[1], args[2], args[3]).num_params() == _unet_params(*args)
    info = net.describe()
    assert info["params"] == 1_942_594 and info["widths"] == [16, 32, 64, 128, 256]
    assert net.num_classes == 2 and info["input_multiple"] == 16
    with pytest.raises(ValueError):
        UNet(num_classes=0)


def test_portable_onnx_export_matches_torch():
    torch.manual_seed(1)
    net = UNet(num_classes=3, base_width=4, levels=4)
    with torch.no_grad():  # non-trivial BatchNorm running statistics for eval mode
        for _ in range(3):
            net(torch.randn(2, 3, 40, 52) * 2 + 0.5)
    net.eval()
    x = torch.randn(1, 3, 40, 52)  # not a multiple of 16: the Pad and the crop are exported too
    data = export_module_bytes(net, (x,), "portable", input_names=["image"], output_names=["logits"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected = net(x).numpy()
    assert onnx_out.shape == expected.shape == (1, 3, 40, 52)
    assert np.abs(onnx_out - expected).max() < 1e-4
    assert net.training is False


def test_a_few_adam_steps_learn_bright_blobs():
    torch.manual_seed(2)
    n, size = 4, 32
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images = torch.randn(n, 3, size, size) * 0.3
    target = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        cy, cx, r = torch.randint(8, 24, (2,)).tolist() + [int(torch.randint(3, 7, ()).item())]
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        target[i][blob] = 1
        images[i][:, blob] += 1.5
    net = UNet(num_classes=2, base_width=4, levels=2)
    loss_fn = SegmentationLoss("ce+dice")
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = loss_fn(net(images), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
