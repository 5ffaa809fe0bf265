"""The verification's confirmation rule (``sim.verify``): a shortlisted plan that beat the tuned fleet on
the verification window replaces it only if it also beats it on a larger window by the search's
resolution; the paired search's decision on known knees, and the rule deciding a real shortlist."""

from __future__ import annotations

import pytest

from goodput_setup import goodput_setup
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.plan import DECODE, PREFILL, Plan, Replica
from oserve.planner.slo_planner import GoodputPlanner, candidate_plan
from oserve.sim.config import SimConfig
from oserve.sim.goodput import GoodputResult
from oserve.sim.verify import (
    CONFIRM_FACTOR,
    Confirmation,
    colocated_first,
    decide,
    paired_decision,
    verify_shortlist,
)


def knees(baseline: float, challenger: float):
    """Test double of two simulated fleets: each meets the target up to its knee. Counts the probes."""
    calls = {"baseline": 0, "challenger": 0}

    def b(scale: float) -> bool:
        calls["baseline"] += 1
        return scale <= baseline

    def c(scale: float) -> bool:
        calls["challenger"] += 1
        return scale <= challenger

    return b, c, calls


@pytest.mark.parametrize("start", [0.3, 1.0, 3.0])
def test_a_clearly_better_challenger_is_confirmed_in_a_few_probes(start):
    b, c, calls = knees(1.0, 1.3)
    confirmed, lo, bar = paired_decision(b, c, start, 0.03)
    assert confirmed and bar > 1.0 and bar <= 1.3  # it met the target where the baseline misses
    assert lo <= 1.0
    if start == 1.0:
        assert calls["baseline"] + calls["challenger"] <= 4


@pytest.mark.parametrize("ratio", [0.8, 0.96, 0.999])
def test_a_challenger_no_better_than_the_baseline_is_rejected(ratio):
    """The challenger is probed only where the baseline misses: one whose knee is at or below the
    baseline's never passes there, so the tuned fleet stays, whatever the start."""
    for start in (0.5, 1.0, 2.0):
        b, c, _ = knees(1.0, ratio)
        confirmed, lo, bar = paired_decision(b, c, start, 0.03)
        assert not confirmed
        assert 1.0 / 1.03 <= lo <= 1.0  # the baseline's boundary, bisected to the tolerance
        assert bar > 1.0


@pytest.mark.parametrize("ratio", [1.031, 1.07])
def test_beating_the_baseline_by_the_resolution_is_enough(ratio):
    """At convergence the challenger's bar is at most the baseline's passing scale times 1.03, so a knee
    at least 3% above the baseline's is always confirmed (between 1.00x and 1.03x: either way)."""
    for start in (0.5, 1.0, 2.0):
        b, c, _ = knees(1.0, ratio)
        confirmed, _, bar = paired_decision(b, c, start, 0.03)
        assert confirmed and 1.0 < bar <= ratio


def test_a_baseline_that_always_meets_the_target_stays():
    b, c, _ = knees(1e9, 1e9)
    assert paired_decision(b, c, 1.0, 0.03, max_probes=5) == (False, pytest.approx(1.25 ** 4), 0.0)


@pytest.fixture(scope="module")
def setup():
    cost, cluster, prepared, slo, workload = goodput_setup()
    return cost, prepared, slo, GoodputPlanner(cluster, cost, prepared.stats, workload)


