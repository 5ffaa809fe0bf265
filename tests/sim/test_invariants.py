"""Simulator invariants: no request lost, KV never over-allocated, determinism, no shared state."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.sim.factories import make_sim, poisson_workload, run

from oserve.sim.batching import BatchingConfig, schedule_step
from oserve.sim.kv_blocks import BlockPool, KvInvariantError
from oserve.sim.request import Seq


def test_every_request_completes_or_is_dropped_with_a_reason():
    arrivals, inputs, outputs = poisson_workload(300, rate_rps=50.0, seed=2)
    inputs[5] = 5000  # longer than one replica's KV (200 blocks x 16 tokens)
    res = run(make_sim(num_replicas=2, kv_blocks=200, drain_s=5.0), arrivals, inputs, outputs)
    done = res.completed
    assert res.drop_reason[5] == "exceeds_kv_capacity"
    assert set(res.drop_reason[~done]) <= {"exceeds_kv_capacity", "unfinished_at_horizon"}
    assert (res.drop_reason[done] == "").all()
    assert (res.drop_reason == "unfinished_at_horizon").sum() > 0  # 5 s of drain is not enough
    assert res.summary()["dropped"] == (~done).sum()


def test_too_long_for_the_context_is_dropped_when_asked():
    sim = make_sim()
    sim.max_context_tokens = 1000
    res = run(sim, [0.0, 1.0], [900, 100], [200, 200])
    assert list(res.drop_reason) == ["exceeds_context", ""]


def test_kv_pressure_preempts_and_still_finishes_everything():
    arrivals, inputs, outputs = poisson_workload(200, rate_rps=100.0, seed=4, max_in=600, max_out=300)
    res = run(make_sim(kv_blocks=120, step_s=0.005), arrivals, inputs, outputs)
    assert res.completed.all()
    assert res.num_preemptions.sum() > 0
    assert res.replicas[0].peak_kv_frac <= 1.0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 300), st.integers(1, 100)), min_size=1, max_size=30),
       st.integers(20, 80), st.sampled_from(["chunked", "prefill-first"]), st.integers(1, 8))
def test_scheduler_never_over_allocates_blocks(requests, num_blocks, mode, max_seqs):
    """Step by step on random workloads, blocks held by sequences always equal the pool's used count."""
    pool = BlockPool(num_blocks, 16)
    cfg = BatchingConfig(mode, max_seqs, 256)
    waiting = __import__("collections").deque(
        Seq(i, 0, p, o) for i, (p, o) in enumerate(requests) if p + o - 1 <= num_blocks * 16)
    running: list[Seq] = []
    finished = 0
    total = len(waiting)
    for _ in range(20_000):
        if not waiting and not running:
            break
        batch = schedule_step(cfg, waiting, running, pool)
        assert sum(s.num_blocks for s in running) == pool.num_used <= pool.num_blocks
        assert all(s.num_blocks == 0 for s in waiting)
        assert len(running) <= max_seqs
        assert batch.prefill_tokens + len(batch.decode) <= max(256, batch.prefill_tokens)
        for seq, chunk in batch.prefill:
            seq.num_cached += chunk
            if seq.num_cached >= seq.prefill_target:
                seq.num_generated += 1
        for seq in batch.decode:
            seq.num_cached += 1
            seq.num_generated += 1
        for seq in [s for s in running if s.num_generated >= s.output_tokens]:
            pool.release(seq.num_blocks)
            seq.num_blocks = 0
            running.remove(seq)
            finished += 1
    assert finished == total


def test_block_pool_refuses_over_allocation():
    pool = BlockPool(4, 16)
    pool.allocate(4)
    with pytest.raises(KvInvariantError):
        pool.allocate(1)
    pool.release(4)
    with pytest.raises(KvInvariantError):
        pool.release(1)


def _sample_run(seed: int):
    arrivals, inputs, outputs = poisson_workload(400, rate_rps=30.0, seed=seed)
    types = np.arange(400) % 2
    sim = make_sim(num_replicas=3, kv_blocks=300, weights=((0.5, 0.3, 0.2), (0.0, 0.5, 0.5)),
                   dispatch="weighted-random", seed=seed)
    return sim, (arrivals, inputs, outputs, types)


def test_same_seed_same_result_and_two_simulations_do_not_interfere():
    sim_a, work_a = _sample_run(11)
    res_a = run(sim_a, *work_a)
    sim_b, work_b = _sample_run(11)
    sim_c, work_c = _sample_run(12)
    res_c = run(sim_c, *work_c)  # another simulation in between, in the same process
    res_b = run(sim_b, *work_b)
    np.testing.assert_array_equal(res_a.finish_s, res_b.finish_s)
    np.testing.assert_array_equal(res_a.replica_id, res_b.replica_id)
    assert not np.array_equal(res_a.replica_id, res_c.replica_id)


def test_plan_dispatch_is_respected():
    sim, (arrivals, inputs, outputs, types) = _sample_run(5)
    res = run(sim, arrivals, inputs, outputs, types)
    assert not np.any(res.replica_id[types == 1] == 0)  # type 1 has weight 0 on replica 0


@pytest.mark.parametrize("mode", ["chunked", "prefill-first"])
def test_decode_runs_equal_step_by_step_simulation(mode):
    """A decode run in one event gives the same times as one event per engine step."""
    from oserve.sim.step_timer import StepTimer  # noqa: F401  (protocol the fake implements)

    class AffineTimer:
        def step_s(self, tokens, n, sq, batch, ctx, max_chunk_tokens=0):
            return 0.004 + 2e-6 * tokens + 1e-9 * sq + 1e-4 * batch + 3e-8 * ctx

        def decode_line(self, batch):
            return (0.004 + 1e-4 * batch, 3e-8)

    arrivals, inputs, outputs = poisson_workload(300, rate_rps=6.0, seed=9)
    fast = run(make_sim(2, timer=AffineTimer(), kv_blocks=400, mode=mode), arrivals, inputs, outputs)
    slow = run(make_sim(2, timer=AffineTimer(), kv_blocks=400, mode=mode, decode_runs=False),
               arrivals, inputs, outputs)
    np.testing.assert_allclose(fast.finish_s, slow.finish_s, rtol=1e-9)
    np.testing.assert_allclose(fast.first_token_s, slow.first_token_s, rtol=1e-9)
    assert fast.num_preemptions.sum() == slow.num_preemptions.sum()
    assert sum(r.num_events for r in fast.replicas) < sum(r.num_events for r in slow.replicas) / 5


def test_reading_the_trace_in_chunks_changes_nothing(monkeypatch):
    arrivals, inputs, outputs = poisson_workload(300, rate_rps=80.0, seed=5)
    types = np.arange(300) % 2
    whole = run(make_sim(num_replicas=2, weights=((0.5, 0.5), (0.2, 0.8))), arrivals, inputs, outputs, types)
    monkeypatch.setattr("oserve.sim.records.CHUNK", 7)  # many chunk boundaries, one not aligned with n
    chunked = run(make_sim(num_replicas=2, weights=((0.5, 0.5), (0.2, 0.8))), arrivals, inputs, outputs,
                  types)
    for name in ("first_token_s", "finish_s", "replica_id", "num_preemptions", "drop_reason"):
        np.testing.assert_array_equal(getattr(chunked, name), getattr(whole, name))
    assert chunked.completed.all() and chunked.num_events == whole.num_events
