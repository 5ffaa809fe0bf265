from dataclasses import replace

import pytest

from oserve.common.errors import ConfigError
from oserve.planner.api import build_plan
from oserve.planner.plan import Replica
from oserve.planner.problem import PlanningProblem
from oserve.switching import SwitchContext, SwitchParams, decide, deficit_rps
from oserve.workload.request_types import TypeStats

from .factories import cfg, placed

TYPES = (TypeStats("short", 300, 100, 600, 200, 100, 1.0),
         TypeStats("long", 3000, 400, 6000, 800, 100, 1.0))


def _fixed_planner(counts):
    """A planner that always proposes ``counts`` (for testing the decision alone)."""
    def planner(types, _current):
        return build_plan(PlanningProblem(planner.cluster, planner.cost, list(types)),
                          tuple(counts.get(c, 0) for c in PlanningProblem(
                              planner.cluster, planner.cost, list(types)).configs), "fixed", 0.0)
    return planner


def _ctx(cost, cluster, links, planner=None):
    if planner is not None:
        planner.cluster, planner.cost = cluster, cost
    return SwitchContext(cluster, cost, TYPES, links, planner)


def _capacity_rates(cost, cluster, counts, load):
    problem = PlanningProblem(cluster, cost, list(TYPES))
    scale = problem.scale(tuple(counts.get(c, 0) for c in problem.configs))
    return [t.rate_rps * scale * load for t in TYPES]


def test_deficit_is_zero_below_target_utilisation():
    assert deficit_rps(2.0, 10.0, 0.8) == 0.0
    assert deficit_rps(1.0, 10.0, 0.8) == pytest.approx(2.0)
    assert deficit_rps(0.0, 10.0, 0.8) == 10.0


def test_no_switch_when_the_gain_is_below_the_cost(cost13, cluster2, links2):
    current = placed({cfg(1): 16}, cluster2)
    rates = _capacity_rates(cost13, cluster2, {cfg(1): 16}, 1.05)  # a little overloaded
    ctx = _ctx(cost13, cluster2, links2, _fixed_planner({cfg(4): 4}))  # ~18% more capacity
    # TP1 -> TP4 only drops weights (each TP1 GPU holds the whole model): the cost is the restart
    slow = SwitchParams(transfer_mode="reload", horizon_s=60, min_gap_s=0, restart_overhead_s=30)
    d = decide(ctx, slow, current, None, 0.0, rates)
    assert d.scale_target > d.scale_current * 1.1  # the target is better...
    assert not d.switch and 0 < d.gain_requests <= 1.2 * d.cost_requests + 1  # ...but does not pay
    assert d.plan is not None and d.plan.replicas == current  # keeps serving, re-dispatched
    assert d.transfer.total_bytes == 0 and d.switch_s == pytest.approx(35.0)
    # the same gain over a longer horizon with a fast peer-to-peer transfer does pay
    fast = SwitchParams(transfer_mode="p2p", horizon_s=1800, min_gap_s=0)
    assert decide(ctx, fast, current, None, 0.0, rates).switch


def test_switch_when_the_gain_pays(cost13, cluster2, links2):
    current = placed({cfg(8): 1}, cluster2)  # half the cluster idle
    rates = _capacity_rates(cost13, cluster2, {cfg(8): 1}, 1.5)
    ctx = _ctx(cost13, cluster2, links2, _fixed_planner({cfg(4): 4}))
    d = decide(ctx, SwitchParams(min_gap_s=0, horizon_s=3600), current, None, 0.0, rates)
    assert d.switch and d.scale_target > d.scale_current
    assert d.gain_requests > 1.2 * d.cost_requests
    assert [r.gpus for r in d.plan.replicas] == [r.gpus for r in d.transition.target]
    for row in d.plan.dispatch:
        assert sum(row) == pytest.approx(1.0)


def test_minimum_gap_between_switches(cost13, cluster2, links2):
    current = placed({cfg(8): 1}, cluster2)
    rates = _capacity_rates(cost13, cluster2, {cfg(8): 1}, 1.5)
    ctx = _ctx(cost13, cluster2, links2, _fixed_planner({cfg(4): 4}))
    d = decide(ctx, SwitchParams(min_gap_s=300), current, 100.0, 200.0, rates)
    assert not d.switch and "minimum gap" in d.reason


def test_a_target_that_does_not_fit_memory_is_rejected(cost70, cluster2, links2):
    current = placed({cfg(4): 4}, cluster2)
    ctx = SwitchContext(cluster2, cost70, TYPES, links2,
                        lambda types, cur: _plan_with(cost70, cluster2, cur, cfg(1)))
    d = decide(ctx, SwitchParams(min_gap_s=0), current, None, 0.0, [5.0, 5.0])
    assert not d.switch and "memory" in d.reason


def _plan_with(cost, cluster, current, bad_cfg):
    problem = PlanningProblem(cluster, cost, list(TYPES))
    plan = build_plan(problem, tuple(current.get(c, 0) for c in problem.configs), "x", 0.0)
    r = plan.replicas[0]
    return replace(plan, replicas=(Replica(0, r.gpus[:1], bad_cfg),) + plan.replicas[1:])


def test_real_planner_keeps_a_good_current_deployment(cost13, cluster2, links2):
    ctx = _ctx(cost13, cluster2, links2)
    first = decide(ctx, SwitchParams(min_gap_s=0), placed({cfg(2): 8}, cluster2), None, 0.0, [1.0, 1.0])
    current = first.plan.replicas if first.switch else placed({cfg(2): 8}, cluster2)
    again = decide(ctx, SwitchParams(min_gap_s=0), current, 0.0, 1000.0, [1.0, 1.0])
    assert not again.switch


def test_bad_params_and_forecast_rejected(cost13, cluster2, links2):
    with pytest.raises(ConfigError):
        SwitchParams(transfer_mode="teleport")
    with pytest.raises(ConfigError):
        decide(_ctx(cost13, cluster2, links2), SwitchParams(), placed({cfg(2): 8}, cluster2), None,
               0.0, [1.0])
