"""The request-type cache: a hit equals a fresh fit, and anything that could make it stale misses."""

import json

import numpy as np
import pytest

from oserve.workload import fit_request_types, type_cache
from oserve.workload.trace import Trace


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("OSERVE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "request_types"


def _entries(root):
    return sorted(root.glob("*.json")) if root.exists() else []


def test_cached_types_equal_a_fresh_fit(conv_trace, cache_root):
    first = fit_request_types(conv_trace, k=4, seed=0)
    assert len(_entries(cache_root)) == 1
    again = fit_request_types(conv_trace, k=4, seed=0)
    fresh = fit_request_types(conv_trace, k=4, seed=0, cache=False)
    assert first == again == fresh
    assert np.array_equal(again.classify_online(conv_trace.input_tokens),
                          fresh.classify_online(conv_trace.input_tokens))


def test_every_input_of_the_fit_is_in_the_key(conv_trace, cache_root):
    fit_request_types(conv_trace, k=4, seed=0)
    fit_request_types(conv_trace, k=3, seed=0)
    fit_request_types(conv_trace, k=4, seed=1)
    fit_request_types(conv_trace, k=4, seed=0, max_points=5000)
    clipped, _ = conv_trace.clipped_to_context(2048)
    fit_request_types(clipped, k=4, seed=0)
    assert len(_entries(cache_root)) == 5
    # arrival times are not an input of the fit: a rescaled trace shares the entry
    fit_request_types(conv_trace.scaled(2.0), k=4, seed=0)
    assert len(_entries(cache_root)) == 5


def test_a_corrupt_or_foreign_entry_is_refitted_not_trusted(cache_root):
    rng = np.random.default_rng(0)
    t = Trace(np.arange(500.0), rng.integers(10, 5000, 500), rng.integers(5, 500, 500))
    fresh = fit_request_types(t, k=3, seed=0, cache=False)
    fit_request_types(t, k=3, seed=0)
    (entry,) = _entries(cache_root)
    doc = json.loads(entry.read_text())
    doc["centroids_log"] = [[0.0, 0.0]] * 3
    doc["key"] = "another"  # an entry copied under the wrong name
    entry.write_text(json.dumps(doc))
    assert fit_request_types(t, k=3, seed=0) == fresh
    entry.write_text("{not json")
    assert fit_request_types(t, k=3, seed=0) == fresh
    assert json.loads(entry.read_text())["key"] == entry.stem  # rewritten by the refit


def test_cache_can_be_switched_off(monkeypatch, tmp_path, conv_trace):
    monkeypatch.setenv("OSERVE_CACHE_DIR", "off")
    assert type_cache.cache_dir() is None
    assert type_cache.cache_key(conv_trace.input_tokens, conv_trace.output_tokens, 2, 0, 20000) is None
    fit_request_types(conv_trace, k=2, seed=0)
    assert not list(tmp_path.rglob("*.json"))
    monkeypatch.delenv("OSERVE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert type_cache.cache_dir() == tmp_path / "oserve"
