"""The study's accuracy-MACs plot: every method's seed-mean points and Pareto front."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mutualnet.evaluate import pareto_front
from mutualnet.fileio import atomic_write

from .study import Loaded, mean_points, stats

COLORS = {"MutualNet": "C0", "US-Net": "C1", "Independent": "C2"}
MARKERS = {"MutualNet": "o", "US-Net": "s", "Independent": "^"}


def plot_study(loaded: Loaded, path: Path, *, title: str) -> None:
    """Top-1 vs MACs (log scale); each method's Pareto front as a line with seed min-max
    error bars, its other points faint; methods without results are named as missing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8), dpi=120)
    groups = list(loaded.per_group.items())
    for i, (group, per_seed) in enumerate(groups):  # MutualNet first in the legend, on top
        _plot_group(ax, group, per_seed, 2 * (len(groups) - i) + 1)
    absent = [g for g, v in loaded.per_group.items() if not v]
    if absent:
        ax.text(0.02, 0.97, "missing: " + ", ".join(absent), transform=ax.transAxes,
                va="top", fontsize=8, color="0.3")
    ax.set_xscale("log")
    _plain_log_ticks(ax)
    ax.set_xlabel("MACs per image (millions), log scale")
    ax.set_ylabel("top-1 accuracy (%), BN calibrated")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda t: fig.savefig(t, format="png"))
    plt.close(fig)


def _plot_group(ax: Any, group: str, per_seed: Any, z: int) -> None:
    pts = mean_points(per_seed)
    if not pts:
        return
    st = stats(per_seed)
    color, marker = COLORS[group], MARKERS[group]
    ax.scatter([p.mflops for p in pts], [p.top1 for p in pts], s=14, color=color, alpha=0.35,
               linewidths=0, marker=marker, zorder=z)
    front = pareto_front(pts)
    lo = [p.top1 - min(st[(p.width, p.resolution)].values) for p in front]
    hi = [max(st[(p.width, p.resolution)].values) - p.top1 for p in front]
    n = len(per_seed)
    ax.errorbar([p.mflops for p in front], [p.top1 for p in front],
                yerr=[lo, hi] if n > 1 else None, fmt="-" + marker, color=color,
                markersize=5, capsize=2, zorder=z + 1,
                label=f"{group} ({n} seed{'s' * (n > 1)})")


def _plain_log_ticks(ax: Any) -> None:
    """Label the log axis 0.2, 0.5, 1, 2, ... instead of 2x10^-1."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
