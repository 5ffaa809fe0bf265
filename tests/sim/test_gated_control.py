"""The server's default control (drift gate before the cost-aware policy) in the simulator's loop: the
same ``switching.control_step`` the server's controller runs."""

from dataclasses import replace

import pytest

from oserve.forecast.baselines import LastValue
from oserve.planner.api import build_plan
from oserve.planner.problem import PlanningProblem
from oserve.sim.adaptive import AdaptiveSimulation
from oserve.sim.api import batching_config, request_type_ids
from oserve.sim.config import SimConfig
from oserve.switching import IoProfile, LinkModel, ReplanConfig, SwitchContext, SwitchParams

from .test_adaptive import setup  # noqa: F401 - the module fixture: one overloaded TP8 replica


@pytest.fixture(scope="module")
def planned_low(setup):  # noqa: F811
    """The same TP8 replica, planned for a third of the rates that arrive."""
    cost, cluster, trace, types, stats, initial = setup
    low = [replace(t, rate_rps=t.rate_rps / 3) for t in stats]
    problem = PlanningProblem(cluster, cost, low)
    tp8 = initial.replicas[0].config
    plan = build_plan(problem, tuple(1 if c == tp8 else 0 for c in problem.configs), "test", 0.0)
    return cost, cluster, trace, types, stats, plan


def _run(setup, gate):  # noqa: F811
    cost, cluster, trace, types, stats, initial = setup
    ctx = SwitchContext(cluster, cost, tuple(stats), LinkModel(cluster, IoProfile.h100()))
    params = SwitchParams(min_gap_s=30, horizon_s=300, transfer_mode="reload", drain_s=2.0,
                          restart_overhead_s=3.0)
    config = SimConfig(seed=0)
    sim = AdaptiveSimulation(ctx, params, initial, LastValue(), config, batching_config(cost, config),
                             control_interval_s=10.0, gate=gate)
    return sim.run(trace.arrival_s, trace.input_tokens, trace.output_tokens,
                   request_type_ids(trace, types))


def test_the_gate_opens_on_confirmed_drift_then_the_policy_decides(planned_low):
    gated = _run(planned_low, ReplanConfig(confirm_checks=3, cooldown_s=30.0))
    # about 3x the rates the plan was made for: drift at every check, the gate opens at the 3rd
    assert [r.reason for r in gated.timeline[:2]] == ["drift seen 1/3 checks", "drift seen 2/3 checks"]
    assert not gated.timeline[0].switched and not gated.timeline[1].switched
    # the 3rd check opens the gate and the policy prices a switch (whether it pays depends on the cost
    # model and planner; the gate decides only that it is asked)
    third = gated.timeline[2]
    assert third.time_s == pytest.approx(30.0) and third.reason.startswith("gain")
    assert all(not r.switched for r in gated.timeline[:2]) and gated.sim.completed.all()


def test_the_gate_only_sees_drift_from_the_plan(setup):  # noqa: F811
    """A plan made for the rates that arrive never drifts: the gate stays closed even though that plan
    (one TP8 replica) is overloaded by bursts, which the ungated policy switches on."""
    assert _run(setup, None).num_switches >= 1
    res = _run(setup, ReplanConfig(confirm_checks=3, cooldown_s=30.0))
    assert res.num_switches == 0 and res.sim.completed.all()
