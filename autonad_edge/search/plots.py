"""The search's Pareto plot: mIoU against latency, the front joined, the chosen model marked."""

from __future__ import annotations

import io
from pathlib import Path

from autonad_edge.search.evolution import Candidate, pareto_front


def plot_pareto(
    candidates: list[Candidate],
    chosen: Candidate | None,
    path: str | Path,
    title: str = "Search: mIoU vs latency",
    baselines: dict[str, tuple[float, float]] | None = None,
    chosen_by: str = "",
) -> Path:
    """Write a PNG. `baselines` maps a name to (latency ms, mIoU) of hand-designed models;
    `chosen_by` says in the legend what chose `chosen` when the search did not (the race)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from autonad_edge.io import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    gens = [c.generation for c in candidates]
    sc = ax.scatter(
        [c.latency_ms for c in candidates], [100 * c.miou for c in candidates],
        c=gens, cmap="viridis", s=22, alpha=0.75, label="evaluated (colour: generation)",
    )
    from matplotlib.ticker import MaxNLocator

    fig.colorbar(sc, ax=ax, label="generation", ticks=MaxNLocator(integer=True))
    front = pareto_front(candidates)
    ax.plot([c.latency_ms for c in front], [100 * c.miou for c in front], "-o", color="tab:red",
            ms=5, lw=1.5, label="Pareto front (estimated latency)")
    measured = [c for c in candidates if c.measured_ms is not None]
    if measured:
        ax.scatter([c.measured_ms for c in measured], [100 * c.miou for c in measured], marker="x",
                   color="black", s=40, label="measured end to end")
    if chosen is not None:
        lat = chosen.measured_ms if chosen.measured_ms is not None else chosen.latency_ms
        ax.scatter([lat], [100 * chosen.miou], marker="*", s=260, color="gold", edgecolor="black",
                   zorder=5, label=f"chosen {chosen.arch.hash[:8]}" + (f" ({chosen_by})" if chosen_by else ""))
    for name, (lat, miou) in (baselines or {}).items():
        ax.scatter([lat], [100 * miou], marker="s", s=50, color="tab:blue", zorder=4)
        ax.annotate(name, (lat, 100 * miou), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("latency on target (ms)")
    ax.set_ylabel("validation mIoU (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
