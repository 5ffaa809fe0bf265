import numpy as np

from oserve.forecast.synthetic import DiurnalSource, DiurnalSpec, synthetic_diurnal_trace


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
    # composition drifts: code prompts (shorter on average) dominate the second half of the day
    half = a.arrival_s < 2 * 3600
    assert np.median(a.input_tokens[half]) != np.median(a.input_tokens[~half])
