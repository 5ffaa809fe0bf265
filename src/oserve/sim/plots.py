"""Plots of simulation results (matplotlib, imported only here, drawn off-screen)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from oserve.sim.metrics import SimResult


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_cdfs(results: dict[str, SimResult], path: str | Path, title: str = "") -> None:
    """CDFs of end-to-end latency, TTFT and TPOT, one line per labelled result."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for label, res in results.items():
        done = res.completed
        for ax, values, name in ((axes[0], res.e2e_s[done], "end-to-end latency (s)"),
                                 (axes[1], res.ttft_s[done], "time to first token (s)"),
                                 (axes[2], res.tpot_s[done], "time per output token (s)")):
            v = np.sort(values[~np.isnan(values)])
            if len(v):
                ax.plot(v, np.arange(1, len(v) + 1) / len(v), label=label)
            ax.set_xlabel(name)
            ax.set_xscale("log")
            ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("fraction of completed requests")
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def p99_vs_rate(series: dict[str, list[tuple[float, float | None]]], path: str | Path,
                title: str = "", bound_s: float | None = None, xlabel: str = "offered load (req/s)") -> None:
    """P99 end-to-end latency against offered load, one line per labelled series of (rate, p99)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in series.items():
        pts = sorted((x, y) for x, y in points if y is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    if bound_s is not None:
        ax.axhline(bound_s, color="grey", linestyle="--", label=f"bound {bound_s:.1f} s")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("P99 end-to-end latency (s)")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
