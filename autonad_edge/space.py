"""The AutoNAD search space (Table I) and its architecture encoding, in pure Python.

Nothing here imports torch: the latency agent, the search loop and the CLI all read and write
architectures, and an `Arch` is plain data that round-trips through JSON.

An architecture is::

    Arch(stages=(StageArch(width, blocks=(BlockArch(op, ffn_ratio, kernel), ...)), x4),
         edges=(op of each MFAM edge, in EDGE_NAMES order),
         pool_sizes=(the PPM's adaptive pool sizes, ascending))

Depth is ``len(stage.blocks)``. ``kernel`` is set for convolution blocks only, so two encodings
never describe the same network (the hash relies on that).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from autonad_edge.errors import AutonadError

OPERATORS = ("transformer", "conv", "mlp")
EDGE_OPS = ("conv1x1", "conv3x3", "conv5x5", "dilconv3x3", "dwconv3x3")
# MFAM edges: a lateral edge maps backbone level i to the decoder width, an output edge
# refines the top-down sum at level i (i = 1 is the finest, stride 4).
EDGE_NAMES = ("lateral1", "lateral2", "lateral3", "output1", "output2", "output3")
NUM_STAGES = 4
ARCH_FORMAT_VERSION = 1


class ArchError(AutonadError, ValueError):
    """An architecture or search space that is malformed or outside its space."""


def _frange(start: float, stop: float, step: float) -> tuple[float, ...]:
    n = int(round((stop - start) / step))
    return tuple(round(start + i * step, 6) for i in range(n + 1))


@dataclass(frozen=True)
class StageSpace:
    """Choices of one backbone stage."""

    depths: tuple[int, ...]
    widths: tuple[int, ...]
    ffn_ratios: tuple[float, ...]
    # Spatial-reduction ratio of the transformer's keys/values (PVT), fixed per stage.
    sr_ratio: int = 1

    def __post_init__(self) -> None:
        # Ratios as floats: the archs sampled from a space built with ints must hash as they
        # do after a JSON round trip (2 and 2.0 are equal but serialise apart).
        object.__setattr__(self, "ffn_ratios", tuple(float(r) for r in self.ffn_ratios))

    @property
    def max_depth(self) -> int:
        return max(self.depths)

    @property
    def max_width(self) -> int:
        return max(self.widths)

    @property
    def max_ffn_ratio(self) -> float:
        return max(self.ffn_ratios)


@dataclass(frozen=True)
class BlockArch:
    op: str
    ffn_ratio: float
    kernel: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ffn_ratio", float(self.ffn_ratio))  # one hash for 2 and 2.0


@dataclass(frozen=True)
class StageArch:
    width: int
    blocks: tuple[BlockArch, ...]

    @property
    def depth(self) -> int:
        return len(self.blocks)


@dataclass(frozen=True)
class Arch:
    stages: tuple[StageArch, ...]
    edges: tuple[str, ...]
    pool_sizes: tuple[int, ...]

    # ---- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": ARCH_FORMAT_VERSION,
            "stages": [
                {
                    "width": s.width,
                    "blocks": [
                        {"op": b.op, "ffn_ratio": b.ffn_ratio, "kernel": b.kernel} for b in s.blocks
                    ],
                }
                for s in self.stages
            ],
            "mfam": {
                "edges": dict(zip(EDGE_NAMES, self.edges)),
                "pool_sizes": list(self.pool_sizes),
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Arch":
        try:
            version = data.get("version", ARCH_FORMAT_VERSION)
            if version != ARCH_FORMAT_VERSION:
                raise ArchError(f"version: unsupported architecture format {version!r}")
            stages = tuple(
                StageArch(
                    width=int(s["width"]),
                    blocks=tuple(
                        BlockArch(
                            op=str(b["op"]),
                            ffn_ratio=float(b["ffn_ratio"]),
                            kernel=None if b.get("kernel") is None else int(b["kernel"]),
                        )
                        for b in s["blocks"]
                    ),
                )
                for s in data["stages"]
            )
            mfam = data["mfam"]
            edges_in = mfam["edges"]
            missing = [n for n in EDGE_NAMES if n not in edges_in]
            if missing:
                raise ArchError(f"mfam.edges: missing {', '.join(missing)}")
            unknown = sorted(set(edges_in) - set(EDGE_NAMES))
            if unknown:
                raise ArchError(f"mfam.edges: unknown edge {', '.join(unknown)}")
            edges = tuple(str(edges_in[n]) for n in EDGE_NAMES)
            pool_sizes = tuple(int(p) for p in mfam["pool_sizes"])
        except KeyError as exc:
            raise ArchError(f"architecture is missing the field {exc.args[0]!r}") from None
        except (TypeError, AttributeError) as exc:
            raise ArchError(f"architecture is malformed: {exc}") from None
        return cls(stages=stages, edges=edges, pool_sizes=pool_sizes)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> "Arch":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ArchError(f"architecture is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ArchError("architecture JSON must be an object")
        return cls.from_dict(data)

    def canonical_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def hash(self) -> str:
        """Stable 16-hex-digit identity: equal for equal architectures across runs and machines."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    # ---- convenience ---------------------------------------------------------------------
    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(s.width for s in self.stages)

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(s.depth for s in self.stages)

    def summary(self) -> str:
        """One line, e.g. ``64:TCM|128:C3C5|...|e=11d5w3|pp=1236``."""
        code = {"transformer": "T", "mlp": "M"}
        parts = []
        for s in self.stages:
            ops = "".join(
                f"C{b.kernel}" if b.op == "conv" else code[b.op] for b in s.blocks
            )
            parts.append(f"{s.width}:{ops}")
        edge_code = {
            "conv1x1": "1",
            "conv3x3": "3",
            "conv5x5": "5",
            "dilconv3x3": "d",
            "dwconv3x3": "w",
        }
        edges = "".join(edge_code.get(e, "?") for e in self.edges)
        pools = "".join(str(p) for p in self.pool_sizes)
        return "|".join(parts) + f"|e={edges}|pp={pools}"


