"""The multi-level feature aggregation module (AutoNAD Sec. IV-C) and the segmentation head.

A top-down DAG over the four backbone levels (FPN / UPerNet-like)::

    f4 = PPM(x4)                                   # searchable pool sizes
    for i in 3, 2, 1:
        f = lateral_i(x_i) + upsample(f)           # searchable edge operator
        out_i = output_i(f)                        # searchable edge operator
    x = fuse(concat(out_1, up(out_2), up(out_3), up(f4)))  # at stride 4
    x = detail(x, image)   # optional: refined at stride 2 from the image (DetailBranch)
    logits = classifier(x)
    return upsample(logits, input size)

Edge operators: conv1x1, conv3x3, conv5x5, dilated conv3x3 (dilation 2), depthwise-separable
conv3x3. With shared weights (cross/entangled) all dense choices crop one stored 5x5 kernel:
1x1 and 3x3 take its centre, 5x5 all of it, and the dilated 3x3 the taps at offsets -2, 0, 2,
the same spatial offsets those weights have in the 5x5. The separable choice keeps its own
depthwise 3x3 and uses the centre tap as its pointwise projection. Classical sharing gives
every choice its own weights.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from autonad_edge.models.elastic import ElasticConv2d, ElasticDepthwiseConv2d
from autonad_edge.models.layers import adaptive_avg_pool2d, decoder_norm, resize
from autonad_edge.space import EDGE_NAMES

# (kernel, dilation) of the dense edge operators.
DENSE_EDGES = {"conv1x1": (1, 1), "conv3x3": (3, 1), "conv5x5": (5, 1), "dilconv3x3": (3, 2)}


def _dense_weight(weight: Tensor, op: str) -> Tensor:
    """The taps of a stored 5x5 (or smaller, classical) kernel that edge `op` uses."""
    if op == "dilconv3x3" and weight.shape[-1] == 5:
        return weight[..., ::2, ::2]
    kernel = DENSE_EDGES.get(op, (1, 1))[0]
    start = (weight.shape[-1] - kernel) // 2
    return weight[..., start : start + kernel, start : start + kernel]


class DecoderEdge(nn.Module):
    """A static MFAM edge: the chosen convolution, then GroupNorm and ReLU."""

    def __init__(self, op: str, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.op = op
        if op == "dwconv3x3":
            self.conv = nn.Sequential(
                nn.Conv2d(in_ch, in_ch, 3, padding=1, groups=in_ch, bias=False),
                nn.Conv2d(in_ch, out_ch, 1, bias=False),
            )
        else:
            k, d = DENSE_EDGES[op]
            self.conv = nn.Conv2d(in_ch, out_ch, k, padding=d * (k // 2), dilation=d, bias=False)
        self.norm = decoder_norm(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.norm(self.conv(x)))


class ElasticDecoderEdge(nn.Module):
    def __init__(self, max_in: int, out_ch: int, edge_ops: tuple[str, ...], sharing: str) -> None:
        super().__init__()
        self.out_ch, self.classical = out_ch, sharing == "classical"
        dense = [op for op in edge_ops if op in DENSE_EDGES]
        if self.classical:
            self.dense = nn.ModuleDict(
                {op: ElasticConv2d(max_in, out_ch, DENSE_EDGES[op][0], bias=False) for op in dense}
            )
            if "dwconv3x3" in edge_ops:
                self.pointwise = ElasticConv2d(max_in, out_ch, 1, bias=False)
        else:
            self.shared = ElasticConv2d(max_in, out_ch, 5, bias=False)
        if "dwconv3x3" in edge_ops:
            self.depthwise = ElasticDepthwiseConv2d(max_in, 3, bias=False)
        self.norm = decoder_norm(out_ch)

    def _weight(self, op: str, in_ch: int) -> Tensor:
        if op == "dwconv3x3":
            stored = self.pointwise.weight if self.classical else self.shared.weight
            return _dense_weight(stored[: self.out_ch, :in_ch], "conv1x1")
        stored = self.dense[op].weight if self.classical else self.shared.weight
        return _dense_weight(stored[: self.out_ch, :in_ch], op)

    def forward(self, x: Tensor, op: str) -> Tensor:
        w = self._weight(op, x.shape[1])
        if op == "dwconv3x3":
            y = F.conv2d(self.depthwise(x), w)
        else:
            k, d = DENSE_EDGES[op]
            y = F.conv2d(x, w, padding=d * (k // 2), dilation=d)
        return F.relu(self.norm(y))

    def extract(self, op: str, in_ch: int) -> DecoderEdge:
        w = self._weight(op, in_ch)
        static = DecoderEdge(op, in_ch, self.out_ch).to(w.device, w.dtype)
        with torch.no_grad():
            if op == "dwconv3x3":
                static.conv[0].weight.copy_(self.depthwise.weight[:in_ch])
                static.conv[1].weight.copy_(w)
            else:
                static.conv.weight.copy_(w)
            static.norm.load_state_dict(self.norm.state_dict())
        return static


def ppm_branch(in_ch: int, branch_ch: int) -> nn.Sequential:
    """One PPM branch's projection of the pooled input (1x1 conv, norm, ReLU)."""
    return nn.Sequential(nn.Conv2d(in_ch, branch_ch, 1, bias=False), decoder_norm(branch_ch), nn.ReLU())


