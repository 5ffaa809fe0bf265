"""The router's pure dispatch policy (shared by the simulator and the runtime)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from oserve.common.errors import ConfigError
from oserve.planner.dispatch_policy import (
    DISPATCH_POLICIES,
    Dispatcher,
    DispatchState,
    DispatchTable,
    LoadIndex,
    SpillInput,
    choose_replica,
)
from oserve.planner.spill_rule import ReplicaSpeed, SpillRule
from oserve.workload.slo import Slo

TABLE = DispatchTable(((0.5, 0.25, 0.25), (0.0, 0.0, 1.0)))


def _route(policy, types, outstanding=(0, 0, 0), rng=None):
    state, picks = DispatchState.initial(TABLE), []
    for t in types:
        r, state = choose_replica(TABLE, state, t, list(outstanding), policy, rng)
        picks.append(r)
    return picks


def test_round_robin_keeps_the_plan_fractions_exactly():
    picks = Counter(_route("round-robin", [0] * 400))
    assert picks == {0: 200, 1: 100, 2: 100}


def test_least_outstanding_fills_replicas_in_proportion_to_weight():
    state, outstanding = DispatchState.initial(TABLE), [0, 0, 0]
    for _ in range(400):  # requests that stay: outstanding counts grow with what was sent
        r, state = choose_replica(TABLE, state, 0, outstanding, "least-outstanding")
        outstanding[r] += 1
    assert outstanding == [200, 100, 100]


def test_ties_are_broken_by_round_robin_not_by_index():
    table = DispatchTable(((0.5, 0.5),))
    state, picks = DispatchState.initial(table), []
    for _ in range(4):
        r, state = choose_replica(table, state, 0, [0, 0], "least-outstanding")
        picks.append(r)
    assert picks == [0, 1, 0, 1]


def test_least_outstanding_avoids_a_loaded_replica():
    state = DispatchState.initial(TABLE)
    r, _ = choose_replica(TABLE, state, 0, [10, 0, 3], "least-outstanding")
    assert r == 1


def test_disallowed_replicas_are_never_chosen():
    assert set(_route("least-outstanding", [1] * 50, (0, 0, 9))) == {2}
    assert set(_route("weighted-random", [1] * 50, rng=np.random.default_rng(0))) == {2}


def test_weighted_random_is_reproducible_and_needs_a_generator():
    a = _route("weighted-random", [0] * 100, rng=np.random.default_rng(3))
    b = _route("weighted-random", [0] * 100, rng=np.random.default_rng(3))
    assert a == b
    with pytest.raises(ConfigError):
        _route("weighted-random", [0])


def test_state_is_not_mutated():
    state = DispatchState.initial(TABLE)
    choose_replica(TABLE, state, 0, [0, 0, 0])
    assert state == DispatchState.initial(TABLE)


def test_unknown_type_or_policy_is_a_config_error():
    with pytest.raises(ConfigError):
        choose_replica(TABLE, DispatchState.initial(TABLE), 5, [0, 0, 0])
    with pytest.raises(ConfigError):
        choose_replica(TABLE, DispatchState.initial(TABLE), 0, [0, 0, 0], "nope")


def test_spillover_leaves_the_plan_only_when_the_choice_is_queueing():
    state = DispatchState.initial(TABLE)
    r, _ = choose_replica(TABLE, state, 1, [5, 0, 3], "spillover", queued=[0, 0, 0])
    assert r == 2  # no queue: the plan's only replica for type 1
    r, _ = choose_replica(TABLE, state, 1, [5, 1, 3], "spillover", queued=[2, 0, 1])
    assert r == 1  # queued there: the least loaded replica with an empty queue
    r, _ = choose_replica(TABLE, state, 1, [5, 1, 3], "spillover", queued=[2, 1, 1])
    assert r == 2  # every queue busy: stay with the plan
    with pytest.raises(ConfigError):
        choose_replica(TABLE, state, 1, [0, 0, 0], "spillover")


def _random_table(rng, num_types, num_replicas):
    rows = []
    for _ in range(num_types):
        row = rng.random(num_replicas) * (rng.random(num_replicas) < 0.6)
        if rng.random() < 0.2:
            row[:] = 0.0  # a type the plan gives no replica: every replica allowed
        if rng.random() < 0.3:
            row = np.where(row > 0, 1.0, 0.0)  # equal shares: ties on load and on credit
        rows.append(row)
    return DispatchTable.from_fractions(rows)


@pytest.mark.parametrize("policy", DISPATCH_POLICIES)
@pytest.mark.parametrize("seed", range(6))
def test_in_place_dispatcher_makes_the_reference_choices(policy, seed):
    """The simulator's fast path: same choice at every request and same credits as choose_replica."""
    rng = np.random.default_rng(seed)
    num_types, num_replicas = int(rng.integers(1, 5)), int(rng.integers(1, 48))
    _check_against_reference(rng, policy, seed, _random_table(rng, num_types, num_replicas))


def test_load_index_tracks_the_least_load_and_its_ties():
    rng = np.random.default_rng(4)
    loads = rng.integers(0, 5, 40)
    index = LoadIndex(loads.tolist())
    for _ in range(2000):
        c = int(rng.integers(40))
        loads[c] = max(0, loads[c] + int(rng.integers(-3, 4)))
        index.move(c, int(loads[c]))
        assert index.least == loads.min()
        assert index.at_least() == set(np.flatnonzero(loads == loads.min()).tolist())


