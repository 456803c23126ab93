"""Latency units: the small, separately measurable pieces a subnet is made of.

Every searchable choice of an architecture at an input size maps to units: a patch embedding
(with the stage's output norm: a stage with no blocks), a backbone block's two steps (the token
mixer ``x + proj(op(qkv(norm1 x)))`` and the FFN ``x + ffn(norm2 x)``), an MFAM edge, the
pyramid pooling's branches (one per pool size) and its fuse, the top-down merges (upsample +
add) and the head (fuse + classifier + resize to the input size). A unit is plain data;
`build()` makes the real network module (`models.units`: the network's own classes and step
functions, fresh weights) and `export.onnx_export.export_unit()` its ONNX graph.

Blocks and the pyramid pooling are timed as their parts because exporting is what block
timing costs on a small host (torch's exporter, about 10 ms a graph node), and parts are
shared: the FFN does not depend on the operator, a pool branch not on the other pool sizes.
The default space needs 28 mixers and 14 FFNs instead of 56 blocks, 12 branches and 2 fuses
instead of 30 pyramid poolings. The sums of the parts track the wholes (rank correlation
0.999 and 0.985, `benchmarks/unit_split.py`); each part pays the per-inference overhead once,
which the estimator's correction learns (a weight per group and per unit).

A unit's identity is its **signature**: canonical JSON of everything its latency depends on
(kind, operator config, channel counts, input shapes, batch) and nothing it does not
(weights, the stage or position it sits at, the name of the edge). `key` is a short hash of
it; backend, precision and device are part of the latency table's key instead. Two blocks
with the same shapes and config anywhere in any architecture share one measurement.

Spatial sizes follow the network exactly (`models.geometry`, which the network builds with):
the stride-4 patch embedding gives ``ceil(H/4)``, every later one ``ceil(H/2)`` (padding
k//2), and the head resizes to the input size.

Torch-free at import time (this package is imported by the torch-free agent tooling); torch
and the models are imported inside `Unit.build` and `Unit.example_inputs`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Iterable, Sequence

from autonad_edge.models.geometry import EMBED_KERNELS, EMBED_STRIDES, conv_out, feature_sizes, ffn_hidden, image_hw
from autonad_edge.space import EDGE_NAMES, Arch, BlockArch, SearchSpace

# Bump when a unit's module or its signature fields change meaning: old table rows then
# stop matching instead of being silently reused. (2: blocks and the PPM timed as their parts.)
UNIT_FORMAT = 2
# The same for a whole exported subnet's end-to-end measurement (independent of the units).
NETWORK_FORMAT = 1
UNIT_KINDS = ("embed", "mixer", "ffn", "edge", "pool_branch", "pool_fuse", "merge", "head")
# The estimator's correction groups: the operator for token mixers, the PPM's parts as one.
_FEATURE_OF_KIND = {"ffn": "ffn", "pool_branch": "ppm", "pool_fuse": "ppm"}
BATCH = 1

Shape = tuple[int, ...]


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
        """Group for the estimator's correction: the operator for token mixers, ``ppm`` for the
        pyramid pooling's parts, else the kind."""
        if self.kind == "mixer":
            return str(self.config["op"])
        return _FEATURE_OF_KIND.get(self.kind, self.kind)

    def describe(self) -> str:
        c = self.config
        shape = "x".join(str(d) for d in self.inputs[0][1:])
        if self.kind == "mixer":
            op = f"conv{c['kernel']}" if c["op"] == "conv" else c["op"]
            return f"mixer {op} c{c['channels']} @{shape}"
        if self.kind == "ffn":
            return f"ffn c{c['channels']} h{c['hidden']} @{shape}"
        if self.kind == "embed":
            return f"embed {c['in_ch']}->{c['out_ch']} k{c['kernel']}s{c['stride']} @{shape}"
        if self.kind == "edge":
            return f"edge {c['op']} {c['in_ch']}->{c['out_ch']} @{shape}"
        if self.kind == "pool_branch":
            return f"ppm branch {c['in_ch']}->{c['out_ch']} pool{c['pool_size']} @{shape}"
        if self.kind == "pool_fuse":
            return f"ppm fuse {c['in_ch']}+{c['branches']}x{c['branch_ch']}->{c['out_ch']} @{shape}"
        if self.kind == "merge":
            return f"merge c{c['channels']} {shape}->{'x'.join(map(str, self.inputs[1][2:]))}"
        detail = f" detail{c['detail_channels']}" if c.get("detail_channels") else ""
        return f"head c{c['channels']} cls{c['num_classes']}{detail} ->{c['out_h']}x{c['out_w']}"

    # ---- torch side ----------------------------------------------------------------------
    def build(self):
        """The real module (the network's own classes, `models.units`), eval mode, freshly
        initialised. Imported here: this module stays torch-free."""
        from autonad_edge.models.units import unit_module

        return unit_module(self.kind, self.config)

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