def ppm_fuse(in_ch: int, branch_ch: int, branches: int, out_ch: int) -> nn.Sequential:
    """The PPM's 1x1 fuse of the input concatenated with its branches."""
    return nn.Sequential(nn.Conv2d(in_ch + branch_ch * branches, out_ch, 1, bias=False), decoder_norm(out_ch), nn.ReLU())


def pooled_context(branch: nn.Module, x: Tensor, pool_size: int) -> Tensor:
    """One PPM branch: pool `x` to `pool_size`, project, resize back to `x`'s size."""
    return resize(branch(adaptive_avg_pool2d(x, pool_size)), x.shape[-2:])


def fuse_context(fuse: nn.Module, x: Tensor, pooled: list[Tensor]) -> Tensor:
    return fuse(torch.cat([x, *pooled], dim=1))


class PyramidPooling(nn.Module):
    """PPM: pooled context at the chosen sizes, concatenated with the input, fused by 1x1.

    Its branches are independent of each other and of the fuse, so the latency table times
    them apart (`models.units`): the same code, `pooled_context` and `fuse_context`."""

    def __init__(self, in_ch: int, out_ch: int, pool_sizes: tuple[int, ...]) -> None:
        super().__init__()
        self.pool_sizes = tuple(pool_sizes)
        branch_ch = out_ch // len(pool_sizes)
        self.branches = nn.ModuleList(ppm_branch(in_ch, branch_ch) for _ in pool_sizes)
        self.fuse = ppm_fuse(in_ch, branch_ch, len(pool_sizes), out_ch)

    def forward(self, x: Tensor) -> Tensor:
        pooled = [pooled_context(b, x, s) for b, s in zip(self.branches, self.pool_sizes)]
        return fuse_context(self.fuse, x, pooled)

    def extra_repr(self) -> str:
        return f"pool_sizes={self.pool_sizes}"


