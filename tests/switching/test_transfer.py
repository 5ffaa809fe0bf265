import itertools

import pytest

from oserve.costmodel.catalog import parse_cluster
from oserve.switching import (
    STORAGE,
    IoProfile,
    layout_for,
    plan_greedy,
    plan_transition,
    transfer_lower_bound,
    transfer_problem,
)
from oserve.switching.shards import WeightLayout

from .factories import cfg, placed

TRANSITIONS_70B = [
    ({cfg(8): 2}, {cfg(4): 4}),
    ({cfg(4): 4}, {cfg(8): 1, cfg(4): 2}),
    ({cfg(8): 2}, {cfg(4, 2): 2}),
    ({cfg(4): 4}, {cfg(2, 2): 4}),
    ({cfg(2, 2): 4}, {cfg(8): 2}),
    ({cfg(4): 2}, {cfg(4): 3, cfg(8): 0}),
    ({cfg(8): 1}, {cfg(2, 4): 2}),
]


def test_layout_shards_cover_the_model_exactly_once(cost70):
    model = cost70.model
    layout = WeightLayout(model, 8)
    for tp, pp in [(1, 1), (2, 4), (8, 1), (4, 2)]:
        (rep,) = placed({cfg(tp, pp): 1}, parse_cluster("1x8xH100"))
        held = list(itertools.chain.from_iterable(layout.gpu_chunks(rep).values()))
        assert len(held) == len(set(held)) == layout.num_layer_slots * 8
        assert sum(layout.chunk_bytes(c) for c in held) == pytest.approx(model.weight_bytes)


@pytest.mark.parametrize("before,after", TRANSITIONS_70B)
def test_every_needed_chunk_delivered_exactly_once(before, after, cost70, cluster2, links2):
    transition = plan_transition(placed(before, cluster2), after, cluster2)
    problem = transfer_problem(transition, cost70)
    plan = plan_greedy(problem, links2)
    layout = layout_for(cost70.model, transition.current, transition.target)
    old, new = layout.holdings(transition.current), layout.holdings(transition.target)
    got: dict[int, list] = {}
    for t in plan.transfers:
        assert t.src != t.dst
        got.setdefault(t.dst, []).extend(t.chunks)
        if t.src != STORAGE:  # the source really held what it sent
            assert set(t.chunks) <= old[t.src]
    for gpu, chunks in new.items():
        received = got.get(gpu, [])
        assert len(received) == len(set(received))  # exactly once
        assert set(received) | (old.get(gpu, frozenset()) & chunks) == chunks
        assert not set(received) & old.get(gpu, frozenset())
    assert set(got) <= set(new)


@pytest.mark.parametrize("before,after", TRANSITIONS_70B)
def test_lower_bound_is_below_greedy_and_respects_capacities(before, after, cost70, cluster2, links2):
    transition = plan_transition(placed(before, cluster2), after, cluster2)
    problem = transfer_problem(transition, cost70)
    greedy = plan_greedy(problem, links2)
    bound = transfer_lower_bound(problem, links2)
    assert bound.duration_s <= greedy.duration_s * (1 + 1e-6) + 1e-9
    for link, b in bound.link_bytes.items():
        assert b <= links2.capacity_bytes_s(link) * bound.duration_s * (1 + 1e-6) + 1.0
    # no plan beats the receive capacity of the busiest destination
    for dst, chunks in problem.needs.items():
        need = sum(problem.layout.chunk_bytes(c) for c in chunks)
        recv = sum(links2.capacity_bytes_s((k, dst)) for k in ("nvlink_recv", "nic_recv", "h2d"))
        assert bound.duration_s >= need / recv * (1 - 1e-6)


def test_same_node_reshard_uses_nvlink_only(cost70, cluster2, links2):
    transition = plan_transition(placed({cfg(8): 2}, cluster2), {cfg(4): 4}, cluster2)
    plan = plan_greedy(transfer_problem(transition, cost70), links2)
    kinds = {k for (k, _) in plan.link_bytes}
    assert kinds == {"nvlink_send", "nvlink_recv"}
    assert plan.duration_s < 1.0


def test_reload_uses_storage_and_is_much_slower(cost70, cluster2, links2):
    transition = plan_transition(placed({cfg(8): 2}, cluster2), {cfg(4): 4}, cluster2)
    problem = transfer_problem(transition, cost70)
    reload = plan_greedy(problem, links2, use_peers=False)
    assert all(t.src == STORAGE for t in reload.transfers)
    per_node = max(b for (k, _), b in reload.link_bytes.items() if k == "disk")
    assert reload.duration_s == pytest.approx(per_node / (IoProfile.h100().disk_read_gbps * 1e9))
    assert reload.duration_s > 20 * plan_greedy(problem, links2).duration_s


def test_a_new_model_copy_with_no_holder_comes_from_storage(cost13, cluster2, links2):
    transition = plan_transition((), {cfg(2): 1}, cluster2)
    plan = plan_greedy(transfer_problem(transition, cost13), links2)
    assert {t.src for t in plan.transfers} == {STORAGE}
    assert plan.total_bytes == pytest.approx(cost13.model.weight_bytes)


def test_gpus_too_full_for_old_and_new_only_offer_what_they_keep(cost70, cluster2):
    # TP8 -> TP2: 17.5 GB old + 69 GB new does not fit one H100 beside the reserve
    transition = plan_transition(placed({cfg(8): 2}, cluster2), {cfg(2): 8}, cluster2)
    problem = transfer_problem(transition, cost70)
    layout = problem.layout
    old, new = layout.holdings(transition.current), layout.holdings(transition.target)
    for chunk, holders in problem.holders.items():
        for h in holders:
            assert chunk in old[h] and chunk in new[h]


@pytest.mark.parametrize("before,after", TRANSITIONS_70B)
def test_earliest_finish_rule_is_exact_once_and_near_the_bound(before, after, cost70, cluster2, links2):
    transition = plan_transition(placed(before, cluster2), after, cluster2)
    problem = transfer_problem(transition, cost70)
    plan = plan_greedy(problem, links2, rule="earliest-finish")
    got: dict[int, list] = {}
    for t in plan.transfers:
        got.setdefault(t.dst, []).extend(t.chunks)
    assert {d: sorted(c) for d, c in got.items()} == {d: sorted(c) for d, c in problem.needs.items()}
    bound = transfer_lower_bound(problem, links2)
    assert bound.duration_s * (1 - 1e-6) <= plan.duration_s <= bound.duration_s * 1.1 + 1e-6
