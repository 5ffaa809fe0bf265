"""What ``oserve forecast eval`` prints and writes, and a loaded model that backtests as trained."""

from __future__ import annotations

import json
from pathlib import Path

from oserve.common.provenance import git_revision
from oserve.forecast.backtest import BacktestResult


class Pretrained:
    """A loaded model: fit() keeps it as trained."""

    def __init__(self, model) -> None:
        self.model = model
        self.name = "lstm(loaded)"

    def fit(self, train_rps):
        return self

    def predict(self, history_rps):
        return self.model.predict(history_rps)

    def predict_batch(self, rates_rps, origins):
        return self.model.predict_batch(rates_rps, origins)


def render(result: BacktestResult, trace_name: str, skipped: list[str]) -> str:
    lines = [f"Forecast backtest on {trace_name}: window {result.window_s:g} s, "
             f"{result.num_train_windows} windows to fit, {result.num_test_windows} held out",
             "RRMSE (RMSE / mean rate) of one-window-ahead forecasts on the held-out tail:", ""]
    head = f"  {'model':<16}" + "".join(f"{n.split('(')[0]:>8}" for n in result.type_names)
    lines.append(head + f"{'all':>8}{'mean':>8}{'ms/pred':>9}")
    rates = "".join(f"{r:8.2f}" for r in result.mean_rate_rps)
    lines.append(f"  {'(mean req/s)':<16}{rates}{sum(result.mean_rate_rps):8.2f}")
    floor = "".join(f"{f:8.3f}" for f in result.poisson_floor)
    lines.append(f"  {'(Poisson floor)':<16}{floor}")
    for s in result.scores:
        row = "".join(f"{x:8.3f}" for x in s.rrmse_per_type)
        lines.append(f"  {s.name:<16}{row}{s.rrmse_total:8.3f}{s.rrmse_mean:8.3f}"
                     f"{s.seconds_per_prediction * 1e3:9.3f}")
    if skipped:
        lines.append("\n  lstm skipped: PyTorch is not installed (pip install -e '.[forecast]')")
    return "\n".join(lines)


def write_eval_outputs(out: Path, doc: dict, result: BacktestResult, series, config: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "forecast_eval.json").write_text(json.dumps(
        {**doc, "config": config, "git_revision": git_revision()}, indent=2))
    from oserve.forecast.plots import plot_backtest

    plot_backtest(out / "forecast_eval.png", result, series)


__all__ = ["Pretrained", "render", "write_eval_outputs"]