class ElasticPyramidPooling(nn.Module):
    def __init__(self, max_in: int, out_ch: int, branches: int) -> None:
        super().__init__()
        self.max_in, self.out_ch = max_in, out_ch
        self.branch_ch = out_ch // branches
        self.branch_convs = nn.ModuleList(
            ElasticConv2d(max_in, self.branch_ch, 1, bias=False) for _ in range(branches)
        )
        self.branch_norms = nn.ModuleList(decoder_norm(self.branch_ch) for _ in range(branches))
        # Input columns: [x (up to max_in) | branch 0 | branch 1 | ...]; a narrower x keeps the
        # leading x columns and all branch columns.
        self.fuse_conv = ElasticConv2d(max_in + self.branch_ch * branches, out_ch, 1, bias=False)
        self.fuse_norm = decoder_norm(out_ch)

    def _fuse_weight(self, in_ch: int) -> Tensor:
        w = self.fuse_conv.weight
        return torch.cat([w[:, :in_ch], w[:, self.max_in :]], dim=1)

    def forward(self, x: Tensor, pool_sizes: tuple[int, ...]) -> Tensor:
        size = x.shape[-2:]
        pooled = [
            resize(F.relu(norm(conv(adaptive_avg_pool2d(x, s), self.branch_ch))), size)
            for conv, norm, s in zip(self.branch_convs, self.branch_norms, pool_sizes)
        ]
        y = F.conv2d(torch.cat([x, *pooled], dim=1), self._fuse_weight(x.shape[1]))
        return F.relu(self.fuse_norm(y))

    def extract(self, in_ch: int, pool_sizes: tuple[int, ...]) -> PyramidPooling:
        w = self.fuse_conv.weight
        static = PyramidPooling(in_ch, self.out_ch, pool_sizes).to(w.device, w.dtype)
        with torch.no_grad():
            for branch, conv, norm in zip(static.branches, self.branch_convs, self.branch_norms):
                branch[0].weight.copy_(conv.weight[:, :in_ch])
                branch[1].load_state_dict(norm.state_dict())
            static.fuse[0].weight.copy_(self._fuse_weight(in_ch))
            static.fuse[1].load_state_dict(self.fuse_norm.state_dict())
        return static


class MFAM(nn.Module):
    """Static decoder + head: what `extract()` produces."""

    def __init__(
        self, laterals: list[nn.Module], outputs: list[nn.Module], ppm: PyramidPooling,
        fuse: nn.Module, classifier: nn.Conv2d, detail: "DetailBranch | None" = None,
    ) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(laterals)
        self.outputs = nn.ModuleList(outputs)
        self.ppm, self.fuse, self.classifier = ppm, fuse, classifier
        self.detail = detail

    @classmethod
    def build(
        cls, widths: tuple[int, ...], edges: tuple[str, ...], pool_sizes: tuple[int, ...],
        channels: int, num_classes: int, detail_channels: int = 0, in_chans: int = 3,
    ) -> "MFAM":
        ops = dict(zip(EDGE_NAMES, edges))
        laterals = [DecoderEdge(ops[f"lateral{i + 1}"], widths[i], channels) for i in range(3)]
        outputs = [DecoderEdge(ops[f"output{i + 1}"], channels, channels) for i in range(3)]
        return cls(
            laterals, outputs, PyramidPooling(widths[3], channels, pool_sizes),
            fuse_block(channels), nn.Conv2d(channels, num_classes, 1),
            DetailBranch(in_chans, channels, detail_channels) if detail_channels else None,
        )

    def forward(self, features: list[Tensor], image: Tensor) -> Tensor:
        """Logits at the size of `image` (the network's input, which the detail path reads)."""
        f = self.ppm(features[3])
        levels = [f]
        for i in (2, 1, 0):
            lateral = self.laterals[i](features[i])
            f = top_down_merge(f, lateral)
            levels.append(self.outputs[i](f))
        return head(levels, self.fuse, self.classifier, image.shape[-2:], self.detail, image)


def top_down_merge(f: Tensor, lateral: Tensor) -> Tensor:
    """One top-down step: the coarser level resized onto the lateral, added."""
    return lateral + resize(f, lateral.shape[-2:])


