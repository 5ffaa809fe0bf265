"""The verification's confirmation rule (``sim.verify``): a shortlisted plan that beat the tuned fleet on
the verification window replaces it only if it also beats it on a larger window by the search's
resolution; the paired search's decision on known knees, and the rule deciding a real shortlist."""

from __future__ import annotations

import pytest

from goodput_setup import goodput_setup
from oserve.planner.slo_planner import GoodputPlanner, candidate_plan
from oserve.sim.config import SimConfig
from oserve.sim.verify import CONFIRM_FACTOR, paired_decision, verify_shortlist


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