def mixer_unit(
    channels: int, op: str, kernel: int | None, hw: tuple[int, int], head_dim: int, sr_ratio: int, label: str = ""
) -> Unit:
    """A block's token-mixing step; its signature holds only what its operator uses."""
    params: dict[str, Any] = {"op": op, "channels": channels}
    if op == "conv":
        params.update(kernel=kernel or 3, head_dim=head_dim)
    elif op == "transformer":
        params.update(head_dim=head_dim, sr_ratio=sr_ratio)
    return Unit.make("mixer", [(BATCH, channels, *hw)], label, **params)


def ffn_unit(channels: int, ffn_ratio: float, hw: tuple[int, int], label: str = "") -> Unit:
    """A block's FFN step (the same for every operator)."""
    return Unit.make("ffn", [(BATCH, channels, *hw)], label, channels=channels, hidden=ffn_hidden(channels, ffn_ratio))


def block_units(
    channels: int, block: BlockArch, hw: tuple[int, int], head_dim: int, sr_ratio: int, label: str = ""
) -> tuple[Unit, Unit]:
    """A backbone block as its two timed steps: token mixer, FFN."""
    return (
        mixer_unit(channels, block.op, block.kernel, hw, head_dim, sr_ratio, f"{label}.mixer" if label else ""),
        ffn_unit(channels, block.ffn_ratio, hw, f"{label}.ffn" if label else ""),
    )


def edge_unit(op: str, in_ch: int, out_ch: int, hw: tuple[int, int], label: str = "") -> Unit:
    return Unit.make("edge", [(BATCH, in_ch, *hw)], label, op=op, in_ch=in_ch, out_ch=out_ch)


def pool_branch_unit(in_ch: int, branch_ch: int, pool_size: int, hw: tuple[int, int]) -> Unit:
    """One pyramid-pooling branch: pool to `pool_size`, project, resize back."""
    return Unit.make("pool_branch", [(BATCH, in_ch, *hw)], f"ppm.pool{pool_size}",
                     in_ch=in_ch, out_ch=branch_ch, pool_size=pool_size)


def pool_fuse_unit(in_ch: int, out_ch: int, branches: int, hw: tuple[int, int]) -> Unit:
    """The pyramid pooling's fuse of the input and its `branches` pooled maps."""
    branch_ch = out_ch // branches
    return Unit.make("pool_fuse", [(BATCH, in_ch, *hw)] + [(BATCH, branch_ch, *hw)] * branches, "ppm.fuse",
                     in_ch=in_ch, branch_ch=branch_ch, branches=branches, out_ch=out_ch)


def ppm_units(in_ch: int, out_ch: int, pool_sizes: Sequence[int], hw: tuple[int, int]) -> list[Unit]:
    """The pyramid pooling as its timed parts: a branch per pool size, then the fuse."""
    branch_ch = out_ch // len(pool_sizes)
    return [pool_branch_unit(in_ch, branch_ch, s, hw) for s in pool_sizes] + [
        pool_fuse_unit(in_ch, out_ch, len(pool_sizes), hw)
    ]


def merge_unit(channels: int, coarse_hw: tuple[int, int], fine_hw: tuple[int, int], label: str = "") -> Unit:
    """Top-down step ``lateral + resize(f, lateral size)`` of the MFAM."""
    return Unit.make("merge", [(BATCH, channels, *coarse_hw), (BATCH, channels, *fine_hw)], label, channels=channels)


