"""REAL-DRIFT traces: stitched windows of the real Azure traces, and the time-preserving rate replay."""

import numpy as np
import pytest

from oserve.common.errors import ConfigError
from oserve.forecast.synthetic import load_any_trace
from oserve.workload import load_trace
from oserve.workload.drift import REAL_DRIFT, load_drift_trace, parse_segments, replay_at_rate


def test_stitched_segments_keep_each_windows_real_arrivals():
    t = load_drift_trace("stitch:azure-conv/0-600,azure-code/0-600")
    conv, code = load_trace("azure-conv").window(0, 600), load_trace("azure-code").window(0, 600)
    assert len(t) == len(conv) + len(code)
    assert np.all(np.diff(t.arrival_s) >= 0) and t.meta["real_drift"]
    np.testing.assert_allclose(t.arrival_s[:len(conv)], conv.arrival_s)
    np.testing.assert_allclose(t.arrival_s[len(conv):], code.arrival_s + 600.0)
    np.testing.assert_array_equal(t.input_tokens[len(conv):], code.input_tokens)
    assert t.name.startswith("REAL-DRIFT")
    assert load_drift_trace("stitch:azure-conv/0-600*2").name.startswith("REAL-REPLAY")


def test_rate_replay_keeps_the_time_span_and_multiplies_counts():
    src = load_trace("azure-conv").window(0, 600)
    fast = replay_at_rate(src, 4.0, seed=1)
    assert len(fast) == 4 * len(src)
    assert fast.arrival_s[0] >= src.arrival_s[0] and fast.arrival_s[-1] <= src.arrival_s[-1]
    per_min_src = np.histogram(src.arrival_s, bins=10, range=(0, 600))[0]
    per_min_fast = np.histogram(fast.arrival_s, bins=10, range=(0, 600))[0]
    np.testing.assert_allclose(per_min_fast, 4 * per_min_src, rtol=0.02, atol=4)  # the real shape kept
    again = replay_at_rate(src, 2.5, seed=3).arrival_s
    assert np.array_equal(replay_at_rate(src, 2.5, seed=3).arrival_s, again)  # reproducible
    half = replay_at_rate(src, 0.5, seed=1)
    assert 0.4 * len(src) < len(half) < 0.6 * len(src)


def test_a_ramp_rises_over_the_segment():
    t = load_drift_trace("stitch:azure-mix/0-1200*0.5~2")
    first, last = (np.sum((t.arrival_s >= a) & (t.arrival_s < a + 200)) for a in (0, 1000))
    src = load_trace("azure-mix")
    base_first = np.sum(src.arrival_s < 200)
    base_last = np.sum((src.arrival_s >= 1000) & (src.arrival_s < 1200))
    assert first / base_first < 0.8 and last / base_last > 1.6


def test_presets_load_and_bad_specs_name_the_segment():
    for name in REAL_DRIFT:
        t = load_any_trace(f"real-drift:{name}")
        assert len(t) > 1000 and t.name == f"REAL-DRIFT-{name}"
    with pytest.raises(ConfigError, match="azure-conv/0"):
        parse_segments("azure-conv/0")
    with pytest.raises(ConfigError, match="START < END"):
        parse_segments("azure-conv/600-0")
    with pytest.raises(ConfigError, match="unknown REAL-DRIFT"):
        load_drift_trace("real-drift:nope")
