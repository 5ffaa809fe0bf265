"""Baseline forecasters: last value, moving average, EWMA and seasonal naive.

A forecaster maps the history of per-type rates (windows x types, oldest first) to the next window's
rates (one per type). ``fit`` sees only training data and returns a fitted copy; ``predict`` is pure.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import numpy as np

from oserve.common.errors import ConfigError

EWMA_ALPHAS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)


@runtime_checkable
class Forecaster(Protocol):
    """Predicts the next window's per-type rates from the history ``(windows, types)``."""

    # A read-only property so frozen dataclasses (whose fields mypy treats as read-only) satisfy it.
    @property
    def name(self) -> str: ...

    def fit(self, train_rps: np.ndarray) -> Forecaster: ...

    def predict(self, history_rps: np.ndarray) -> np.ndarray: ...


def _check_history(history_rps: np.ndarray) -> np.ndarray:
    history = np.asarray(history_rps, dtype=np.float64)
    if history.ndim != 2 or history.shape[0] == 0:
        raise ConfigError("a forecast needs a history of at least one window (windows x types)")
    return history


@dataclass(frozen=True)
class LastValue:
    """Next window = this window."""

    name: str = "last"

    def fit(self, train_rps: np.ndarray) -> LastValue:
        return self

    def predict(self, history_rps: np.ndarray) -> np.ndarray:
        return _check_history(history_rps)[-1].copy()


@dataclass(frozen=True)
class MovingAverage:
    """Mean of the last ``num_windows`` windows."""

    num_windows: int = 6
    name: str = "moving-avg"

    def __post_init__(self) -> None:
        if self.num_windows < 1:
            raise ConfigError(f"moving average needs >= 1 window, got {self.num_windows}")

    def fit(self, train_rps: np.ndarray) -> MovingAverage:
        return self

    def predict(self, history_rps: np.ndarray) -> np.ndarray:
        return _check_history(history_rps)[-self.num_windows:].mean(axis=0)


@dataclass(frozen=True)
class EWMA:
    """Exponentially weighted mean; ``fit`` picks the smoothing factor per type on training data."""

    alphas: tuple[float, ...] = (0.3,)
    name: str = "ewma"

    def fit(self, train_rps: np.ndarray) -> EWMA:
        train = _check_history(train_rps)
        best = []
        for t in range(train.shape[1]):
            errors = [_ewma_one_step_sse(train[:, t], a) for a in EWMA_ALPHAS]
            best.append(EWMA_ALPHAS[int(np.argmin(errors))])
        return replace(self, alphas=tuple(best))

    def predict(self, history_rps: np.ndarray) -> np.ndarray:
        history = _check_history(history_rps)
        alphas = np.broadcast_to(np.asarray(self.alphas, dtype=np.float64), history.shape[1:])
        level = history[0].copy()
        for row in history[1:]:
            level = alphas * row + (1 - alphas) * level
        return level


def _ewma_one_step_sse(values: np.ndarray, alpha: float) -> float:
    level, sse = values[0], 0.0
    for v in values[1:]:
        sse += (v - level) ** 2
        level = alpha * v + (1 - alpha) * level
    return float(sse)


@dataclass(frozen=True)
class SeasonalNaive:
    """Next window = the window one season (``period_windows``) earlier; last value before that."""

    period_windows: int = 1
    name: str = "seasonal-naive"

    def __post_init__(self) -> None:
        if self.period_windows < 1:
            raise ConfigError(f"season must be >= 1 window, got {self.period_windows}")

    def fit(self, train_rps: np.ndarray) -> SeasonalNaive:
        return self

    def predict(self, history_rps: np.ndarray) -> np.ndarray:
        history = _check_history(history_rps)
        if history.shape[0] < self.period_windows:
            return history[-1].copy()
        return history[-self.period_windows].copy()


def baseline_forecasters(season_windows: int | None = None,
                         moving_avg_windows: int = 6) -> list[Forecaster]:
    """The honest baselines every learned forecaster is compared against."""
    out: list[Forecaster] = [LastValue(), MovingAverage(moving_avg_windows), EWMA()]
    if season_windows and season_windows > 1:
        out.append(SeasonalNaive(season_windows))
    return out
