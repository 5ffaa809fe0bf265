"""Backtesting forecasters on a held-out tail: one-step-ahead predictions from the true history.

The series is split once: forecasters are fitted on the head (``train_frac`` of the windows) and
evaluated on every window of the tail, each predicted from all the windows before it. The error is the
relative RMSE per type, RMSE / mean actual rate. The Poisson floor is the RRMSE that even the true
intensity would score if arrivals were Poisson: sqrt(rate / window) / rate per type, a reference for how
much of the error is counting noise that no forecaster can remove at that window size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from oserve.common.errors import ConfigError
from oserve.forecast.baselines import Forecaster
from oserve.forecast.series import RateSeries


@dataclass(frozen=True)
class ModelScore:
    name: str
    rrmse_per_type: tuple[float, ...]
    rrmse_total: float  # of the summed rate over all types
    rrmse_mean: float  # mean over types with traffic
    seconds_per_prediction: float
    fit_seconds: float
    seconds_per_call: float = 0.0  # one unbatched predict from the whole history (a control interval's)


@dataclass(frozen=True)
class BacktestResult:
    window_s: float
    type_names: tuple[str, ...]
    num_train_windows: int
    num_test_windows: int
    mean_rate_rps: tuple[float, ...]  # per type, on the test windows
    poisson_floor: tuple[float, ...]
    scores: tuple[ModelScore, ...]
    predictions: dict  # model name -> (test windows, types) array

    def to_dict(self) -> dict:
        return {
            "window_s": self.window_s, "types": list(self.type_names),
            "num_train_windows": self.num_train_windows, "num_test_windows": self.num_test_windows,
            "mean_rate_rps": list(self.mean_rate_rps), "poisson_floor_rrmse": list(self.poisson_floor),
            "models": [{"name": s.name, "rrmse_per_type": list(s.rrmse_per_type),
                        "rrmse_total": s.rrmse_total, "rrmse_mean": s.rrmse_mean,
                        "seconds_per_prediction": s.seconds_per_prediction,
                        "fit_seconds": s.fit_seconds, "seconds_per_call": s.seconds_per_call}
                       for s in self.scores],
        }


def rrmse(predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Relative RMSE along axis 0: RMSE / mean(actual); NaN where the actual mean is 0."""
    predicted, actual = np.asarray(predicted, float), np.asarray(actual, float)
    rmse = np.sqrt(np.mean((predicted - actual) ** 2, axis=0))
    mean = actual.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mean > 0, rmse / np.where(mean > 0, mean, 1.0), np.nan)


def split_index(num_windows: int, train_frac: float, min_train: int = 4) -> int:
    if not 0 < train_frac < 1:
        raise ConfigError(f"train fraction must be in (0, 1), got {train_frac}")
    split = int(round(num_windows * train_frac))
    if split < min_train or num_windows - split < 2:
        raise ConfigError(f"{num_windows} windows are too few to backtest (need >= {min_train} to "
                          f"train and >= 2 to test): use a shorter window or a longer trace")
    return split


def _predict_tail(model: Forecaster, rates: np.ndarray, split: int) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    batch = getattr(model, "predict_batch", None)
    if batch is not None:
        preds = np.asarray(batch(rates, range(split, len(rates))))
    else:
        preds = np.array([model.predict(rates[:t]) for t in range(split, len(rates))])
    return np.maximum(preds, 0.0), (time.perf_counter() - start) / (len(rates) - split)


def _one_call_s(model: Forecaster, rates: np.ndarray, repeats: int = 5) -> float:
    """Median time of one predict from the whole history: what a controller pays each interval."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.predict(rates)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def backtest(series: RateSeries, forecasters: list[Forecaster], train_frac: float = 0.7) -> BacktestResult:
    rates = series.rates_rps
    split = split_index(series.num_windows, train_frac)
    actual = rates[split:]
    mean = actual.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        floor = np.where(mean > 0, np.sqrt(mean / series.window_s) / np.where(mean > 0, mean, 1), np.nan)
    scores, predictions = [], {}
    for f in forecasters:
        t0 = time.perf_counter()
        fitted = f.fit(rates[:split])
        fit_s = time.perf_counter() - t0
        preds, per_pred_s = _predict_tail(fitted, rates, split)
        per_type = rrmse(preds, actual)
        total = float(rrmse(preds.sum(axis=1), actual.sum(axis=1)))
        scores.append(ModelScore(fitted.name, tuple(float(x) for x in per_type), total,
                                 float(np.nanmean(per_type)), per_pred_s, fit_s, _one_call_s(fitted, rates)))
        predictions[fitted.name] = preds
    return BacktestResult(series.window_s, series.type_names, split, len(actual),
                          tuple(float(x) for x in mean), tuple(float(x) for x in floor),
                          tuple(scores), predictions)
