"""The control step shared by the simulator and the server: gate, then the cost-aware policy."""

import pytest

from oserve.switching import ControlPolicy, ReplanConfig, SwitchContext, SwitchParams, control_step
from oserve.switching.policy import decide

from .factories import cfg, placed
from .test_policy import TYPES, _capacity_rates, _ctx, _fixed_planner


@pytest.fixture
def overloaded(cost13, cluster2, links2):
    """Half the cluster idle, 1.5x the load it carries, and a planner proposing 4x TP4."""
    current = placed({cfg(8): 1}, cluster2)
    rates = _capacity_rates(cost13, cluster2, {cfg(8): 1}, 1.5)
    return _ctx(cost13, cluster2, links2, _fixed_planner({cfg(4): 4})), current, rates


def test_without_a_gate_the_step_is_the_policy(overloaded):
    ctx, current, rates = overloaded
    params = SwitchParams(min_gap_s=0, horizon_s=3600)
    step = control_step(ControlPolicy(ctx, params), current, [t.rate_rps for t in TYPES], rates, None,
                        0.0)
    direct = decide(ctx, params, current, None, 0.0, rates)
    assert step.decision.switch and direct.switch and step.gate is None
    assert step.decision.transition == direct.transition and step.decision.reason == direct.reason
    assert step.decision.plan.replicas == step.decision.transition.target


def test_a_closed_gate_holds_without_replanning(overloaded):
    ctx, current, rates = overloaded
    calls = []
    planner = ctx.planner

    def counting(types, current_counts):
        calls.append(1)
        return planner(types, current_counts)

    ctx = SwitchContext(ctx.cluster, ctx.cost, ctx.type_template, ctx.links, counting)
    policy = ControlPolicy(ctx, SwitchParams(min_gap_s=0, horizon_s=3600),
                           gate=ReplanConfig(confirm_checks=2, cooldown_s=0.0))
    planned = rates  # the plan was made for what is measured: no drift
    step = control_step(policy, current, planned, rates, None, 0.0)
    assert not step.decision.switch and step.decision.plan is None and not calls
    assert step.gate is not None and step.gate.reason == "within hysteresis band"
    # the plan was made for half of what now arrives: the gate needs 2 checks, then the policy is
    # asked (and its gain pays)
    half = [r / 2 for r in rates]
    first = control_step(policy, current, half, rates, None, 10.0)
    assert not first.decision.switch and first.num_drifted_checks == 1 and not calls
    second = control_step(policy, current, half, rates, None, 20.0, first.num_drifted_checks)
    assert calls and second.gate.is_open and second.decision.switch
    assert second.volume_ratio == pytest.approx(2.0)


def test_no_traffic_holds(overloaded):
    ctx, current, _ = overloaded
    step = control_step(ControlPolicy(ctx, min_total_rps=0.05), current, (1.0, 1.0), (0.0, 0.01), None,
                        0.0)
    assert not step.decision.switch and step.decision.reason == "too little traffic"