def fuse_block(channels: int) -> nn.Sequential:
    """Concat of the four levels (4 x `channels`) to `channels`: 1x1 conv, norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(4 * channels, channels, 1, bias=False), decoder_norm(channels), nn.ReLU()
    )


class DetailBranch(nn.Module):
    """The head's stride-2 path from the image: two 3x3 convolutions on the image, concatenated
    with the fused stride-4 features (upsampled), fused back by a 1x1 convolution. At stride 4
    a 1-2 px crack is a quarter of a cell or less and bilinear upsampling blurs it away; here it
    is decided at twice the resolution for a few MFLOPs. Fixed, not searched: every subnet
    shares it (measured on the synthetic set, benchmarks/RESULTS.md)."""

    def __init__(self, in_chans: int, channels: int, detail_channels: int) -> None:
        super().__init__()
        d = detail_channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, d, 3, 2, 1, bias=False), decoder_norm(d), nn.ReLU(),
            nn.Conv2d(d, d, 3, 1, 1, bias=False), decoder_norm(d), nn.ReLU(),
        )
        self.fuse = nn.Sequential(nn.Conv2d(channels + d, channels, 1, bias=False), decoder_norm(channels), nn.ReLU())

    def forward(self, x: Tensor, image: Tensor) -> Tensor:
        d = self.stem(image)
        return self.fuse(torch.cat([resize(x, d.shape[-2:]), d], dim=1))


def head(levels: list[Tensor], fuse: nn.Module, classifier: nn.Module, out_size,
         detail: nn.Module | None = None, image: Tensor | None = None) -> Tensor:
    """The levels (coarsest first) resized to the finest, fused, refined at stride 2 by the
    detail path (if any, from `image`), classified, resized to `out_size`."""
    finest = levels[-1].shape[-2:]
    x = fuse(torch.cat([resize(f, finest) for f in reversed(levels)], dim=1))
    if detail is not None:
        x = detail(x, image)
    return resize(classifier(x), out_size)


class ElasticMFAM(nn.Module):
    def __init__(
        self, max_widths: tuple[int, ...], channels: int, num_classes: int,
        edge_ops: tuple[str, ...], branches: int, sharing: str, detail_channels: int = 0, in_chans: int = 3,
    ) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(
            ElasticDecoderEdge(max_widths[i], channels, edge_ops, sharing) for i in range(3)
        )
        self.outputs = nn.ModuleList(
            ElasticDecoderEdge(channels, channels, edge_ops, sharing) for _ in range(3)
        )
        self.ppm = ElasticPyramidPooling(max_widths[3], channels, branches)
        self.fuse = fuse_block(channels)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        # One set of weights for every subnet: its shapes depend on nothing searched.
        self.detail = DetailBranch(in_chans, channels, detail_channels) if detail_channels else None

    def forward(
        self, features: list[Tensor], edges: tuple[str, ...], pool_sizes: tuple[int, ...], image: Tensor,
    ) -> Tensor:
        ops = dict(zip(EDGE_NAMES, edges))
        f = self.ppm(features[3], pool_sizes)
        levels = [f]
        for i in (2, 1, 0):
            lateral = self.laterals[i](features[i], ops[f"lateral{i + 1}"])
            f = top_down_merge(f, lateral)
            levels.append(self.outputs[i](f, ops[f"output{i + 1}"]))
        return head(levels, self.fuse, self.classifier, image.shape[-2:], self.detail, image)

    def extract(self, widths: tuple[int, ...], edges: tuple[str, ...], pool_sizes: tuple[int, ...]) -> MFAM:
        ops = dict(zip(EDGE_NAMES, edges))
        laterals = [self.laterals[i].extract(ops[f"lateral{i + 1}"], widths[i]) for i in range(3)]
        outputs = [self.outputs[i].extract(ops[f"output{i + 1}"], self.outputs[i].out_ch) for i in range(3)]
        return MFAM(
            laterals, outputs, self.ppm.extract(widths[3], pool_sizes),
            copy.deepcopy(self.fuse), copy.deepcopy(self.classifier), copy.deepcopy(self.detail),
        )
