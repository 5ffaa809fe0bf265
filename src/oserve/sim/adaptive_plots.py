"""Plot of an adaptive run: actual and forecast per-type rates, and the deployment over time."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_adaptive(path: Path, timelines: dict, type_names, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(timelines.values()))
    if not first:
        return
    fig, axes = plt.subplots(1 + len(timelines), 1, figsize=(11, 3 + 2.2 * len(timelines)), sharex=True)
    t_min = np.array([r.time_s for r in first]) / 60
    observed = np.array([r.observed_rps for r in first])
    forecast = np.array([r.forecast_rps for r in first])
    ax = axes[0]
    for k, name in enumerate(type_names):
        line, = ax.plot(t_min, observed[:, k], lw=1.2, label=f"{name.split('(')[0]} actual")
        ax.plot(t_min, forecast[:, k], lw=1.0, ls="--", color=line.get_color(), label="forecast")
    ax.set_ylabel("req/s (past interval)")
    ax.legend(fontsize=7, ncol=len(type_names))
    ax.set_title(title, fontsize=9)
    all_labels = sorted({lab for tl in timelines.values() for r in tl for lab in r.num_gpus_by_config})
    colour = {lab: plt.get_cmap("tab10")(i % 10) for i, lab in enumerate(all_labels)}
    for ax, (mode, timeline) in zip(axes[1:], timelines.items()):
        labels = [lab for lab in all_labels if any(lab in r.num_gpus_by_config for r in timeline)]
        stacks = np.array([[r.num_gpus_by_config.get(lab, 0) for r in timeline] for lab in labels])
        ax.stackplot([r.time_s / 60 for r in timeline], stacks, labels=labels, step="post",
                     colors=[colour[lab] for lab in labels])
        for r in timeline:
            if r.switched:
                ax.axvline(r.time_s / 60, color="black", lw=0.8, ls=":")
        ax.set_ylabel(f"GPUs\n{mode}")
        ax.legend(fontsize=7, loc="upper left", ncol=3)
    axes[-1].set_xlabel("time (min); dotted lines: switch decisions")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
