"""The DecodeSet fast path gives exactly the reference scheduler's simulation (sim/decode_set.py)."""

from __future__ import annotations

import numpy as np
import pytest
from tests.sim.factories import make_sim, poisson_workload, run

from oserve.costmodel.catalog import load_models
from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.sim.batching import BatchingConfig
from oserve.sim.decode_set import DecodeSet
from oserve.sim.kv_blocks import BlockPool
from oserve.sim.replica import ReplicaSim
from oserve.sim.request import Seq
from oserve.sim.step_timer import ConstantStepTimer, CostModelStepTimer

ARRAYS = ("first_token_s", "finish_s", "replica_id", "num_preemptions", "drop_reason")
STATS = ("busy_s", "peak_kv_frac", "num_steps", "num_events", "num_preemptions", "num_requests",
         "prefill_tokens", "decode_tokens")


def _timer() -> CostModelStepTimer:
    """Real step times: they depend on the decode context, so a wrong context total shows."""
    return CostModelStepTimer(CostModel(load_models().get("llama-2-13b")), ReplicaConfig("H100-80GB", 1))


def _both(workload, **kwargs):
    out = []
    for fast in (True, False):
        sim = make_sim(timer=_timer(), **kwargs)
        for rep in sim.replicas:
            rep.fast = fast and rep.batching.mode == "chunked"
        out.append((run(sim, *workload), sim))
    return out


@pytest.mark.parametrize("case", [
    dict(num_replicas=2, kv_blocks=10_000),  # roomy: nearly every step on the fast path
    dict(num_replicas=1, kv_blocks=400),  # KV-bound: preemptions, the reference decides those steps
    dict(num_replicas=2, kv_blocks=2_000, max_tokens=512),  # budget-bound chunks
    dict(num_replicas=2, kv_blocks=3_000, max_num_seqs=8, decode_runs=False),
    dict(num_replicas=2, kv_blocks=3_000, block_tokens=1),
])
def test_fast_steps_equal_the_reference_scheduler(case):
    workload = poisson_workload(300, 12.0, seed=3, max_in=1500, max_out=300)
    (fast, fast_sim), (ref, ref_sim) = _both(workload, **case)
    for key in ARRAYS:
        np.testing.assert_array_equal(getattr(fast, key), getattr(ref, key), err_msg=key)
    assert fast.num_events == ref.num_events and fast.in_system_area == ref.in_system_area
    for a, b in zip(fast.replicas, ref.replicas):
        assert [getattr(a, f) for f in STATS] == [getattr(b, f) for f in STATS]
    steps = sum(r.num_steps for r in fast.replicas)
    assert sum(r.num_reference_steps for r in fast_sim.replicas) < steps  # the fast path was taken
    assert all(r.num_reference_steps == 0 for r in ref_sim.replicas)  # counted only in fast mode
    if case["kv_blocks"] == 400:
        assert sum(r.num_preemptions for r in fast.replicas) > 0  # the case exercises preemption


def test_new_blocks_counts_every_block_boundary():
    """The histogram count (slices of it, wrapping around the block) against sequences advanced one
    token at a time, for every run length up to two blocks and past, from several starts."""
    rng = np.random.default_rng(1)
    for bt, tick in ((1, 7), (4, 13), (16, 0), (16, 37), (7, 5)):
        ds = DecodeSet(bt)
        ds.tick = tick
        seqs = []
        for i in range(20):
            s = Seq(i, 0, int(rng.integers(1, 90)), 1000)
            s.num_cached = s.prefill_target
            s.num_generated = 1
            ds.add(s)
            seqs.append(s)
        for first in range(4):
            for end in range(first, first + 2 * bt + 3):
                want = sum(1 for s in seqs for j in range(first, end) if (s.num_cached + j) % bt == 0)
                assert ds.new_blocks(first, end) == want, (bt, tick, first, end)


def test_a_run_cut_at_its_start_keeps_the_reference_block_counts():
    """An extraction at the very start of a decode run (0 steps) leaves each sequence holding the block
    of the step it never ran, as the reference does; the next steps agree with the reference."""
    states = []
    for fast in (True, False):
        rep = ReplicaSim(0, ConstantStepTimer(0.01), BlockPool(100, 16), BatchingConfig("chunked"),
                         fast=fast)
        seqs = [Seq(i, 0, 16 * (i + 1), 40) for i in range(3)]  # cached counts at block boundaries
        for s in seqs:
            rep.on_arrival(s, 0.0)
        while rep.batch.prefill:
            rep.on_step_end(rep.step_end_s)
        end = rep.extract([seqs[0].req_id], rep.step_start_s)
        rep.on_step_end(end)
        rep.take_extracted()
        trail = [(seqs[0].num_cached, seqs[0].num_blocks)]
        while rep.batch is not None:
            trail.append([(s.num_cached, s.num_generated, s.num_blocks) for s in rep.running]
                         + [rep.pool.num_free, rep.pool.peak_used, rep.num_steps, rep.step_end_s])
            rep.on_step_end(rep.step_end_s)
        states.append(trail + [rep.pool.num_free, rep.num_steps])
    assert len(states[0]) > 2 and states[0] == states[1]


@pytest.mark.parametrize("max_tokens", [256, 512, 1024])
def test_budget_bound_steps_stay_on_the_fast_path_and_equal_the_reference(max_tokens):
    """Prompts longer than the chunk budget: with KV room, every step (a chunk cut by the budget
    included: the prefilling sequences come after the decoding ones in the order, so the budget cuts
    them in turn) is scheduled by the DecodeSet, and the simulation is the reference scheduler's."""
    workload = poisson_workload(300, 10.0, seed=5, max_in=3000, max_out=200)
    (fast, fast_sim), (ref, _) = _both(workload, num_replicas=2, kv_blocks=20_000, max_tokens=max_tokens)
    for key in ARRAYS:
        np.testing.assert_array_equal(getattr(fast, key), getattr(ref, key), err_msg=key)
    assert fast.num_events == ref.num_events and fast.in_system_area == ref.in_system_area
    for a, b in zip(fast.replicas, ref.replicas):
        assert [getattr(a, f) for f in STATS] == [getattr(b, f) for f in STATS]
    assert sum(r.num_preemptions for r in fast.replicas) == 0
    assert all(r.num_reference_steps == 0 for r in fast_sim.replicas)  # no step left the fast path
