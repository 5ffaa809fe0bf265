import numpy as np

from oserve.forecast.synthetic import DiurnalSource, DiurnalSpec, synthetic_diurnal_trace
from oserve.workload import load_trace


def _spec():
    return DiurnalSpec(duration_s=4 * 3600.0, period_s=4 * 3600.0, sources=(
        DiurnalSource("azure-conv", 2.0, 0.8, 0.0), DiurnalSource("azure-code", 2.0, 0.8, np.pi)))


def test_synthetic_trace_is_labelled_reproducible_and_drifts():
    a = synthetic_diurnal_trace(_spec(), seed=3)
    b = synthetic_diurnal_trace(_spec(), seed=3)
    assert "SYNTHETIC" in a.name and a.meta["synthetic"] is True
    assert np.array_equal(a.arrival_s, b.arrival_s)
    assert np.all(np.diff(a.arrival_s) >= 0)
    # mean rate is about the sum of the sources' means
    assert 3.0 < len(a) / (4 * 3600) < 5.0
    # composition drifts: conversation requests (their lengths drawn from azure-conv) peak at 1 h, code
    # requests at 3 h (opposite phase, amplitude 0.8: each source's rate swings 9:1 peak to trough)
    conv, code = ({(int(i), int(o)) for i, o in zip(t.input_tokens, t.output_tokens)}
                  for t in (load_trace("azure-conv"), load_trace("azure-code")))
    only_conv, only_code = conv - code, code - conv
    pairs = list(zip(a.input_tokens.tolist(), a.output_tokens.tolist()))
    is_conv = np.array([p in only_conv for p in pairs])
    is_code = np.array([p in only_code for p in pairs])
    assert is_conv.mean() > 0.3 and is_code.mean() > 0.3  # nearly every pair tells its source
    near_1h = np.abs(a.arrival_s - 3600) < 1800
    near_3h = np.abs(a.arrival_s - 3 * 3600) < 1800
    share_1h = is_conv[near_1h].sum() / (is_conv[near_1h].sum() + is_code[near_1h].sum())
    share_3h = is_conv[near_3h].sum() / (is_conv[near_3h].sum() + is_code[near_3h].sum())
    assert share_1h > 0.7 and share_3h < 0.3


def test_single_source_rate_follows_its_daily_curve():
    spec = DiurnalSpec(duration_s=4 * 3600.0, period_s=4 * 3600.0,
                       sources=(DiurnalSource("azure-conv", 2.0, 0.8, 0.0),))
    t = synthetic_diurnal_trace(spec, seed=1).arrival_s
    peak = np.sum(np.abs(t - 3600) < 900)  # expected 1.8 x 2 rps x 1800 s, times the noise factor
    trough = np.sum(np.abs(t - 3 * 3600) < 900)  # expected 0.2 x 2 rps x 1800 s
    assert 0.7 * 6480 < peak < 1.3 * 6480
    assert 0.5 * 720 < trough < 1.5 * 720
    assert peak > 5 * trough
