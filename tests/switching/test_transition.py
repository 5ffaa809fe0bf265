from oserve.switching import counts_of, plan_transition

from .factories import cfg, placed


def test_unchanged_counts_are_a_noop(cluster2):
    current = placed({cfg(4): 2, cfg(2): 4}, cluster2)
    t = plan_transition(current, {cfg(4): 2, cfg(2): 4}, cluster2)
    assert t.is_noop and t.moved_gpus == 0


def test_kept_replicas_stay_on_their_gpus_and_targets_do_not_overlap(cluster2):
    current = placed({cfg(4): 4}, cluster2)
    t = plan_transition(current, {cfg(4): 2, cfg(2): 4}, cluster2)
    assert len(t.kept) == 2
    old = {r.replica_id: r for r in current}
    new = {r.replica_id: r for r in t.target}
    for a, b in t.kept:
        assert old[a].gpus == new[b].gpus and old[a].config == new[b].config
    gpus = [g for r in t.target for g in r.gpus]
    assert len(gpus) == len(set(gpus))
    assert counts_of(t.target) == {cfg(4): 2, cfg(2): 4}
    assert t.moved_gpus == 8 and len(t.stopped) == 2


def test_fragmented_kept_replicas_fall_back_to_a_fresh_packing(cluster2):
    # two TP4 replicas on different nodes leave 4+4 free GPUs: a TP8 must repack
    current = placed({cfg(4): 4}, cluster2)
    current = tuple(r for r in current if r.replica_id in (0, 2))
    t = plan_transition(current, {cfg(8): 1, cfg(4): 2}, cluster2)
    assert counts_of(t.target) == {cfg(8): 1, cfg(4): 2}
    gpus = [g for r in t.target for g in r.gpus]
    assert len(gpus) == len(set(gpus)) == 16


def test_transition_to_a_placed_target_keeps_replicas_in_place():
    from oserve.planner.plan import Replica
    from oserve.switching import transition_to

    current = (Replica(0, (0,), cfg(1)), Replica(1, (1,), cfg(1)), Replica(2, (2, 3), cfg(2)))
    target = (Replica(0, (2, 3), cfg(2)), Replica(1, (1, 4), cfg(2)), Replica(2, (0,), cfg(1)))
    t = transition_to(current, target)
    assert sorted(t.kept) == [(0, 2), (2, 0)]
    assert [r.replica_id for r in t.stopped] == [1] and [r.replica_id for r in t.started] == [1]


def test_a_change_of_engine_settings_alone_restarts_in_place(cluster2):
    """4 TP4 replicas, one of them to a 512-token budget: three stay, the fourth is retuned on its own
    GPUs (its weights stay), nothing else moves."""
    from .factories import cfg, placed

    current = placed({cfg(4): 4}, cluster2)
    tr = plan_transition(current, {cfg(4): 3, cfg(4).with_engine(512): 1}, cluster2)
    assert len(tr.kept) == 3 and len(tr.retuned) == 1
    old, new = tr.retuned[0]
    assert old.gpus == new.gpus and new.config == cfg(4).with_engine(512)
    assert {r.gpus for r in tr.target} == {r.gpus for r in current}