def test_the_rule_decides_a_real_shortlist(setup):
    """A worse fleet in the baseline's seat, a better one after it: the better one wins the verification
    window and the larger window confirms it; the confirmation is recorded. With the order as the
    planner makes it (tuned fleet first), nothing is re-checked."""
    cost, prepared, slo, gp = setup
    tuned = gp.homogeneous_tuned()
    best = candidate_plan(tuned[0], cost, prepared.stats, "goodput", "oserve", 0.0)
    worst = candidate_plan(tuned[-1], cost, prepared.stats, "goodput", "oserve", 0.0)
    config = SimConfig(drain_s=120.0)
    rev = verify_shortlist([worst, best], prepared, cost, config, slo, max_requests=400)
    assert rev.plan.describe() == best.describe()
    conf = rev.confirmation
    assert conf is not None and conf.confirmed and conf.challenger == best.describe()
    assert conf.requests == CONFIRM_FACTOR * 400 and conf.probes >= 2
    assert conf.probed_scale > conf.baseline_scale
    assert rev.to_dict()["confirmation"]["confirmed"] is True
    ver = verify_shortlist([best, worst], prepared, cost, config, slo, max_requests=400)
    assert ver.confirmation is None and ver.plan.describe() == best.describe()
    # the verification window is the whole trace: nothing larger to confirm on
    whole = verify_shortlist([worst, best], prepared, cost, config, slo, max_requests=len(prepared.trace))
    assert whole.confirmation is None and whole.plan.describe() == best.describe()


# ---- a disaggregated winner against the best colocated plan (``decide``) -------------------------------


def _plan(replicas: tuple[Replica, ...], window_scale: float | None) -> Plan:
    """Test double of a verified plan: only its deployment and its simulated scale on the window matter."""
    n = len(replicas)
    return Plan("llama-2-70b", replicas, ("t0",), (1.0,), ((1.0,),) * n,
                (tuple(0.0 if r.role == DECODE else 1.0 for r in replicas),), 1.0, (0.5,) * n, (), "test",
                simulated_goodput_scale=window_scale)


H1, H2 = ReplicaConfig("H100-80GB", tp=4), ReplicaConfig("H100-80GB", tp=2, pp=2)
TUNED = (Replica(0, (0, 1, 2, 3), H1), Replica(1, (4, 5, 6, 7), H1))
SEARCHED = (Replica(0, (0, 1, 2, 3), H2), Replica(1, (4, 5, 6, 7), H1))
GROUP = (Replica(0, (0, 1, 2, 3), H2, PREFILL, 0), Replica(1, (4, 5, 6, 7), H1, DECODE, 0))


def _decide(window: dict, larger: dict | None):
    """``decide`` on three verified plans (tuned fleet, searched colocated plan, group) with their scales
    on the window, re-checked on a larger window where each meets the target up to its knee in
    ``larger`` (None: no larger window). Returns (the winner's deployment, the two re-checks, probes)."""
    checked = [_plan(d, window[name]) for name, d in (("tuned", TUNED), ("searched", SEARCHED),
                                                       ("group", GROUP))]
    knee = {p.describe(): larger[name] for p, name in zip(checked, ("tuned", "searched", "group"))} \
        if larger else {}
    calls = []

    def recheck(baseline: Plan, challenger: Plan) -> Confirmation | None:
        if larger is None:
            return None
        calls.append((baseline.describe(), challenger.describe()))
        ok, lo, bar = paired_decision(lambda x: x <= knee[baseline.describe()],
                                      lambda x: x <= knee[challenger.describe()], 1.0, 0.03)
        return Confirmation(2000, challenger.describe(), lo, bar, ok, baseline=baseline.describe())

    win, conf, group_conf = decide(checked, recheck)
    names = {p.describe(): name for p, name in zip(checked, ("tuned", "searched", "group"))}
    return names[checked[win].describe()], conf, group_conf, [(names[a], names[b]) for a, b in calls]


def test_a_group_the_window_flatters_loses_to_the_best_colocated_plan():
    """16-GPU azure-conv's case: the group beats both colocated plans on the window and the tuned fleet on
    the larger window too, but not the searched colocated plan: the colocated plan stays."""
    win, conf, group_conf, calls = _decide({"tuned": 1.0, "searched": 1.1, "group": 1.15},
                                           {"tuned": 1.0, "searched": 1.1, "group": 1.06})
    assert win == "searched"
    assert calls == [("tuned", "searched"), ("searched", "group")]
    assert conf.confirmed and not group_conf.confirmed
    assert group_conf.baseline == _plan(SEARCHED, None).describe()
    assert group_conf.baseline_scale <= 1.1 < group_conf.probed_scale


