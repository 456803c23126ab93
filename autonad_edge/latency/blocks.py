"""Latency units: the small, separately measurable pieces a subnet is made of.

Every searchable choice of an architecture at an input size maps to a `Unit`: a backbone
block, a patch embedding (with the stage's output norm: a stage with no blocks), an MFAM edge,
the pyramid pooling module, the top-down merges (upsample + add) and the head (fuse +
classifier + resize to the input size). A unit is plain data; `build()` makes the real
network module (the same classes `SegmentationNet` uses, fresh weights) and `export_unit()`
its ONNX graph.

A unit's identity is its **signature**: canonical JSON of everything its latency depends on
(kind, operator config, channel counts, input shapes, batch) and nothing it does not
(weights, the stage or position it sits at, the name of the edge). `key` is a short hash of
it; backend, precision and device are part of the latency table's key instead. Two blocks
with the same shapes and config anywhere in any architecture share one measurement.

Spatial sizes follow the network exactly: the stride-4 patch embedding gives ``ceil(H/4)``,
every later one ``ceil(H/2)`` (padding k//2), and the head resizes to the input size.

Torch-free at import time (this package is imported by the torch-free agent tooling); torch,
the models and the exporter are imported inside the functions that need them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import combinations
from typing import Any, Iterable, Sequence

from autonad_edge.space import EDGE_NAMES, Arch, BlockArch, SearchSpace

# Bump when a unit's module or its signature fields change meaning: old table rows then
# stop matching instead of being silently reused.
UNIT_FORMAT = 1
UNIT_KINDS = ("embed", "block", "edge", "ppm", "merge", "head")
# Mirrors autonad_edge.models.network (kept here so this module needs no torch).
EMBED_KERNELS = (7, 3, 3, 3)
EMBED_STRIDES = (4, 2, 2, 2)
BATCH = 1

Shape = tuple[int, ...]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def conv_out(size: int, kernel: int, stride: int) -> int:
    """Output length of a convolution with padding kernel // 2 (the patch embeddings)."""
    pad = kernel // 2
    return (size + 2 * pad - kernel) // stride + 1


def image_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = (int(v) for v in image_size)
    return (h, w)


def feature_sizes(image_size: int | Sequence[int]) -> list[tuple[int, int]]:
    """(H, W) of the four backbone stages' outputs for an input of `image_size`."""
    h, w = image_hw(image_size)
    sizes = []
    for k, s in zip(EMBED_KERNELS, EMBED_STRIDES):
        h, w = conv_out(h, k, s), conv_out(w, k, s)
        sizes.append((h, w))
    return sizes


def ffn_hidden(channels: int, ratio: float) -> int:
    """Mirrors `autonad_edge.models.mix_ffn.ffn_hidden` (checked by a test)."""
    return max(1, int(round(channels * ratio)))