def head_unit(channels: int, num_classes: int, sizes: Sequence[tuple[int, int]], out_hw: tuple[int, int],
              detail_channels: int = 0, in_chans: int = 3) -> Unit:
    """Fuse (concat of the four levels resized to stride 4, 1x1 conv, GN, ReLU), the detail path
    from the image (if any: the image is then a fifth input), classifier, resize to the input
    size. `sizes` are the four backbone levels' (H, W), finest first."""
    inputs = [(BATCH, channels, *sizes[i]) for i in (3, 2, 1, 0)]  # f4, out3, out2, out1
    # A head without a detail path keeps the signature it had before the path existed.
    detail = {"detail_channels": detail_channels, "in_chans": in_chans} if detail_channels else {}
    if detail_channels:
        inputs.append((BATCH, in_chans, *out_hw))
    return Unit.make(
        "head", inputs, "head", channels=channels, num_classes=num_classes, out_h=out_hw[0], out_w=out_hw[1],
        **detail,
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
            units.extend(
                block_units(stage.width, block, sizes[i], space.head_dim, stage_space.sr_ratio,
                            label=f"stage{i + 1}.block{j + 1}")
            )
        in_ch, in_hw = stage.width, sizes[i]
    c = space.decoder_channels
    ops = dict(zip(EDGE_NAMES, arch.edges))
    units.extend(ppm_units(arch.stages[3].width, c, arch.pool_sizes, sizes[3]))
    for i in (2, 1, 0):
        units.append(edge_unit(ops[f"lateral{i + 1}"], arch.stages[i].width, c, sizes[i], f"lateral{i + 1}"))
        units.append(merge_unit(c, sizes[i + 1], sizes[i], f"merge{i + 1}"))
        units.append(edge_unit(ops[f"output{i + 1}"], c, c, sizes[i], f"output{i + 1}"))
    units.append(head_unit(c, num_classes, sizes, out_hw, space.detail_channels, space.in_chans))
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
                for op, kernel in space.block_choices():
                    add(mixer_unit(w, op, kernel, sizes[i], space.head_dim, stage_space.sr_ratio, f"stage{i + 1}"))
                for ratio in stage_space.ffn_ratios:
                    add(ffn_unit(w, ratio, sizes[i], f"stage{i + 1}"))
        prev_widths, prev_hw = stage_space.widths, sizes[i]
    c = space.decoder_channels
    for w in space.stages[3].widths:
        for pools in combinations(sorted(space.pool_size_choices), space.num_pool_branches):
            for unit in ppm_units(w, c, pools, sizes[3]):
                add(unit)
    for i in (2, 1, 0):
        for op in space.edge_ops:
            for w in space.stages[i].widths:
                add(edge_unit(op, w, c, sizes[i], f"lateral{i + 1}"))
            add(edge_unit(op, c, c, sizes[i], f"output{i + 1}"))
        add(merge_unit(c, sizes[i + 1], sizes[i], f"merge{i + 1}"))
    add(head_unit(c, num_classes, sizes, out_hw, space.detail_channels, space.in_chans))
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
            "v": NETWORK_FORMAT, "kind": "network", "arch": arch.hash, "num_classes": num_classes,
            "head_dim": space.head_dim, "decoder_channels": space.decoder_channels,
            **({"detail_channels": space.detail_channels} if space.detail_channels else {}),
            "sr_ratios": [s.sr_ratio for s in space.stages], "in_chans": space.in_chans,
            "inputs": [[BATCH, space.in_chans, h, w]],
        },
        sort_keys=True, separators=(",", ":"),
    )


def count_by_kind(units: Iterable[Unit]) -> dict[str, int]:
    out: dict[str, int] = {}
    for u in units:
        out[u.kind] = out.get(u.kind, 0) + 1
    return out


__all__ = [
    "NETWORK_FORMAT",
    "UNIT_FORMAT",
    "UNIT_KINDS",
    "EMBED_KERNELS",
    "EMBED_STRIDES",
    "conv_out",
    "ffn_hidden",
    "Unit",
    "block_units",
    "count_by_kind",
    "dedup",
    "edge_unit",
    "embed_unit",
    "feature_sizes",
    "ffn_unit",
    "head_unit",
    "image_hw",
    "merge_unit",
    "mixer_unit",
    "network_signature",
    "pool_branch_unit",
    "pool_fuse_unit",
    "ppm_units",
    "space_units",
    "units_of",
]
