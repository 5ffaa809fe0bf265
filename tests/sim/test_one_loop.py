"""One event loop: the adaptive run with switching disabled is the static simulation, request by request,
for every dispatch policy; and every dispatch policy works in a run that does switch."""

from __future__ import annotations

import numpy as np
import pytest

from oserve.costmodel.catalog import load_models, parse_cluster
from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.forecast.baselines import LastValue
from oserve.planner.api import build_plan
from oserve.planner.dispatch_policy import DISPATCH_POLICIES
from oserve.planner.problem import PlanningProblem
from oserve.sim.adaptive import AdaptiveSimulation
from oserve.sim.api import batching_config, request_type_ids, simulate_plan
from oserve.sim.config import SimConfig
from oserve.switching import IoProfile, LinkModel, SwitchContext, SwitchParams
from oserve.workload import fit_request_types, load_trace
from oserve.workload.slo import Slo

SLOS = (Slo(2.0, 0.1),) * 3  # per type (read by the slo-spill dispatch only)


@pytest.fixture(scope="module")
def setup():
    cost = CostModel(load_models().get("llama-2-7b"))
    cluster = parse_cluster("1x8xH100")
    trace = load_trace("azure-mix").window(0.0, 240.0).scaled(5.0)  # ~1,700 requests in 48 s
    types = fit_request_types(trace, 3, 0)
    problem = PlanningProblem(cluster, cost, types.stats(trace))
    mix = {ReplicaConfig("H100-80GB", 1): 2, ReplicaConfig("H100-80GB", 2): 1,
           ReplicaConfig("H100-80GB", 4): 1}  # heterogeneous: the types get different replica sets
    plan = build_plan(problem, tuple(mix.get(c, 0) for c in problem.configs), "test", 0.0)
    return cost, cluster, trace, types, plan


def _adaptive(setup, config, params, interval_s, redispatch=False):
    cost, cluster, trace, types, plan = setup
    ctx = SwitchContext(cluster, cost, tuple(types.stats(trace)), LinkModel(cluster, IoProfile.h100()))
    sim = AdaptiveSimulation(ctx, params, plan, LastValue(), config, batching_config(cost, config),
                             control_interval_s=interval_s, redispatch=redispatch, type_slos=SLOS)
    return sim.run(trace.arrival_s, trace.input_tokens, trace.output_tokens,
                   request_type_ids(trace, types))


def test_the_plan_routes_types_to_different_replicas(setup):
    allowed = {tuple(np.flatnonzero(np.asarray(row) > 1e-9)) for row in setup[4].dispatch}
    assert len(allowed) > 1


@pytest.mark.parametrize("policy", DISPATCH_POLICIES)
def test_adaptive_run_without_switching_is_the_static_simulation(setup, policy):
    cost, cluster, trace, types, plan = setup
    config = SimConfig(dispatch=policy, seed=7)
    static = simulate_plan(plan, trace, types, cost, config, type_slos=SLOS)
    never = SwitchParams(min_gain_requests=float("inf"))  # control runs and decides, never switches
    ares = _adaptive(setup, config, never, interval_s=10.0)
    assert ares.num_switches == 0 and len(ares.timeline) >= 4
    a = ares.sim
    for name in ("first_token_s", "finish_s", "replica_id", "num_preemptions", "drop_reason"):
        np.testing.assert_array_equal(getattr(a, name), getattr(static, name), err_msg=name)
    assert a.replicas == static.replicas
    assert a.end_s == static.end_s
    assert a.num_events == static.num_events + len(ares.timeline)  # plus one per control event
    assert a.in_system_area == pytest.approx(static.in_system_area, rel=1e-12)
    assert static.in_system_area > 0
    assert static.completed.mean() > 0.99


@pytest.mark.parametrize("policy", DISPATCH_POLICIES)
def test_every_dispatch_policy_works_in_a_run_that_switches(setup, policy):
    cost, cluster, trace, types, plan = setup
    blind = SwitchParams(min_gap_s=0.0, hysteresis=0.0, blind=True, drain_s=1.0, restart_overhead_s=1.0)
    ares = _adaptive(setup, SimConfig(dispatch=policy, seed=1), blind, interval_s=12.0, redispatch=True)
    res = ares.sim
    assert ares.num_switches >= 1
    assert res.completed.all()  # drained, migrated, re-queued or held: none lost
    assert res.in_system_area > 0
    assert (res.replica_id >= 0).all() and sum(r.num_requests for r in res.replicas) == len(res.arrival_s)


def test_a_hold_that_changes_no_share_leaves_the_run_static(setup):
    """Regression: each hold re-installed the (unchanged) table of identical replicas, which reset the
    router's round-robin credits and so its tie-breaks; the run then drifted from the static one."""
    cost, cluster, trace, types, _ = setup
    problem = PlanningProblem(cluster, cost, types.stats(trace))
    even = build_plan(problem, tuple(4 if c == ReplicaConfig("H100-80GB", 2) else 0 for c in problem.configs),
                      "test", 0.0)
    assert np.allclose(even.dispatch, 0.25)
    config = SimConfig(seed=3)
    static = simulate_plan(even, trace, types, cost, config)
    ctx = SwitchContext(cluster, cost, tuple(types.stats(trace)), LinkModel(cluster, IoProfile.h100()),
                        planner=lambda _types, _counts: even)  # the best plan is the running one: hold
    sim = AdaptiveSimulation(ctx, SwitchParams(), even, LastValue(), config, batching_config(cost, config),
                             control_interval_s=4.0, redispatch=True)
    ares = sim.run(trace.arrival_s, trace.input_tokens, trace.output_tokens, request_type_ids(trace, types))
    assert ares.num_switches == 0 and len(ares.timeline) >= 8
    assert all(r.reason == "the best deployment is the current one" for r in ares.timeline)
    for name in ("first_token_s", "finish_s", "replica_id"):
        np.testing.assert_array_equal(getattr(ares.sim, name), getattr(static, name), err_msg=name)
