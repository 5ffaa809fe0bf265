"""Forecasting each request type's arrival rate in the next window from the recent history."""

from oserve.forecast.backtest import BacktestResult, backtest
from oserve.forecast.baselines import (
    EWMA,
    Forecaster,
    LastValue,
    MovingAverage,
    SeasonalNaive,
    baseline_forecasters,
)
from oserve.forecast.series import RateSeries, rate_series
from oserve.forecast.synthetic import DiurnalSpec, synthetic_diurnal_trace

__all__ = [
    "EWMA",
    "BacktestResult",
    "DiurnalSpec",
    "Forecaster",
    "LastValue",
    "MovingAverage",
    "RateSeries",
    "SeasonalNaive",
    "backtest",
    "baseline_forecasters",
    "rate_series",
    "synthetic_diurnal_trace",
]
