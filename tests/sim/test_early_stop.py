"""Early stop of goodput probes (``sim.early_stop``): the search decides exactly as with full simulations,
and a probe that must fail stops before the end of the trace."""

from __future__ import annotations

import numpy as np
import pytest
from tests.sim.factories import make_sim, poisson_workload

from goodput_setup import goodput_setup
from oserve.costmodel.catalog import load_gpus, load_models, parse_cluster
from oserve.costmodel.cost_model import CostModel
from oserve.planner.slo_planner import GoodputPlanner, candidate_plan
from oserve.sim.config import SimConfig
from oserve.sim.early_stop import MissBudget, allowed_misses
from oserve.sim.experiment import plan_for, prepare_trace
from oserve.sim.goodput import plan_goodput
from oserve.sim.metrics import slo_attainment
from oserve.sim.verify import verify_shortlist
from oserve.workload.slo import slo_from_flags


@pytest.mark.parametrize("target", [0.5, 0.9, 0.95, 0.99, 0.999, 1.0])
def test_allowed_misses_is_the_boundary_of_the_attainment_comparison(target):
    for n in range(1, 400):
        m = allowed_misses(n, target)
        assert (n - m) / n >= target
        assert m == n or (n - m - 1) / n < target


@pytest.fixture(scope="module")
def model():
    cost = CostModel(load_models().get("llama-2-70b"))
    return cost, parse_cluster("1x8xH100-80GB", load_gpus())


def same_search(full, early) -> None:
    """Same probes, same pass/fail, same goodput; the passing probes' results complete and identical."""
    assert [p.scale for p in early.probes] == [p.scale for p in full.probes]
    assert [p.ok for p in early.probes] == [p.ok for p in full.probes]
    assert early.scale == full.scale and early.pruned == full.pruned
    for pf, pe in zip(full.probes, early.probes):
        assert not pf.partial
        if pe.ok:
            assert not pe.partial and pe.attainment == pf.attainment
    if full.best is not None:
        assert early.best is not None and "stopped_early_s" not in early.best.meta
        np.testing.assert_array_equal(early.best.finish_s, full.best.finish_s)
        np.testing.assert_array_equal(early.best.first_token_s, full.best.first_token_s)


@pytest.mark.parametrize("trace,window,slo_name,dispatch", [
    ("azure-conv", (0.0, 60.0), "loose", "least-outstanding"),
    ("azure-conv", (0.0, 60.0), "tight", "weighted-random"),
    ("azure-code", (0.0, 60.0), "loose", "slo-spill"),
    ("azure-mix", (0.0, 40.0), "tight", "spillover"),
])
def test_the_early_stopping_search_decides_as_the_full_one(model, trace, window, slo_name, dispatch):
    cost, cluster = model
    prepared = prepare_trace(trace, cost, window_s=window)
    slo = slo_from_flags(slo_name, None, None, None)
    plan = plan_for(cluster, cost, prepared, "default")
    config = SimConfig(dispatch=dispatch, drain_s=120.0)
    full = plan_goodput(plan, prepared, cost, config, slo, early_stop=False)
    early = plan_goodput(plan, prepared, cost, config, slo)
    same_search(full, early)
    assert any(p.partial for p in early.probes)  # the overloaded probes were cut
    stopped = [d for d in early.to_dict(prepared.types.k)["probes"] if d["stopped_early"]]
    assert stopped and all(d["overall"] is None and d["per_type"] is None and not d["ok"]
                           for d in stopped)
    # a floor above the goodput: the one probe there fails, pruned either way
    high = plan_goodput(plan, prepared, cost, config, slo, floor=2 * full.scale, max_probes=1)
    assert high.pruned and high.probes[0].partial