def _canon(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_canon(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@dataclass(frozen=True)
class Unit:
    """One measurable piece of a network.

    ``params`` holds the latency-relevant configuration (sorted key/value pairs), ``inputs``
    the NCHW input shapes. ``label`` (where it sits, e.g. ``stage2.block1``) is for people
    and does not take part in equality or the signature.
    """

    kind: str
    params: tuple[tuple[str, Any], ...]
    inputs: tuple[Shape, ...]
    label: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.kind not in UNIT_KINDS:
            raise ValueError(f"unknown unit kind {self.kind!r}")

    @classmethod
    def make(cls, kind: str, inputs: Iterable[Sequence[int]], label: str = "", **params: Any) -> "Unit":
        items = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in params.items()))
        return cls(kind, items, tuple(tuple(int(d) for d in s) for s in inputs), label)

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.params)

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": UNIT_FORMAT,
            "kind": self.kind,
            **{k: _canon(v) for k, v in self.params},
            "inputs": _canon(self.inputs),
        }

    @property
    def signature(self) -> str:
        """Canonical JSON of everything the latency depends on; no weights, no position."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def key(self) -> str:
        """16-hex-digit hash of the signature."""
        return _hash(self.signature)

    @property
    def feature(self) -> str:
        """Group for the estimator's correction: the operator for blocks, else the kind."""
        return str(self.config["op"]) if self.kind == "block" else self.kind

    def describe(self) -> str:
        c = self.config
        shape = "x".join(str(d) for d in self.inputs[0][1:])
        if self.kind == "block":
            op = f"conv{c['kernel']}" if c["op"] == "conv" else c["op"]
            return f"block {op} c{c['channels']} h{c['hidden']} @{shape}"
        if self.kind == "embed":
            return f"embed {c['in_ch']}->{c['out_ch']} k{c['kernel']}s{c['stride']} @{shape}"
        if self.kind == "edge":
            return f"edge {c['op']} {c['in_ch']}->{c['out_ch']} @{shape}"
        if self.kind == "ppm":
            return f"ppm {c['in_ch']}->{c['out_ch']} pools{list(c['pool_sizes'])} @{shape}"
        if self.kind == "merge":
            return f"merge c{c['channels']} {shape}->{'x'.join(map(str, self.inputs[1][2:]))}"
        return f"head c{c['channels']} cls{c['num_classes']} ->{c['out_h']}x{c['out_w']}"

    # ---- torch side ----------------------------------------------------------------------
    def build(self):
        """The real module (the network's own classes), eval mode, freshly initialised."""
        return _build(self)

    def example_inputs(self, seed: int = 0):
        import torch

        g = torch.Generator().manual_seed(seed)
        return tuple(torch.randn(*s, generator=g) for s in self.inputs)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---- the units of one architecture ---------------------------------------------------------


def embed_unit(stage: int, in_ch: int, out_ch: int, in_hw: tuple[int, int], label: str = "") -> Unit:
    return Unit.make(
        "embed", [(BATCH, in_ch, *in_hw)], label or f"stage{stage + 1}.embed",
        in_ch=in_ch, out_ch=out_ch, kernel=EMBED_KERNELS[stage], stride=EMBED_STRIDES[stage],
    )


def block_unit(
    channels: int, block: BlockArch, hw: tuple[int, int], head_dim: int, sr_ratio: int, label: str = ""
) -> Unit:
    params: dict[str, Any] = {"op": block.op, "channels": channels, "hidden": ffn_hidden(channels, block.ffn_ratio)}
    if block.op == "conv":
        params.update(kernel=block.kernel or 3, head_dim=head_dim)
    elif block.op == "transformer":
        params.update(head_dim=head_dim, sr_ratio=sr_ratio)
    return Unit.make("block", [(BATCH, channels, *hw)], label, **params)


def edge_unit(op: str, in_ch: int, out_ch: int, hw: tuple[int, int], label: str = "") -> Unit:
    return Unit.make("edge", [(BATCH, in_ch, *hw)], label, op=op, in_ch=in_ch, out_ch=out_ch)


def ppm_unit(in_ch: int, out_ch: int, pool_sizes: Sequence[int], hw: tuple[int, int]) -> Unit:
    return Unit.make(
        "ppm", [(BATCH, in_ch, *hw)], "ppm", in_ch=in_ch, out_ch=out_ch, pool_sizes=tuple(pool_sizes)
    )


def merge_unit(channels: int, coarse_hw: tuple[int, int], fine_hw: tuple[int, int], label: str = "") -> Unit:
    """Top-down step ``lateral + resize(f, lateral size)`` of the MFAM."""
    return Unit.make("merge", [(BATCH, channels, *coarse_hw), (BATCH, channels, *fine_hw)], label, channels=channels)


def head_unit(channels: int, num_classes: int, sizes: Sequence[tuple[int, int]], out_hw: tuple[int, int]) -> Unit:
    """Fuse (concat of the four levels resized to stride 4, 1x1 conv, GN, ReLU), classifier,
    resize to the input size. `sizes` are the four backbone levels' (H, W), finest first."""
    inputs = [(BATCH, channels, *sizes[i]) for i in (3, 2, 1, 0)]  # f4, out3, out2, out1
    return Unit.make(
        "head", inputs, "head", channels=channels, num_classes=num_classes, out_h=out_hw[0], out_w=out_hw[1]
    )