@dataclass(frozen=True)
class ChoicePrior:
    """Sampling probabilities over operator choices (the latency-aware prior of Sec. IV-D).

    ``ops[stage][block]`` maps an operator to its probability at that block position;
    ``edges[name]`` maps an MFAM edge operator to its probability. Missing entries mean
    uniform. Built from latency measurements by `autonad_edge.latency.prior`.
    """

    ops: tuple[tuple[Mapping[str, float], ...], ...] = ()
    edges: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def op_probs(self, stage: int, block: int) -> Mapping[str, float] | None:
        if stage < len(self.ops) and block < len(self.ops[stage]):
            return self.ops[stage][block]
        return None

    def edge_probs(self, name: str) -> Mapping[str, float] | None:
        return self.edges.get(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ops": [[dict(p) for p in stage] for stage in self.ops],
            "edges": {k: dict(v) for k, v in self.edges.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ChoicePrior":
        return cls(
            ops=tuple(tuple(dict(p) for p in stage) for stage in data.get("ops", [])),
            edges={k: dict(v) for k, v in data.get("edges", {}).items()},
        )


def _weighted_choice(rng: random.Random, options: Sequence[Any], probs: Mapping[Any, float] | None):
    if not probs:
        return rng.choice(list(options))
    weights = [max(float(probs.get(o, 0.0)), 0.0) for o in options]
    if sum(weights) <= 0:
        return rng.choice(list(options))
    return rng.choices(list(options), weights=weights, k=1)[0]


@dataclass(frozen=True)
class SearchSpace:
    """The configurable search space. `default()` is the paper's Table I (with the head's detail
    path; `named("paper")` is Table I exactly)."""

    stages: tuple[StageSpace, ...]
    operators: tuple[str, ...] = OPERATORS
    kernels: tuple[int, ...] = (3, 5)
    edge_ops: tuple[str, ...] = EDGE_OPS
    pool_size_choices: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
    num_pool_branches: int = 4
    # Width of every MFAM level. Fixed, as in the reference implementation.
    decoder_channels: int = 128
    # Channels per attention head: every width must be a multiple of it.
    head_dim: int = 32
    in_chans: int = 3
    # Channels of the head's stride-2 detail path from the image (`models.mfam.DetailBranch`),
    # shared by every subnet; 0 = none, the paper's head (which decides at stride 4, where a
    # 1-2 px crack covers a quarter of a cell or less). Not in Table I: the `paper` space has 0.
    detail_channels: int = 0

    def __post_init__(self) -> None:
        self._check()

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def default(cls, detail_channels: int = 16) -> "SearchSpace":
        """Table I; with the detail path of the head unless `detail_channels` is 0."""
        return cls(
            detail_channels=detail_channels,
            stages=(
                StageSpace((1, 2, 3, 4), (32, 64), _frange(7.5, 9.0, 0.5), sr_ratio=8),
                StageSpace((1, 2, 3, 4), (32, 64, 96, 128), _frange(7.5, 9.0, 0.5), sr_ratio=4),
                StageSpace((1, 2, 3, 4), (128, 160, 192, 224), _frange(3.5, 5.0, 0.5), sr_ratio=2),
                StageSpace((1, 2, 3, 4), (192, 224, 256, 288), _frange(3.5, 5.0, 0.5), sr_ratio=1),
            )
        )

    @classmethod
    def tiny(cls) -> "SearchSpace":
        """A small space for CPU runs and tests: same structure, a fraction of the cost."""
        return cls(
            stages=(
                StageSpace((1, 2), (16,), (2.0, 4.0), sr_ratio=8),
                StageSpace((1, 2), (16, 32), (2.0, 4.0), sr_ratio=4),
                StageSpace((1, 2), (32, 48), (2.0, 3.0), sr_ratio=2),
                StageSpace((1, 2), (48, 64), (2.0, 3.0), sr_ratio=1),
            ),
            decoder_channels=32,
            head_dim=16,
            detail_channels=16,
        )

    @classmethod
    def small(cls) -> "SearchSpace":
        """Between `tiny` and `default` (widths 32-128, like a 1-2 M-parameter U-Net's encoder at
        stride 4-32), for `--space small`. Not a preset's: in a 60-minute Magnetic-tile run its
        latency-chosen subnet learned less than the tiny space's (benchmarks/RESULTS.md, session
        11). A step costs 0.16-0.36 s at 8x128x128 on 2 threads (tiny: 0.10-0.20 s)."""
        return cls(
            stages=(
                StageSpace((1, 2), (32,), (2.0, 4.0), sr_ratio=8),
                StageSpace((1, 2), (32, 64), (2.0, 4.0), sr_ratio=4),
                StageSpace((1, 2), (64, 96), (2.0, 3.0), sr_ratio=2),
                StageSpace((1, 2), (96, 128), (2.0, 3.0), sr_ratio=1),
            ),
            decoder_channels=64,
            head_dim=32,
            detail_channels=16,
        )

    @classmethod
    def resolve(cls, spec: str) -> "SearchSpace":
        """A named space (``default``, ``paper``, ``small``, ``tiny``) or a path to a space JSON file: the
        one rule the commands, the pipeline and the benchmarks read ``--space`` by."""
        if spec.endswith(".json") or Path(spec).is_file():
            try:
                text = Path(spec).read_text(encoding="utf-8")
            except OSError as exc:
                raise ArchError(f"cannot read search space {spec}: {exc.strerror}") from None
            return cls.from_json(text)
        return cls.named(spec)

    @classmethod
    def named(cls, name: str) -> "SearchSpace":
        presets = {"default": cls.default, "paper": lambda: cls.default(detail_channels=0), "small": cls.small, "tiny": cls.tiny}
        if name not in presets:
            raise ArchError(f"unknown search space {name!r}; choose one of {', '.join(presets)}")
        return presets[name]()

    def _check(self) -> None:
        if len(self.stages) != NUM_STAGES:
            raise ArchError(f"stages: the space needs {NUM_STAGES} stages, got {len(self.stages)}")
        for i, s in enumerate(self.stages):
            where = f"stages[{i}]"
            if not s.depths or min(s.depths) < 1:
                raise ArchError(f"{where}.depths: need at least one choice, all >= 1")
            if not s.widths or not s.ffn_ratios:
                raise ArchError(f"{where}: widths and ffn_ratios need at least one choice")
            for w in s.widths:
                if w <= 0 or w % self.head_dim:
                    raise ArchError(
                        f"{where}.widths: {w} is not a positive multiple of head_dim {self.head_dim}"
                    )
            if min(s.ffn_ratios) <= 0:
                raise ArchError(f"{where}.ffn_ratios: ratios must be positive")
            if s.sr_ratio < 1:
                raise ArchError(f"{where}.sr_ratio: must be >= 1")
        unknown_ops = set(self.operators) - set(OPERATORS)
        if not self.operators or unknown_ops:
            raise ArchError(f"operators: choose from {', '.join(OPERATORS)}")
        if not self.kernels or any(k not in (3, 5) for k in self.kernels):
            raise ArchError("kernels: choose from 3, 5")
        if not self.edge_ops or set(self.edge_ops) - set(EDGE_OPS):
            raise ArchError(f"edge_ops: choose from {', '.join(EDGE_OPS)}")
        if self.num_pool_branches < 1 or self.num_pool_branches > len(self.pool_size_choices):
            raise ArchError("num_pool_branches: must be between 1 and the number of pool sizes")
        if min(self.pool_size_choices) < 1:
            raise ArchError("pool_size_choices: sizes must be >= 1")
        if len(set(self.pool_size_choices)) != len(self.pool_size_choices):
            # An arch's pool sizes are distinct: a repeated choice would be sampled into archs
            # the space's own validate() refuses.
            raise ArchError(f"pool_size_choices: sizes must be distinct, got {list(self.pool_size_choices)}")
        if self.decoder_channels < 4 or self.decoder_channels % 4:
            raise ArchError("decoder_channels: must be a positive multiple of 4")
        if self.detail_channels < 0 or self.detail_channels % 4:
            raise ArchError("detail_channels: must be 0 (no detail path) or a positive multiple of 4")

    # ---- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "stages": [
                {
                    "depths": list(s.depths),
                    "widths": list(s.widths),
                    "ffn_ratios": list(s.ffn_ratios),
                    "sr_ratio": s.sr_ratio,
                }
                for s in self.stages
            ],
            "operators": list(self.operators),
            "kernels": list(self.kernels),
            "edge_ops": list(self.edge_ops),
            "pool_size_choices": list(self.pool_size_choices),
            "num_pool_branches": self.num_pool_branches,
            "decoder_channels": self.decoder_channels,
            "head_dim": self.head_dim,
            "in_chans": self.in_chans,
            "detail_channels": self.detail_channels,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SearchSpace":
        try:
            stages = tuple(
                StageSpace(
                    depths=tuple(int(d) for d in s["depths"]),
                    widths=tuple(int(w) for w in s["widths"]),
                    ffn_ratios=tuple(float(r) for r in s["ffn_ratios"]),
                    sr_ratio=int(s.get("sr_ratio", 1)),
                )
                for s in data["stages"]
            )
            extra = {
                k: tuple(data[k]) if isinstance(data[k], list) else data[k]
                for k in (
                    "operators",
                    "kernels",
                    "edge_ops",
                    "pool_size_choices",
                    "num_pool_branches",
                    "decoder_channels",
                    "head_dim",
                    "in_chans",
                    "detail_channels",  # absent in spaces saved before it existed: 0
                )
                if k in data
            }
        except KeyError as exc:
            raise ArchError(f"search space is missing the field {exc.args[0]!r}") from None
        return cls(stages=stages, **extra)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> "SearchSpace":
        return cls.from_dict(json.loads(text))

    # ---- queries -------------------------------------------------------------------------
    @property
    def max_widths(self) -> tuple[int, ...]:
        return tuple(s.max_width for s in self.stages)

    def block_choices(self) -> list[tuple[str, int | None]]:
        """Every (operator, kernel) a block can take."""
        out: list[tuple[str, int | None]] = []
        for op in self.operators:
            if op == "conv":
                out.extend(("conv", k) for k in self.kernels)
            else:
                out.append((op, None))
        return out

    def validate(self, arch: Arch) -> Arch:
        """Raise `ArchError` naming the first field outside this space; return the arch."""
        if len(arch.stages) != NUM_STAGES:
            raise ArchError(f"stages: expected {NUM_STAGES} stages, got {len(arch.stages)}")
        for i, (stage, space) in enumerate(zip(arch.stages, self.stages)):
            where = f"stages[{i}]"
            if stage.width not in space.widths:
                raise ArchError(f"{where}.width: {stage.width} not in {list(space.widths)}")
            if stage.depth not in space.depths:
                raise ArchError(f"{where}.depth: {stage.depth} not in {list(space.depths)}")
            for j, block in enumerate(stage.blocks):
                bw = f"{where}.blocks[{j}]"
                if block.op not in self.operators:
                    raise ArchError(f"{bw}.op: {block.op!r} not in {list(self.operators)}")
                if block.ffn_ratio not in space.ffn_ratios:
                    raise ArchError(
                        f"{bw}.ffn_ratio: {block.ffn_ratio} not in {list(space.ffn_ratios)}"
                    )
                if block.op == "conv":
                    if block.kernel not in self.kernels:
                        raise ArchError(f"{bw}.kernel: {block.kernel} not in {list(self.kernels)}")
                elif block.kernel is not None:
                    raise ArchError(f"{bw}.kernel: only conv blocks take a kernel (got {block.kernel})")
        if len(arch.edges) != len(EDGE_NAMES):
            raise ArchError(f"mfam.edges: expected {len(EDGE_NAMES)} edges, got {len(arch.edges)}")
        for name, op in zip(EDGE_NAMES, arch.edges):
            if op not in self.edge_ops:
                raise ArchError(f"mfam.edges.{name}: {op!r} not in {list(self.edge_ops)}")
        ps = arch.pool_sizes
        if len(ps) != self.num_pool_branches:
            raise ArchError(
                f"mfam.pool_sizes: expected {self.num_pool_branches} sizes, got {len(ps)}"
            )
        if any(p not in self.pool_size_choices for p in ps):
            raise ArchError(f"mfam.pool_sizes: {list(ps)} not all in {list(self.pool_size_choices)}")
        if list(ps) != sorted(set(ps)):
            raise ArchError(f"mfam.pool_sizes: {list(ps)} must be distinct and ascending")
        return arch

    def contains(self, arch: Arch) -> bool:
        try:
            self.validate(arch)
        except ArchError:
            return False
        return True

    # ---- extremes ------------------------------------------------------------------------
    def largest(self, op: str = "transformer", edge: str = "conv5x5") -> Arch:
        """Every dimension at its maximum (the supernet's own shape), one operator everywhere."""
        return self._uniform(max, op, edge)

    def smallest(self, op: str = "mlp", edge: str = "conv1x1") -> Arch:
        return self._uniform(min, op, edge)

    def smallest_subnets(self) -> list[Arch]:
        """The smallest subnet of each operator and edge op: among them are the space's fewest
        parameters and (on most devices) its fastest subnet, which budgets are checked against."""
        return [self.smallest(op=op, edge=edge) for op in self.operators for edge in self.edge_ops]

    def _uniform(self, pick, op: str, edge: str) -> Arch:
        # A space without the requested choice falls back to its own extreme one.
        if op not in self.operators:
            op = self.operators[0]
        if edge not in self.edge_ops:
            edge = self.edge_ops[-1] if pick is max else self.edge_ops[0]
        kernel = pick(self.kernels) if op == "conv" else None
        stages = tuple(
            StageArch(
                width=pick(s.widths),
                blocks=tuple(
                    BlockArch(op, pick(s.ffn_ratios), kernel) for _ in range(pick(s.depths))
                ),
            )
            for s in self.stages
        )
        n = self.num_pool_branches
        pools = sorted(self.pool_size_choices)
        pool_sizes = tuple(pools[-n:] if pick is max else pools[:n])
        return self.validate(Arch(stages, (edge,) * len(EDGE_NAMES), pool_sizes))

    # ---- sampling, mutation, crossover ---------------------------------------------------
    def _sample_block(
        self, rng: random.Random, stage: int, index: int, prior: ChoicePrior | None
    ) -> BlockArch:
        probs = prior.op_probs(stage, index) if prior else None
        op = _weighted_choice(rng, self.operators, probs)
        kernel = rng.choice(self.kernels) if op == "conv" else None
        return BlockArch(op, rng.choice(self.stages[stage].ffn_ratios), kernel)

    def _sample_edge(self, rng: random.Random, name: str, prior: ChoicePrior | None) -> str:
        return _weighted_choice(rng, self.edge_ops, prior.edge_probs(name) if prior else None)

    def _sample_pools(self, rng: random.Random) -> tuple[int, ...]:
        return tuple(sorted(rng.sample(list(self.pool_size_choices), self.num_pool_branches)))

    def sample(self, rng: random.Random, prior: ChoicePrior | None = None) -> Arch:
        """Uniform over every choice, or biased by `prior` for operators and edges."""
        stages = []
        for i, s in enumerate(self.stages):
            depth = rng.choice(s.depths)
            width = rng.choice(s.widths)
            stages.append(
                StageArch(width, tuple(self._sample_block(rng, i, j, prior) for j in range(depth)))
            )
        edges = tuple(self._sample_edge(rng, n, prior) for n in EDGE_NAMES)
        return Arch(tuple(stages), edges, self._sample_pools(rng))

    def mutate(
        self, arch: Arch, rng: random.Random, prob: float, prior: ChoicePrior | None = None
    ) -> Arch:
        """Resample each gene (depth, width, block op/ratio/kernel, edge, pool sizes) with `prob`."""
        stages = []
        for i, (stage, s) in enumerate(zip(arch.stages, self.stages)):
            width = rng.choice(s.widths) if rng.random() < prob else stage.width
            depth = rng.choice(s.depths) if rng.random() < prob else stage.depth
            blocks = []
            for j in range(depth):
                if j >= stage.depth:
                    blocks.append(self._sample_block(rng, i, j, prior))
                    continue
                b = stage.blocks[j]
                op, kernel, ratio = b.op, b.kernel, b.ffn_ratio
                if rng.random() < prob:
                    probs = prior.op_probs(i, j) if prior else None
                    op = _weighted_choice(rng, self.operators, probs)
                    kernel = (kernel or rng.choice(self.kernels)) if op == "conv" else None
                if op == "conv" and rng.random() < prob:
                    kernel = rng.choice(self.kernels)
                if rng.random() < prob:
                    ratio = rng.choice(s.ffn_ratios)
                blocks.append(BlockArch(op, ratio, kernel))
            stages.append(StageArch(width, tuple(blocks)))
        edges = tuple(
            self._sample_edge(rng, n, prior) if rng.random() < prob else e
            for n, e in zip(EDGE_NAMES, arch.edges)
        )
        pools = arch.pool_sizes
        if rng.random() < prob:
            # Swap one size for one not yet used, keeping the sizes distinct.
            unused = [p for p in self.pool_size_choices if p not in pools]
            if unused:
                idx = rng.randrange(len(pools))
                pools = tuple(sorted(pools[:idx] + (rng.choice(unused),) + pools[idx + 1 :]))
        return Arch(tuple(stages), edges, pools)

    def crossover(self, a: Arch, b: Arch, rng: random.Random) -> Arch:
        """Each gene from one parent at random; blocks position by position."""
        stages = []
        for sa, sb in zip(a.stages, b.stages):
            width = rng.choice((sa.width, sb.width))
            depth = rng.choice((sa.depth, sb.depth))
            blocks = []
            for j in range(depth):
                options = [s.blocks[j] for s in (sa, sb) if j < s.depth]
                blocks.append(rng.choice(options))
            stages.append(StageArch(width, tuple(blocks)))
        edges = tuple(rng.choice(pair) for pair in zip(a.edges, b.edges))
        pools = rng.choice((a.pool_sizes, b.pool_sizes))
        return Arch(tuple(stages), edges, pools)


def load_arch(path: str, space: SearchSpace | None = None) -> Arch:
    """Read an architecture JSON file, validating it against `space` when given."""
    try:
        with open(path, encoding="utf-8") as fh:
            arch = Arch.from_json(fh.read())
    except OSError as exc:
        raise ArchError(f"cannot read architecture file {path}: {exc.strerror}") from None
    return space.validate(arch) if space is not None else arch


def iter_blocks(arch: Arch) -> Iterable[tuple[int, int, BlockArch]]:
    for i, stage in enumerate(arch.stages):
        for j, block in enumerate(stage.blocks):
            yield i, j, block


__all__ = [
    "Arch",
    "ArchError",
    "BlockArch",
    "ChoicePrior",
    "EDGE_NAMES",
    "EDGE_OPS",
    "OPERATORS",
    "SearchSpace",
    "StageArch",
    "StageSpace",
    "iter_blocks",
    "load_arch",
]
