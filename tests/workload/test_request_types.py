import numpy as np
import pytest

from oserve.common.errors import ConfigError
from oserve.workload import fit_request_types, per_type_rates
from oserve.workload.trace import Trace


def test_kmeans_types_are_ordered_and_deterministic(conv_trace):
    a = fit_request_types(conv_trace, k=4, seed=0)
    b = fit_request_types(conv_trace, k=4, seed=0)
    assert a == b and a.k == 4
    work = [np.expm1(i) + np.expm1(o) for i, o in a.centroids_log]
    assert work == sorted(work)


def test_types_separate_obvious_clusters():
    rng = np.random.default_rng(1)
    short = np.column_stack([rng.integers(50, 70, 300), rng.integers(20, 30, 300)])
    long = np.column_stack([rng.integers(4000, 5000, 300), rng.integers(400, 500, 300)])
    both = np.vstack([short, long])
    t = Trace(np.arange(600, dtype=float), both[:, 0], both[:, 1])
    types = fit_request_types(t, k=2)
    labels = types.assign(t.input_tokens, t.output_tokens)
    assert set(labels[:300]) == {0} and set(labels[300:]) == {1}
    # prompt length alone separates them too, so the online classifier is exact here
    assert types.online_mistype_rate(t) == 0.0


def test_online_mistype_rate_measured_on_real_trace(conv_trace, conv_types):
    rate = conv_types.online_mistype_rate(conv_trace)
    assert 0.0 <= rate < 0.25  # measured 7.4% on azure-conv (docs/planner.md)
    stats = conv_types.stats(conv_trace)
    assert sum(s.count for s in stats) == len(conv_trace)
    assert sum(s.rate_rps for s in stats) == pytest.approx(conv_trace.mean_rate_rps, rel=1e-6)


def test_bad_k():
    t = Trace(np.arange(3, dtype=float), np.array([1, 2, 3]), np.array([1, 2, 3]))
    with pytest.raises(ConfigError):
        fit_request_types(t, k=0)
    with pytest.raises(ConfigError, match="fewer than k"):
        fit_request_types(t, k=5)


def test_per_type_rates_count_every_request():
    arrival = np.array([0.1, 0.2, 1.5, 2.5, 2.6])
    labels = np.array([0, 1, 1, 0, 0])
    rates = per_type_rates(arrival, labels, k=2, window_s=1.0)
    assert rates.shape == (3, 2)
    assert rates.sum() * 1.0 == pytest.approx(5)
    assert rates[2].tolist() == [2.0, 0.0]


def test_scalar_online_typing_matches_the_vectorised_one(conv_types):
    """The router types one prompt at a time (a bisect); the planner types arrays (numpy): same bins."""
    lengths = np.unique(np.geomspace(1, 200_000, 3000).astype(int))
    expected = conv_types.classify_online(lengths)
    assert [conv_types.classify_online(int(n)) for n in lengths] == expected.tolist()
    assert isinstance(conv_types.classify_online(17), int)
    assert conv_types.classify_online(np.int64(17)) == conv_types.classify_online(17)
