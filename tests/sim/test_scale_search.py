"""The one bracket-then-bisect search behind the P99 rate search and the SLO goodput search."""

from __future__ import annotations

import pytest

from oserve.sim.goodput import MAX_SCALE, MIN_SCALE, search_goodput_scale
from oserve.sim.metrics import Attainment
from oserve.sim.rate_search import search_max_scale, search_scale


def _recording(boundary):
    seen = []

    def is_good(scale):
        seen.append(scale)
        return scale <= boundary
    return is_good, seen


def test_brackets_by_doubling_then_bisects_geometrically():
    is_good, seen = _recording(3.0)
    b = search_scale(is_good, 1.0, 0.03, 24)
    assert seen[:3] == [1.0, 2.0, 4.0]
    assert seen[3] == pytest.approx(8.0 ** 0.5)  # the geometric midpoint of the bracket (2, 4)
    assert b.lo <= 3.0 < b.hi and b.hi / b.lo <= 1.03 and b.num_probes == len(seen)


def test_halves_down_and_clamps_to_the_limits():
    is_good, seen = _recording(0.3)
    b = search_scale(is_good, 1.0, 0.03, 24, min_scale=0.5)
    assert seen == [1.0, 0.5] and b.lo is None and b.hi == 0.5
    b = search_scale(lambda s: True, 1.0, 0.03, 24, max_scale=5.0)
    assert (b.lo, b.hi, b.num_probes) == (5.0, None, 4)  # 1, 2, 4, then 5 and stop
    assert search_scale(lambda s: True, 1.0, 0.03, 6).num_probes == 6  # no limit: max_probes stops it


@pytest.mark.parametrize("boundary", [0.01, 0.37, 1.0, 2.9, 50.0, 100.0])
def test_the_p99_and_goodput_searches_probe_exactly_what_search_scale_probes(boundary):
    good, ref = _recording(boundary)
    search_scale(good, 1.0, 0.05, 14)
    seen = []

    def summary(scale):
        seen.append(scale)
        return {"p99_e2e_s": 1.0 if scale <= boundary else 9.0, "dropped": 0}
    res = search_max_scale(summary, 2.0, 1.0, 0.05, 14)
    assert seen == ref and [p[0] for p in res.probes] == ref
    assert res.best_scale == max([s for s in ref if s <= boundary], default=0.0)

    good, ref = _recording(boundary)
    search_scale(good, 1.0, 0.03, 24, MIN_SCALE, MAX_SCALE)

    def attainment(scale):
        a = 1.0 if scale <= boundary else 0.5
        return Attainment(a, (a,), (10,)), None
    g = search_goodput_scale(attainment, 0.9)
    assert [p.scale for p in g.probes] == ref
    assert g.scale == max([s for s in ref if s <= boundary], default=0.0)
