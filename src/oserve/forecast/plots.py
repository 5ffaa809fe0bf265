"""Plot of a backtest: actual per-type rates against each model's forecasts on the held-out tail."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from oserve.forecast.backtest import BacktestResult
from oserve.forecast.series import RateSeries


def plot_backtest(path: Path, result: BacktestResult, series: RateSeries) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(result.type_names)
    fig, axes = plt.subplots(k, 1, figsize=(10, 2.2 * k), sharex=True, squeeze=False)
    start = result.num_train_windows
    t_min = (np.arange(start, start + result.num_test_windows) + 1) * series.window_s / 60
    for t, ax in enumerate(axes[:, 0]):
        ax.plot(t_min, series.rates_rps[start:, t], color="black", lw=1.2, label="actual")
        for name, preds in result.predictions.items():
            ax.plot(t_min, preds[:, t], lw=0.9, alpha=0.8, label=name)
        ax.set_ylabel("req/s")
        ax.set_title(result.type_names[t], fontsize=9)
    axes[0, 0].legend(fontsize=7, ncol=len(result.predictions) + 1)
    axes[-1, 0].set_xlabel("time (min)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