def units_of(arch: Arch, space: SearchSpace, num_classes: int, image_size: int | Sequence[int]) -> list[Unit]:
    """Every unit of `arch` at `image_size`, in network order (repeats kept: a sum over this
    list is the plain-sum latency estimate)."""
    space.validate(arch)
    out_hw = image_hw(image_size)
    sizes = feature_sizes(out_hw)
    units: list[Unit] = []
    in_ch, in_hw = space.in_chans, out_hw
    for i, (stage, stage_space) in enumerate(zip(arch.stages, space.stages)):
        units.append(embed_unit(i, in_ch, stage.width, in_hw))
        for j, block in enumerate(stage.blocks):
            units.append(
                block_unit(stage.width, block, sizes[i], space.head_dim, stage_space.sr_ratio,
                           label=f"stage{i + 1}.block{j + 1}")
            )
        in_ch, in_hw = stage.width, sizes[i]
    c = space.decoder_channels
    ops = dict(zip(EDGE_NAMES, arch.edges))
    units.append(ppm_unit(arch.stages[3].width, c, arch.pool_sizes, sizes[3]))
    for i in (2, 1, 0):
        units.append(edge_unit(ops[f"lateral{i + 1}"], arch.stages[i].width, c, sizes[i], f"lateral{i + 1}"))
        units.append(merge_unit(c, sizes[i + 1], sizes[i], f"merge{i + 1}"))
        units.append(edge_unit(ops[f"output{i + 1}"], c, c, sizes[i], f"output{i + 1}"))
    units.append(head_unit(c, num_classes, sizes, out_hw))
    return units


def space_units(space: SearchSpace, num_classes: int, image_size: int | Sequence[int]) -> list[Unit]:
    """Every distinct unit a search over `space` at `image_size` can hit (by signature)."""
    out_hw = image_hw(image_size)
    sizes = feature_sizes(out_hw)
    found: dict[str, Unit] = {}

    def add(unit: Unit) -> None:
        found.setdefault(unit.key, unit)

    prev_widths: tuple[int, ...] = (space.in_chans,)
    prev_hw = out_hw
    for i, stage_space in enumerate(space.stages):
        for in_ch in prev_widths:
            for w in stage_space.widths:
                add(embed_unit(i, in_ch, w, prev_hw))
        if stage_space.max_depth:
            for w in stage_space.widths:
                for ratio in stage_space.ffn_ratios:
                    for op, kernel in space.block_choices():
                        add(block_unit(w, BlockArch(op, ratio, kernel), sizes[i], space.head_dim,
                                       stage_space.sr_ratio, label=f"stage{i + 1}"))
        prev_widths, prev_hw = stage_space.widths, sizes[i]
    c = space.decoder_channels
    for w in space.stages[3].widths:
        for pools in combinations(sorted(space.pool_size_choices), space.num_pool_branches):
            add(ppm_unit(w, c, pools, sizes[3]))
    for i in (2, 1, 0):
        for op in space.edge_ops:
            for w in space.stages[i].widths:
                add(edge_unit(op, w, c, sizes[i], f"lateral{i + 1}"))
            add(edge_unit(op, c, c, sizes[i], f"output{i + 1}"))
        add(merge_unit(c, sizes[i + 1], sizes[i], f"merge{i + 1}"))
    add(head_unit(c, num_classes, sizes, out_hw))
    return list(found.values())


def dedup(units: Iterable[Unit]) -> list[Unit]:
    """Distinct units by signature, first occurrence kept, order preserved."""
    seen: dict[str, Unit] = {}
    for u in units:
        seen.setdefault(u.key, u)
    return list(seen.values())


def network_signature(arch: Arch, space: SearchSpace, num_classes: int, image_size: int | Sequence[int]) -> str:
    """Table signature of a whole exported subnet (end-to-end measurements)."""
    h, w = image_hw(image_size)
    return json.dumps(
        {
            "v": UNIT_FORMAT, "kind": "network", "arch": arch.hash, "num_classes": num_classes,
            "head_dim": space.head_dim, "decoder_channels": space.decoder_channels,
            "sr_ratios": [s.sr_ratio for s in space.stages], "in_chans": space.in_chans,
            "inputs": [[BATCH, space.in_chans, h, w]],
        },
        sort_keys=True, separators=(",", ":"),
    )