@pytest.mark.parametrize("knee", [1.15, 1.3])
def test_a_group_better_than_the_best_colocated_plan_by_the_resolution_wins(knee):
    win, conf, group_conf, _ = _decide({"tuned": 1.0, "searched": 1.1, "group": 1.2},
                                       {"tuned": 1.0, "searched": 1.1, "group": knee})
    assert win == "group" and conf.confirmed and group_conf.confirmed


def test_a_group_is_rechecked_against_the_tuned_fleet_when_the_colocated_winner_is_rejected():
    """The searched plan fails its re-check, so the colocated choice is the tuned fleet: the group must
    beat that one (here it does not by the resolution: the tuned fleet stays)."""
    win, conf, group_conf, calls = _decide({"tuned": 1.0, "searched": 1.1, "group": 1.2},
                                           {"tuned": 1.0, "searched": 0.95, "group": 1.01})
    assert win == "tuned" and not conf.confirmed and not group_conf.confirmed
    assert calls == [("tuned", "searched"), ("tuned", "group")]


def test_with_the_tuned_fleet_best_colocated_the_group_is_rechecked_once():
    win, conf, group_conf, calls = _decide({"tuned": 1.1, "searched": None, "group": 1.2},
                                           {"tuned": 1.1, "searched": 1.0, "group": 1.3})
    assert win == "group" and conf is None and group_conf.confirmed
    assert calls == [("tuned", "group")]


def test_without_a_larger_window_the_windows_decision_stands():
    win, conf, group_conf, _ = _decide({"tuned": 1.0, "searched": 1.1, "group": 1.2}, None)
    assert win == "group" and conf is None and group_conf is None


def test_colocated_plans_are_verified_before_groups():
    """A group is pruned against the best colocated plan, never the reverse; a tie goes to the colocated
    plan (the earlier one)."""
    tuned, searched, group = (_plan(d, None) for d in (TUNED, SEARCHED, GROUP))
    assert colocated_first([tuned, group, searched]) == [tuned, searched, group]
    checked = [_plan(TUNED, 1.0), _plan(SEARCHED, 1.2), _plan(GROUP, 1.2)]
    assert decide(checked, lambda b, c: None)[0] == 1


def test_verify_shortlist_keeps_the_colocated_plan_a_flattered_group_does_not_beat(monkeypatch):
    """The whole verification with the simulator replaced by a test double of known knees per window
    (400 requests: the verification's, 800: the confirmation's), the shortlist in the planner's order
    (tuned fleet, then best predicted: the group before the searched plan). The group wins the window and
    beats the tuned fleet on the larger one (1.06 against 1.0), but not the searched plan (1.1)."""
    from oserve.sim import verify

    prepared = goodput_setup()[2]
    plans = [_plan(d, None) for d in (TUNED, GROUP, SEARCHED)]
    knees = {400: dict(zip((p.describe() for p in plans), (1.0, 1.15, 1.1))),
             800: dict(zip((p.describe() for p in plans), (1.0, 1.06, 1.1)))}

    def simulated(plan, trace, *args, floor=0.0, **kwargs) -> GoodputResult:
        knee = knees[len(trace.trace)][plan.describe()]
        return GoodputResult(0.0, 0.9, pruned=True) if floor > knee else GoodputResult(knee, 0.9)

    monkeypatch.setattr(verify, "plan_goodput", simulated)
    ver = verify_shortlist(plans, prepared, None, SimConfig(), None, max_requests=400)
    assert [p.simulated_goodput_scale for p in ver.candidates] == [1.0, 1.1, 1.15]  # colocated first
    assert ver.plan.describe() == plans[2].describe()
    assert ver.confirmation.confirmed and not ver.group_confirmation.confirmed
    assert ver.to_dict()["group_confirmation"]["baseline"] == plans[2].describe()