def test_the_verification_and_its_confirmation_decide_as_with_full_probes():
    """The confirmation path (tests/sim/test_verify_confirm.py's shortlist, the tuned fleet last):
    the winner, every candidate's simulated scale and the confirmation are the same."""
    cost, cluster, prepared, slo, workload = goodput_setup()
    gp = GoodputPlanner(cluster, cost, prepared.stats, workload)
    tuned = gp.homogeneous_tuned()
    plans = [candidate_plan(c, cost, prepared.stats, "goodput", "oserve", 0.0) for c in tuned]
    config = SimConfig(drain_s=120.0)
    confirmed = []
    for shortlist in ([plans[-1], plans[0]], [plans[0], plans[-1]], plans[::-1][:3]):
        full = verify_shortlist(shortlist, prepared, cost, config, slo, max_requests=400, early_stop=False)
        early = verify_shortlist(shortlist, prepared, cost, config, slo, max_requests=400)
        assert early.to_dict() == full.to_dict()
        assert early.plan.describe() == full.plan.describe()
        assert early.confirmation == full.confirmation
        confirmed.append(full.confirmation is not None)
    assert confirmed[0] and not confirmed[1]  # the tuned fleet last: re-checked on the larger window


def test_a_probe_that_must_fail_stops_before_the_end():
    """Twice the load one replica serves: the budget stops the run once a type's misses are more than
    10% of its requests; the full run indeed fails, and a budget on a passing load changes nothing."""
    arrivals, inputs, outputs = poisson_workload(600, 40.0, seed=3, max_in=800, max_out=100)
    types = (np.arange(600) % 2).astype(np.int64)
    ttft, tpot = np.full(600, 1.0), np.full(600, 0.05)

    def simulate(scale: float, budget: MissBudget | None):
        sim = make_sim(step_s=0.02, max_num_seqs=16, drain_s=30.0, weights=((1.0,), (1.0,)))
        return sim.run(arrivals / scale, inputs, outputs, types, budget=budget)

    full = simulate(1.0, None)
    assert not slo_attainment(full, ttft, tpot, 2).meets(0.9)
    budget = MissBudget(types, ttft, tpot, 0.9, 2)
    early = simulate(1.0, budget)
    assert early.meta["stopped_early_s"] < full.end_s and budget.num_missed > 0.1 * 300
    assert early.num_events < full.num_events / 2
    assert not slo_attainment(early, ttft, tpot, 2).meets(0.9)

    light = simulate(0.05, None)
    assert slo_attainment(light, ttft, tpot, 2).meets(0.9)
    kept = simulate(0.05, MissBudget(types, ttft, tpot, 0.9, 2))
    assert "stopped_early_s" not in kept.meta and kept.num_events == light.num_events
    np.testing.assert_array_equal(kept.finish_s, light.finish_s)


def test_a_disaggregated_plan_searches_the_same():
    """First tokens on prefill replicas, completions on decode replicas: the same decisions."""
    from oserve.costmodel.replica_config import ReplicaConfig
    from oserve.planner.plan import DECODE, PREFILL, Plan, Replica

    cost = CostModel(load_models().get("llama-3-8b"))
    cluster = parse_cluster("1x8xH100-80GB", load_gpus())
    h1 = ReplicaConfig("H100-80GB")
    replicas = (Replica(0, (0,), h1, PREFILL, 0), Replica(1, (1,), h1, DECODE, 0))
    plan = Plan("llama-3-8b", replicas, ("t",), (1.0,), ((1.0,), (1.0,)), ((1.0, 0.0),), 1.0,
                (0.0, 0.0), (), "hand", cluster=cluster.describe())
    prepared = prepare_trace("azure-conv", cost, num_types=1, window_s=(0.0, 60.0))
    slo = slo_from_flags("loose", None, None, None)
    config = SimConfig(drain_s=120.0)
    full = plan_goodput(plan, prepared, cost, config, slo, early_stop=False)
    early = plan_goodput(plan, prepared, cost, config, slo)
    same_search(full, early)
    assert full.scale > 0 and any(p.partial for p in early.probes)
