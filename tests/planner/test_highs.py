"""The planner's HiGHS access: highspy called directly gives scipy's solutions bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from oserve.costmodel.catalog import load_models, parse_cluster
from oserve.planner import highs
from oserve.planner.api import make_plan
from oserve.workload import fit_request_types, load_trace

pytest.importorskip("highspy")


def _random_lp(rng: np.random.Generator):
    """A dispatch-shaped LP: flows of types to groups, conservation rows, capacity rows, min t."""
    num_t, num_c = int(rng.integers(1, 5)), int(rng.integers(1, 6))
    cap = rng.uniform(0.5, 20.0, (num_c, num_t)) * (rng.random((num_c, num_t)) < 0.8)
    cap[0] = np.maximum(cap[0], 1.0)  # every type servable
    demand = rng.uniform(0.1, 10.0, num_t)
    pairs = [(t, c) for t in range(num_t) for c in range(num_c) if cap[c, t] > 0]
    nv = len(pairs) + 1
    a_eq, a_ub = np.zeros((num_t, nv)), np.zeros((num_c, nv))
    for i, (t, c) in enumerate(pairs):
        a_eq[t, i] = 1.0
        a_ub[c, i] = 1.0 / cap[c, t]
    a_ub[:, -1] = -1.0
    cost = np.zeros(nv)
    cost[-1] = 1.0
    return cost, a_ub, np.zeros(num_c), a_eq, demand


@pytest.mark.parametrize("seed", range(20))
def test_linprog_backends_agree_bit_for_bit(seed: int) -> None:
    lp = _random_lp(np.random.default_rng(seed))
    a = highs.linprog_min(*lp, backend="highspy")
    b = highs.linprog_min(*lp, backend="scipy")
    assert a.status == b.status == 0
    assert np.array_equal(a.x, b.x) and np.array_equal(a.ineq_marginals, b.ineq_marginals)


def test_infeasible_lp_gives_no_solution_on_both() -> None:
    cost, a_ub, b_ub, a_eq, b_eq = np.array([1.0]), np.array([[1.0]]), np.array([1.0]), \
        np.array([[1.0]]), np.array([2.0])  # x <= 1 and x = 2
    for backend in highs.BACKENDS:
        res = highs.linprog_min(cost, a_ub, b_ub, a_eq, b_eq, backend=backend)
        assert res.x is None and res.status == 2


@pytest.mark.parametrize("seed", range(10))
def test_milp_backends_agree(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 6))
    rows = rng.uniform(0.0, 5.0, (3, n))
    hi = rng.uniform(5.0, 20.0, 3)
    cost = -rng.uniform(0.1, 3.0, n)
    integ = (rng.random(n) < 0.7).astype(float)
    for kw in ({}, {"mip_rel_gap": 0.0, "presolve": False}):
        a = highs.milp_min(cost, rows, np.full(3, -np.inf), hi, integ, 0, 10.0, 10.0, backend="highspy",
                           **kw)
        b = highs.milp_min(cost, rows, np.full(3, -np.inf), hi, integ, 0, 10.0, 10.0, backend="scipy", **kw)
        assert a.status == b.status == 0
        assert np.array_equal(a.x, b.x)


@pytest.mark.parametrize("cluster", ["2x8xH100", "1x8xH100+1x8xA100-80GB+1x8xH200+1x8xL40S"])
@pytest.mark.parametrize("planner", ["oserve", "milp", "homogeneous"])
def test_plans_identical_with_either_backend(monkeypatch, cluster: str, planner: str) -> None:
    trace = load_trace("azure-mix")
    stats = fit_request_types(trace, 4, 0).stats(trace)
    model = load_models().get("llama-2-70b")
    plans = []
    for backend in highs.BACKENDS:
        monkeypatch.setattr(highs, "default_backend", lambda b=backend: b)
        d = make_plan(parse_cluster(cluster), model, stats, planner).to_dict()
        d.pop("planner_seconds")
        plans.append(d)
    assert plans[0] == plans[1]