@pytest.mark.parametrize("policy", ["least-outstanding", "spillover", "round-robin"])
@pytest.mark.parametrize("num_replicas", [64, 257])
def test_in_place_dispatcher_on_large_equal_share_fleets(policy, num_replicas):
    """Large fleets where every type is spread evenly (what a homogeneous plan gives): the numpy path,
    where equal shares let the integer load stand for the key, still makes the reference choices."""
    rng = np.random.default_rng(num_replicas)
    rows = [np.ones(num_replicas), np.where(np.arange(num_replicas) % 3 == 0, 1.0, 0.0),
            rng.random(num_replicas)]
    _check_against_reference(rng, policy, 1, DispatchTable.from_fractions(rows))


def _check_against_reference(rng, policy, seed, table):
    num_types, num_replicas = table.num_types, table.num_replicas
    # slo-spill: replicas of three speeds (one the rule knows nothing of), a TTFT SLO some backlogs miss
    speeds = [ReplicaSpeed(2048, 8, 0.02, 0.001, 1e-4), ReplicaSpeed(512, 8, 0.01, 0.0005, 5e-5), None]
    rule = SpillRule(tuple(Slo(0.5, 0.1) for _ in range(num_types)),
                     tuple(speeds[r % 3] for r in range(num_replicas)))
    fast = Dispatcher(table, policy, np.random.default_rng(seed), rule)
    ref_rng, state = np.random.default_rng(seed), DispatchState.initial(table)
    outstanding = np.zeros(num_replicas, dtype=np.int64)
    queued = np.zeros(num_replicas, dtype=np.int64)
    backlog = np.zeros(num_replicas, dtype=np.int64)
    least = LoadIndex(outstanding)  # the counts grouped by value, as the simulator's router keeps them
    spilled = 0
    for _ in range(400):
        t = int(rng.integers(num_types))
        prompt = int(rng.integers(1, 4000))
        decoding = outstanding - np.minimum(queued, outstanding)
        spill = SpillInput(rule, prompt, backlog.tolist(), decoding.tolist())
        ref, state = choose_replica(table, state, t, outstanding.tolist(), policy, ref_rng,
                                    queued.tolist(), spill)
        if seed % 2:  # the caller's counts may be numpy arrays (with the LoadIndex) or lists
            assert fast.choose(t, outstanding, queued, prompt, backlog, decoding, least) == ref
        else:
            assert fast.choose(t, outstanding.tolist(), queued.tolist(), prompt, backlog.tolist(),
                               decoding.tolist()) == ref
        spilled += table.weights[t][ref] <= 1e-9 and any(w > 1e-9 for w in table.weights[t])
        backlog[ref] += prompt
        backlog[rng.random(num_replicas) < 0.2] = 0  # some replicas finish their prefills
        outstanding[ref] += 1
        queued[ref] += int(rng.random() < 0.5)
        done = rng.random(num_replicas) < 0.1  # some replicas finish or admit some of their requests
        outstanding[done] = np.maximum(0, outstanding[done] - 1)
        queued[:] = np.minimum(queued, outstanding) * (rng.random(num_replicas) < 0.8)
        for c, load in enumerate(outstanding.tolist()):
            least.move(c, load)
    assert fast.state() == state
    if policy == "slo-spill" and seed == 1:
        assert spilled > 0  # the rule did leave the plan in this run


def test_in_place_dispatcher_rejects_what_the_reference_rejects():
    with pytest.raises(ConfigError):
        Dispatcher(TABLE, "nope")
    with pytest.raises(ConfigError):
        Dispatcher(TABLE, "weighted-random")
    with pytest.raises(ConfigError):
        Dispatcher(TABLE, "least-outstanding").choose(5, np.zeros(3, dtype=np.int64))
    with pytest.raises(ConfigError):
        Dispatcher(TABLE, "spillover").choose(0, np.zeros(3, dtype=np.int64))


@pytest.mark.parametrize("num_replicas", [32, 128])
def test_count_form_credits_make_the_reference_choices_and_floats(num_replicas):
    """Equal shares over a power of two of replicas: the dispatcher keeps those types' credits as
    choice counts (exact: every float operation on such credits is). Over a long run, and after a call
    without the LoadIndex turns them back into floats midway, the choices and the final credits are
    choose_replica's, bit for bit."""
    rng = np.random.default_rng(num_replicas)
    table = DispatchTable.from_fractions([np.ones(num_replicas), np.ones(num_replicas)])
    fast, state = Dispatcher(table), DispatchState.initial(table)
    outstanding = np.zeros(num_replicas, dtype=np.int64)
    least = LoadIndex(outstanding)
    for i in range(3000):
        t = 1 if i == 1500 else int(rng.integers(2))
        # type 1 leaves the count form at request 1500 (a choice without the index), type 0 never
        got = fast.choose(t, outstanding, least=None if i == 1500 else least)
        ref, state = choose_replica(table, state, t, outstanding.tolist())
        assert got == ref
        outstanding[ref] += 1
        done = rng.random(num_replicas) < 0.05
        outstanding[done] = np.maximum(0, outstanding[done] - 1)
        for c, load in enumerate(outstanding.tolist()):
            least.move(c, load)
        if i == 1000:
            assert fast._chosen[0] is not None and fast._chosen[1] is not None  # the count form is used
    assert fast._chosen[0] is not None and fast._chosen[1] is None
    assert fast.state() == state