# ---- building and exporting -------------------------------------------------------------------


@lru_cache(maxsize=1)
def _wrappers():
    """Module classes for the units the network computes inline (defined lazily: torch)."""
    from torch import nn

    from autonad_edge.models.layers import resize
    from autonad_edge.models.mfam import _fuse_block, _head

    class TopDownMerge(nn.Module):
        """``lateral + resize(f, lateral size)``, as in `MFAM.forward`."""

        def forward(self, f, lateral):
            return lateral + resize(f, lateral.shape[-2:])

    class Head(nn.Module):
        """Fuse + classifier + resize to the input size, as in `MFAM.forward`'s `_head`."""

        def __init__(self, channels: int, num_classes: int, out_size: tuple[int, int]) -> None:
            super().__init__()
            self.fuse = _fuse_block(channels)
            self.classifier = nn.Conv2d(channels, num_classes, 1)
            self.out_size = tuple(out_size)

        def forward(self, f4, out3, out2, out1):
            return _head([f4, out3, out2, out1], self.fuse, self.classifier, self.out_size)

    return TopDownMerge, Head


def _build(unit: Unit):
    from torch import nn

    from autonad_edge.models.hybrid_block import HybridBlock
    from autonad_edge.models.layers import LayerNorm2d, init_weights
    from autonad_edge.models.mfam import DecoderEdge, PyramidPooling
    from autonad_edge.models.network import Stage

    c = unit.config
    if unit.kind == "embed":
        k, s = c["kernel"], c["stride"]
        module = Stage(nn.Conv2d(c["in_ch"], c["out_ch"], k, s, k // 2), LayerNorm2d(c["out_ch"]), [],
                       LayerNorm2d(c["out_ch"]))
    elif unit.kind == "block":
        ratio = c["hidden"] / c["channels"]
        block = BlockArch(c["op"], ratio, c.get("kernel"))
        module = HybridBlock.build(c["channels"], block, c.get("head_dim", 1), c.get("sr_ratio", 1))
    elif unit.kind == "edge":
        module = DecoderEdge(c["op"], c["in_ch"], c["out_ch"])
    elif unit.kind == "ppm":
        module = PyramidPooling(c["in_ch"], c["out_ch"], tuple(c["pool_sizes"]))
    elif unit.kind == "merge":
        module = _wrappers()[0]()
    else:
        module = _wrappers()[1](c["channels"], c["num_classes"], (c["out_h"], c["out_w"]))
    init_weights(module)
    return module.eval()


def export_unit(unit: Unit, flavor: str = "portable", module=None):
    """The unit's ONNX graph (`onnx.ModelProto`), static shapes, batch 1; of `module` (a
    `unit.build()` result) when given, else of a freshly built one."""
    import torch

    from autonad_edge.export import export_module

    module = unit.build() if module is None else module
    with torch.no_grad():
        return export_module(module, unit.example_inputs(), flavor=flavor)


def export_network(arch: Arch, space: SearchSpace, num_classes: int, image_size: int | Sequence[int],
                   flavor: str = "portable"):
    """The whole subnet's ONNX graph at `image_size`, batch 1 (for end-to-end measurements)."""
    import torch

    from autonad_edge.export import export_module
    from autonad_edge.models.network import SegmentationNet

    h, w = image_hw(image_size)
    net = SegmentationNet.from_arch(arch, space, num_classes).eval()
    x = torch.randn(BATCH, space.in_chans, h, w, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return export_module(net, (x,), flavor=flavor)


def count_by_kind(units: Iterable[Unit]) -> dict[str, int]:
    out: dict[str, int] = {}
    for u in units:
        out[u.kind] = out.get(u.kind, 0) + 1
    return out


__all__ = [
    "UNIT_FORMAT",
    "UNIT_KINDS",
    "Unit",
    "block_unit",
    "count_by_kind",
    "dedup",
    "edge_unit",
    "embed_unit",
    "export_network",
    "export_unit",
    "feature_sizes",
    "head_unit",
    "image_hw",
    "merge_unit",
    "network_signature",
    "ppm_unit",
    "space_units",
    "units_of",
]
