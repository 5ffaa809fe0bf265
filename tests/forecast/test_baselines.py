import numpy as np
import pytest

from oserve.common.errors import ConfigError
from oserve.forecast import EWMA, LastValue, MovingAverage, SeasonalNaive, backtest, rate_series
from oserve.forecast.backtest import rrmse, split_index
from oserve.forecast.series import RateSeries, parse_duration_s


def _hist():
    return np.array([[1.0, 10.0], [2.0, 10.0], [3.0, 10.0], [4.0, 20.0]])


def test_last_value_and_moving_average():
    assert LastValue().predict(_hist()).tolist() == [4.0, 20.0]
    assert MovingAverage(2).predict(_hist()).tolist() == [3.5, 15.0]
    assert MovingAverage(10).predict(_hist()).tolist() == [2.5, 12.5]


def test_seasonal_naive_uses_one_season_back_and_falls_back_to_last():
    assert SeasonalNaive(3).predict(_hist()).tolist() == [2.0, 10.0]
    assert SeasonalNaive(9).predict(_hist()).tolist() == [4.0, 20.0]


def test_ewma_fit_picks_alpha_on_training_data_only():
    rng = np.random.default_rng(0)
    noisy = np.column_stack([5 + rng.normal(0, 1, 200), np.linspace(0, 100, 200)])
    fitted = EWMA().fit(noisy)
    # a noisy constant wants heavy smoothing; a clean ramp wants to follow the last value
    assert fitted.alphas[0] < fitted.alphas[1]
    assert EWMA(alphas=(1.0,)).predict(_hist()).tolist() == [4.0, 20.0]


def test_forecasters_reject_empty_history():
    with pytest.raises(ConfigError):
        LastValue().predict(np.zeros((0, 2)))


def test_rrmse_is_relative_and_nan_for_silent_types():
    actual = np.array([[2.0, 0.0], [4.0, 0.0]])
    pred = np.array([[3.0, 0.0], [3.0, 0.0]])
    out = rrmse(pred, actual)
    assert out[0] == pytest.approx(1 / 3)
    assert np.isnan(out[1])


def test_backtest_scores_only_the_held_out_tail():
    rates = np.concatenate([np.full((70, 1), 1.0), np.full((30, 1), 3.0)])
    result = backtest(RateSeries(rates, 10.0, ("T0",)), [LastValue(), MovingAverage(50)], 0.7)
    assert result.num_train_windows == 70 and result.num_test_windows == 30
    last = result.scores[0]
    # the only miss of last-value is the jump at the first test window: RMSE sqrt(4/30)
    assert last.rrmse_per_type[0] == pytest.approx(np.sqrt(4 / 30) / 3)
    assert result.scores[1].rrmse_total > last.rrmse_total


def test_split_rejects_too_short_series():
    with pytest.raises(ConfigError):
        split_index(5, 0.7)
    with pytest.raises(ConfigError):
        split_index(100, 1.5)


def test_parse_duration():
    assert parse_duration_s("10s") == 10
    assert parse_duration_s("1m") == 60
    assert parse_duration_s("500ms") == 0.5
    assert parse_duration_s("2h") == 7200
    with pytest.raises(ConfigError):
        parse_duration_s("ten")
    with pytest.raises(ConfigError):
        parse_duration_s("0s")


def test_rate_series_counts_every_complete_window(conv_trace, conv_types):
    series = rate_series(conv_trace, conv_types, 60.0)
    assert series.num_types == conv_types.k
    full = int(conv_trace.arrival_s[-1] // 60)
    assert series.num_windows == full
    in_full = (conv_trace.arrival_s < full * 60).sum()
    assert series.rates_rps.sum() * 60 == pytest.approx(in_full)
