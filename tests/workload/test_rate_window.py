"""Windowed per-type rates: one definition for the simulator's controller and the server's."""

import numpy as np
import pytest

from oserve.common.errors import ConfigError
from oserve.workload.rate_window import RateWindow, window_rates


def test_window_is_half_open_and_per_type():
    arrival = [0.0, 1.0, 2.0, 9.999, 10.0]
    types = [0, 1, 1, 0, 1]
    # [0, 10): the arrival at exactly 10.0 belongs to the next window
    assert window_rates(arrival, types, 2, 10.0, 10.0).tolist() == [0.2, 0.2]
    assert window_rates(arrival, types, 2, 11.0, 10.0).tolist() == [0.1, 0.3]
    assert window_rates([], [], 3, 5.0, 1.0).tolist() == [0.0, 0.0, 0.0]
    assert window_rates(arrival, [0, 5, -1, 0, 0], 2, 10.0, 10.0).tolist() == [0.2, 0.0]
    with pytest.raises(ConfigError, match="window"):
        window_rates(arrival, types, 2, 10.0, 0.0)


def test_streaming_window_equals_the_batch_function():
    rng = np.random.default_rng(3)
    arrival = np.sort(rng.uniform(0, 100, 500))
    types = rng.integers(0, 3, 500)
    meter = RateWindow(3, window_s=7.0)
    for t, k in zip(arrival, types):
        meter.record(int(k), float(t))
    for now in (50.0, 70.5, 100.0, 120.0):  # asked in time order, as the controller does
        assert meter.rates_rps(now) == pytest.approx(window_rates(arrival, types, 3, now, 7.0).tolist())


def test_rate_window_forgets_old_arrivals_and_reports_coverage():
    meter = RateWindow(num_types=2, window_s=10.0)
    for i in range(20):
        meter.record(i % 2, i * 0.5)
    assert meter.rates_rps(10.0) == (1.0, 1.0)
    assert meter.rates_rps(17.0) == (0.3, 0.3)  # arrivals before 7.0 s have left the window
    assert meter.observed_s(5.0) == 5.0 and meter.observed_s(100.0) == 10.0
    assert RateWindow(2).observed_s(1.0) == 0.0
