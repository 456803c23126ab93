"""The latency-aware prior (AutoNAD Sec. IV-D): operator probabilities that favour what is
fast on the target, for the evolutionary search to sample with.

Two ways to build it:

- ``softmax`` (default): the latency of an operator at a position is the mean table latency
  of its blocks (token mixer + FFN) over the widths, FFN ratios and (for conv) kernels the
  space allows there; within each
  position, ``p ∝ exp(-(l / mean(l)) / temperature)`` (latency relative to the position's mean,
  so the temperature is unitless), then mixed with the uniform distribution
  (``(1 - mix) p + mix / n``) so every operator stays possible.
- ``fastest`` (the paper's variant): sample N subnets uniformly, estimate their latencies,
  and count each position's operators among the fastest k%; smoothed the same way.

The result is a `ChoicePrior` (``ops[stage][block]``, ``edges[name]``) saved as JSON with
metadata (target, fingerprint, method, the latencies behind it), and a heatmap like Fig. 5.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from autonad_edge.latency.blocks import block_units, edge_unit, feature_sizes
from autonad_edge.space import EDGE_NAMES, BlockArch, ChoicePrior

if TYPE_CHECKING:
    from autonad_edge.latency.estimator import LatencyEstimator
    from autonad_edge.space import SearchSpace

PRIOR_FORMAT = 1
DEFAULT_TEMPERATURE = 0.5
DEFAULT_MIX = 0.1


@dataclass(frozen=True)
class OperatorLatencies:
    """Mean latency (ms) of each operator per stage, and of each edge operator per edge."""

    ops: tuple[dict[str, float], ...]  # stage -> op -> ms
    edges: dict[str, dict[str, float]]  # edge name -> edge op -> ms

    def to_dict(self) -> dict[str, Any]:
        return {"ops": [dict(s) for s in self.ops], "edges": {k: dict(v) for k, v in self.edges.items()}}


def operator_latencies(estimator: "LatencyEstimator") -> OperatorLatencies:
    """Mean table latency of every operator choice at every stage and edge (units missing from
    the table are measured when the estimator has a pool)."""
    space = estimator.space
    sizes = feature_sizes(estimator.image_size)
    # Each choice's candidates as the units each one is timed as (a block: mixer + FFN).
    per_stage: list[dict[str, list[tuple]]] = []
    for i, s in enumerate(space.stages):
        groups: dict[str, list[tuple]] = {}
        for op, kernel in space.block_choices():
            groups.setdefault(op, []).extend(
                block_units(w, BlockArch(op, r, kernel), sizes[i], space.head_dim, s.sr_ratio)
                for w in s.widths for r in s.ffn_ratios
            )
        per_stage.append(groups)
    c = space.decoder_channels
    per_edge: dict[str, dict[str, list[tuple]]] = {}
    for i in range(3):
        per_edge[f"lateral{i + 1}"] = {
            op: [(edge_unit(op, w, c, sizes[i]),) for w in space.stages[i].widths] for op in space.edge_ops
        }
        per_edge[f"output{i + 1}"] = {op: [(edge_unit(op, c, c, sizes[i]),)] for op in space.edge_ops}
    every = [u for g in (*per_stage, *per_edge.values()) for cands in g.values() for parts in cands for u in parts]
    lat = estimator.unit_latencies(every)

    def mean(candidates: list[tuple]) -> float:
        return sum(lat[u.signature] for parts in candidates for u in parts) / len(candidates)

    return OperatorLatencies(
        ops=tuple({op: mean(us) for op, us in g.items()} for g in per_stage),
        edges={name: {op: mean(us) for op, us in g.items()} for name, g in per_edge.items()},
    )


def smooth(probs: Mapping[str, float], mix: float) -> dict[str, float]:
    """Mix with the uniform distribution and renormalise."""
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must be in [0, 1], got {mix}")
    total = sum(probs.values())
    n = len(probs)
    return {k: (1 - mix) * (v / total if total > 0 else 1 / n) + mix / n for k, v in probs.items()}


def softmax_probs(latencies: Mapping[str, float], temperature: float, mix: float) -> dict[str, float]:
    """``p ∝ exp(-(l / mean l) / temperature)``, smoothed towards uniform by `mix`."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    mean = sum(latencies.values()) / len(latencies)
    logits = {k: -(v / mean) / temperature for k, v in latencies.items()}
    top = max(logits.values())
    weights = {k: math.exp(v - top) for k, v in logits.items()}
    return smooth(weights, mix)


