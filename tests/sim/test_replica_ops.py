"""The public operations a deployment switch uses, on ReplicaSim and Simulation."""

from __future__ import annotations

import numpy as np
from tests.sim.factories import make_sim, run

from oserve.sim.batching import BatchingConfig
from oserve.sim.kv_blocks import BlockPool
from oserve.sim.replica import ReplicaSim
from oserve.sim.request import Seq
from oserve.sim.step_timer import ConstantStepTimer


def _replica(num_blocks: int = 100, max_seqs: int = 256) -> ReplicaSim:
    return ReplicaSim(0, ConstantStepTimer(0.01), BlockPool(num_blocks, 16),
                      BatchingConfig("chunked", max_seqs))


def _decoding(rep: ReplicaSim, n: int, output: int = 50) -> list[Seq]:
    """n sequences admitted and past their prefill (the replica then runs a decode run)."""
    seqs = [Seq(i, 0, 32, output) for i in range(n)]
    for s in seqs:
        rep.on_arrival(s, 0.0)
    while rep.batch.prefill:  # the prefill steps; then a decode run
        rep.on_step_end(rep.step_end_s)
    return seqs


def test_stop_admitting_hands_back_the_queue_and_nothing_else():
    rep = _replica(max_seqs=2)
    seqs = _decoding(rep, 2)
    late = Seq(9, 0, 32, 5)
    rep.on_arrival(late, rep.step_start_s)
    assert rep.stop_admitting() == [late]
    assert not rep.accepting and not rep.waiting and rep.running == seqs


def test_extract_cuts_the_run_and_releases_kv_at_the_step_boundary():
    rep = _replica()
    a, b = _decoding(rep, 2)
    run_end = rep.step_end_s
    assert rep.run_steps > 1
    t_mid = rep.step_start_s + 0.015  # inside the second step of the run
    new_end = rep.extract([a.req_id], t_mid)
    assert new_end is not None and new_end < run_end and rep.run_steps == 2
    used = rep.pool.num_used
    rep.on_step_end(new_end)
    (out,) = rep.take_extracted()
    assert out is a and a.num_blocks == 0 and rep.running == [b]
    assert rep.pool.num_used < used and rep.pool.num_used == b.num_blocks
    assert rep.take_extracted() == []


def test_adopt_keeps_the_kv_cache_when_it_fits_and_counts_a_preemption_when_not():
    src, dst = _replica(), _replica(num_blocks=4)
    (seq,) = _decoding(src, 1)
    src.extract([seq.req_id], src.step_start_s)
    src.on_step_end(src.step_end_s)
    src.take_extracted()
    cached = seq.num_cached
    roomy = _replica()
    roomy.adopt(seq, 1.0)
    assert roomy.running == [seq] and seq.num_cached == cached
    assert seq.num_blocks == roomy.pool.num_used > 0 and seq.num_preemptions == 0

    big = Seq(5, 0, 200, 10)  # 200 cached tokens need 13 blocks; dst has 4
    big.num_cached = big.prefill_target = 200
    big.num_generated = 1
    dst.adopt(big, 1.0)
    assert big.num_cached == 0 and big.prefill_target == 201  # recomputes prompt and output so far
    assert big.num_preemptions == 1 and dst.num_preemptions == 1


def test_release_for_recompute_is_a_preemption_of_the_source():
    src = _replica()
    (seq,) = _decoding(src, 1)
    src.extract([seq.req_id], src.step_start_s)
    src.on_step_end(src.step_end_s)
    src.take_extracted()
    src.release_for_recompute(seq)
    assert seq.num_cached == 0 and seq.num_preemptions == 1 and src.num_preemptions == 1
    assert src.pool.num_used == 0


def test_set_dispatch_routes_only_to_replicas_that_exist_and_accept():
    """Columns of replicas not started yet (id -1) are left out; they used to alias the last replica."""
    sim = make_sim(num_replicas=3)
    sim.replicas[1].stop_admitting()
    sim.set_dispatch([[0.2, 0.2, 0.2, 0.2, 0.2]], [0, 2, -1, 1, -1])
    assert sim.router.replica_ids == [0, 2]
    res = run(sim, np.linspace(0, 1, 40), [20] * 40, [5] * 40)
    assert set(res.replica_id) == {0, 2} and res.completed.all()