def softmax_prior(
    latencies: OperatorLatencies, space: "SearchSpace", temperature: float = DEFAULT_TEMPERATURE,
    mix: float = DEFAULT_MIX,
) -> ChoicePrior:
    """One distribution per (stage, block position) and per MFAM edge; positions of a stage
    share their shapes, so they share their probabilities."""
    ops = tuple(
        tuple(softmax_probs(latencies.ops[i], temperature, mix) for _ in range(s.max_depth))
        for i, s in enumerate(space.stages)
    )
    edges = {name: softmax_probs(latencies.edges[name], temperature, mix) for name in EDGE_NAMES}
    return ChoicePrior(ops=ops, edges=edges)


def fastest_prior(
    estimator: "LatencyEstimator", samples: int = 1000, top: float = 0.1, mix: float = DEFAULT_MIX,
    seed: int = 0,
) -> tuple[ChoicePrior, dict[str, Any]]:
    """Operator frequencies among the fastest `top` share of `samples` uniformly sampled
    subnets (by estimated latency), smoothed towards uniform. Also returns sampling stats."""
    if not 0 < top <= 1:
        raise ValueError(f"top must be in (0, 1], got {top}")
    space = estimator.space
    rng = random.Random(seed)
    archs = [space.sample(rng) for _ in range(samples)]
    est = estimator.estimate_many(archs)
    order = sorted(range(len(archs)), key=est.__getitem__)
    keep = [archs[i] for i in order[: max(1, int(round(top * len(archs))))]]
    counts = [[{op: 0 for op in space.operators} for _ in range(s.max_depth)] for s in space.stages]
    edge_counts = {name: {op: 0 for op in space.edge_ops} for name in EDGE_NAMES}
    for arch in keep:
        for i, stage in enumerate(arch.stages):
            for j, b in enumerate(stage.blocks):
                counts[i][j][b.op] += 1
        for name, op in zip(EDGE_NAMES, arch.edges):
            edge_counts[name][op] += 1
    prior = ChoicePrior(
        ops=tuple(tuple(smooth(c, mix) for c in stage) for stage in counts),
        edges={name: smooth(c, mix) for name, c in edge_counts.items()},
    )
    cutoff = est[order[len(keep) - 1]]
    stats = {
        "samples": samples, "top": top, "kept": len(keep), "cutoff_ms": cutoff,
        "min_ms": est[order[0]], "median_ms": est[order[len(order) // 2]], "max_ms": est[order[-1]],
        "counts": {"ops": counts, "edges": edge_counts},
    }
    return prior, stats


def build_prior(
    estimator: "LatencyEstimator", *, method: str = "softmax", temperature: float = DEFAULT_TEMPERATURE,
    mix: float = DEFAULT_MIX, samples: int = 1000, top: float = 0.1, seed: int = 0, target: str = "",
) -> tuple[ChoicePrior, dict[str, Any]]:
    """The prior and its metadata (what `save_prior` writes next to it)."""
    key = estimator.key
    meta: dict[str, Any] = {
        "format": PRIOR_FORMAT, "method": method, "mix": mix, "target": target,
        "fingerprint": key.fingerprint.hash, "fingerprint_summary": key.fingerprint.summary(),
        "fingerprint_fields": dict(key.fingerprint.fields), "backend": key.backend, "precision": key.precision,
        "image_size": list(estimator.image_size), "num_classes": estimator.num_classes,
        "space": json.loads(estimator.space.to_json()), "created_at": time.time(),
    }
    latencies = operator_latencies(estimator)
    meta["latency_ms"] = latencies.to_dict()
    if method == "softmax":
        prior = softmax_prior(latencies, estimator.space, temperature, mix)
        meta["temperature"] = temperature
    elif method == "fastest":
        prior, stats = fastest_prior(estimator, samples, top, mix, seed)
        meta.update(fastest=stats, corrected=estimator.correction is not None)
    else:
        raise ValueError(f"method must be 'softmax' or 'fastest', got {method!r}")
    return prior, meta


def prior_document(prior: ChoicePrior, meta: Mapping[str, Any]) -> dict[str, Any]:
    """`ChoicePrior.to_dict()` plus a ``meta`` object (ignored by `ChoicePrior.from_dict`)."""
    return {**prior.to_dict(), "meta": dict(meta)}


def save_prior(path: str | Path, prior: ChoicePrior, meta: Mapping[str, Any]) -> None:
    from autonad_edge.io import atomic_write_json

    atomic_write_json(path, prior_document(prior, meta))


def load_prior(path: str | Path) -> tuple[ChoicePrior, dict[str, Any]]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return ChoicePrior.from_dict(data), dict(data.get("meta", {}))


def plot_prior(
    prior: ChoicePrior, space: "SearchSpace", path: str | Path, *, title: str = "Latency-aware prior",
    subtitle: str = "", dpi: int = 150,
) -> None:
    """Heatmap of the prior (like Fig. 5): backbone positions x operators on the left, MFAM
    edges x edge operators on the right, every cell annotated with its probability."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    from autonad_edge.io import atomic_write_bytes

    op_cols = list(space.operators)
    op_rows, op_vals = [], []
    for i, stage in enumerate(space.stages):
        for j in range(stage.max_depth):
            probs = prior.op_probs(i, j) or {op: 1 / len(op_cols) for op in op_cols}
            op_rows.append(f"stage {i + 1} · block {j + 1}")
            op_vals.append([float(probs.get(op, 0.0)) for op in op_cols])
    edge_cols = list(space.edge_ops)
    edge_rows, edge_vals = [], []
    for name in EDGE_NAMES:
        probs = prior.edge_probs(name) or {op: 1 / len(edge_cols) for op in edge_cols}
        edge_rows.append(name)
        edge_vals.append([float(probs.get(op, 0.0)) for op in edge_cols])

    height = max(4.0, 0.42 * len(op_rows) + 1.8)
    fig, axes = plt.subplots(
        1, 2, figsize=(4.2 + 1.4 * len(edge_cols), height),
        gridspec_kw={"width_ratios": [len(op_cols) + 1.5, len(edge_cols)]},
    )
    for ax, rows, cols, vals, label in (
        (axes[0], op_rows, op_cols, op_vals, "backbone operator"),
        (axes[1], edge_rows, edge_cols, edge_vals, "MFAM edge operator"),
    ):
        data = np.array(vals)
        im = ax.imshow(data, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
        ax.set_yticks(range(len(rows)), rows)
        ax.set_xlabel(label)
        for r in range(data.shape[0]):
            for c in range(data.shape[1]):
                v = data[r, c]
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="black" if v > 0.6 else "white")
        ax.set_xticks(np.arange(-0.5, len(cols), 1), minor=True)
        ax.set_yticks(np.arange(-0.5, len(rows), 1), minor=True)
        ax.grid(which="minor", color="white", linewidth=0.6)
        ax.tick_params(which="minor", length=0)
    fig.colorbar(im, ax=axes, fraction=0.025, pad=0.02, label="probability")
    fig.suptitle(title + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_title(meta: Mapping[str, Any]) -> tuple[str, str]:
    """Title and subtitle for `plot_prior` from a prior's metadata."""
    method = meta.get("method", "?")
    how = (f"softmax, T={meta.get('temperature')}" if method == "softmax"
           else f"fastest {100 * meta.get('fastest', {}).get('top', 0):g}% of {meta.get('fastest', {}).get('samples', '?')}")
    h, w = meta.get("image_size", ["?", "?"])
    title = f"Latency-aware prior — target {meta.get('target') or '?'} ({meta.get('backend')} {meta.get('precision')})"
    subtitle = f"{meta.get('fingerprint_summary', '')}  ·  {h}x{w}  ·  {how}, mix={meta.get('mix')}"
    return title, subtitle


__all__ = [
    "DEFAULT_MIX",
    "DEFAULT_TEMPERATURE",
    "OperatorLatencies",
    "build_prior",
    "fastest_prior",
    "load_prior",
    "operator_latencies",
    "plot_prior",
    "plot_title",
    "prior_document",
    "save_prior",
    "smooth",
    "softmax_prior",
    "softmax_probs",
]
