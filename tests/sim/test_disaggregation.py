"""Disaggregated groups in the simulator: prefill-only and decode-only replicas joined by KV hand-offs.

Invariants: no request lost, KV blocks conserved across the hand-off, Little's law per pool; prefill
replicas never decode and decode replicas prefill only what they recompute after a preemption.
"""

from __future__ import annotations

import numpy as np
import pytest
from tests.sim.factories import poisson_workload, run

from oserve.costmodel.catalog import load_models, parse_cluster
from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.kv_transfer import KvHandoff, KvLink
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.dispatch_policy import DispatchTable
from oserve.planner.plan import COLOCATED, DECODE, PREFILL, Plan, Replica
from oserve.sim.api import simulate_plan
from oserve.sim.batching import BatchingConfig
from oserve.sim.config import SimConfig
from oserve.sim.handoff import ConstantHandoff
from oserve.sim.replica import ReplicaSim
from oserve.sim.simulator import ReplicaSetup, Simulation
from oserve.sim.step_timer import ConstantStepTimer

STEP_S = 0.01
HANDOFF_S = 0.05


def disagg_sim(num_prefill: int = 2, num_decode: int = 2, prefill_blocks: int = 10_000,
               decode_blocks: int = 10_000, handoff_s: float = HANDOFF_S, colocated: int = 0,
               max_num_seqs: int = 256, dispatch: str = "least-outstanding") -> Simulation:
    timer = ConstantStepTimer(STEP_S)
    setups = ([ReplicaSetup(f"c{i}", timer, 10_000) for i in range(colocated)]
              + [ReplicaSetup(f"p{i}", timer, prefill_blocks, role=PREFILL, group=0)
                 for i in range(num_prefill)]
              + [ReplicaSetup(f"d{i}", timer, decode_blocks, role=DECODE, group=0)
                 for i in range(num_decode)])
    entry = colocated + num_prefill
    weights = ((1.0 / entry,) * entry + (0.0,) * num_decode,)
    return Simulation(setups, DispatchTable(weights), SimConfig(watermark_frac=0.0, dispatch=dispatch),
                      BatchingConfig("chunked", max_num_seqs, 2048), 16,
                      handoff=ConstantHandoff(handoff_s))


def test_one_request_prefills_hands_off_then_decodes():
    """100-token prompt, 5 tokens: prefill step ends at 0.01, the KV lands at 0.06, the decode side's
    first step gives the first token at 0.07 and the last at 0.11."""
    sim = disagg_sim(1, 1)
    res = run(sim, [0.0], [100], [5])
    assert res.first_token_s[0] == pytest.approx(0.07)
    assert res.finish_s[0] == pytest.approx(0.11)
    assert sim.records.prefilled_s[0] == pytest.approx(0.01)
    assert sim.records.transferred_s[0] == pytest.approx(0.06)
    prefill, decode = sim.replicas
    assert prefill.decode_tokens == 0 and prefill.prefill_tokens == 100
    assert decode.prefill_tokens == 0 and decode.decode_tokens == 5


def test_no_request_lost_and_each_pool_does_only_its_part():
    # round-robin keeps the plan's shares (least-outstanding would see the prefill replicas, which hold
    # no decodes, as nearly idle)
    sim = disagg_sim(2, 2, colocated=1, dispatch="round-robin")
    arrivals, inputs, outputs = poisson_workload(400, 20.0, seed=3)
    res = run(sim, arrivals, inputs, outputs)
    assert res.completed.all()
    rec = sim.records
    disagg = sim.records.where >= 1  # routed to a prefill replica (r0 is colocated)
    assert disagg.sum() == 267 and (~disagg).sum() == 133
    assert np.isnan(rec.prefilled_s[~disagg]).all()
    assert (rec.prefilled_s[disagg] >= res.arrival_s[disagg]).all()
    assert (rec.transferred_s[disagg] >= rec.prefilled_s[disagg] + HANDOFF_S - 1e-9).all()
    # TTFT counts from the decode side: its first step after the KV arrived
    assert (res.first_token_s[disagg] >= rec.transferred_s[disagg] + STEP_S - 1e-9).all()
    roles = [r.role for r in sim.replicas]
    assert roles == [COLOCATED, PREFILL, PREFILL, DECODE, DECODE]
    for rep in sim.replicas:
        if rep.role == PREFILL:
            assert rep.decode_tokens == 0 and not rep.held
        if rep.role == DECODE:
            assert rep.prefill_tokens == 0 and rep.num_preemptions == 0
    assert sum(r.decode_tokens for r in sim.replicas[3:]) == int(outputs[disagg].sum())


def test_least_outstanding_keeps_the_plans_split_beside_colocated_replicas():
    """A request routed to a prefill replica stays outstanding there until its last token, as on a
    colocated replica: the router keeps the plan's even split (when it counted only the prompts in
    prefill, the colocated replica got 3% of the requests instead of a third)."""
    sim = disagg_sim(2, 2, colocated=1)
    arrivals, inputs, outputs = poisson_workload(600, 20.0, seed=3)
    res = run(sim, arrivals, inputs, outputs)
    assert res.completed.all()
    shares = np.bincount(sim.records.where, minlength=3)[:3] / len(arrivals)
    assert shares == pytest.approx([1 / 3] * 3, abs=0.05)
    assert not sim._origin and all(n == 0 for n in sim._downstream.values())


def test_kv_blocks_are_conserved_across_the_hand_off(monkeypatch):
    """The prefill side keeps exactly the prompt's blocks until the transfer ends; the decode side
    reserves exactly as many before it starts; every pool is whole at the end."""
    sim = disagg_sim(1, 1)
    prefill, decode = sim.replicas
    seen = []
    reserve, release = ReplicaSim._try_reserve, ReplicaSim.release_held

    def spy_reserve(rep, seq):  # replicas have slots: spied on through their class
        ok = reserve(rep, seq)
        if ok and rep is decode:
            seen.append(("reserved", seq.req_id, seq.num_blocks, prefill.held[seq.req_id]))
        return ok

    def spy_release(rep, seq, now_s):
        if rep is prefill:
            seen.append(("released", seq.req_id, prefill.held[seq.req_id], seq.num_blocks))
        return release(rep, seq, now_s)

    monkeypatch.setattr(ReplicaSim, "_try_reserve", spy_reserve)
    monkeypatch.setattr(ReplicaSim, "release_held", spy_release)
    arrivals, inputs, outputs = poisson_workload(200, 30.0, seed=5)
    res = run(sim, arrivals, inputs, outputs)
    assert res.completed.all()
    assert len(seen) == 400
    for _kind, req, a, b in seen:
        assert a == b == -(-int(inputs[req]) // 16)
    for rep in sim.replicas:
        assert rep.pool.num_free == rep.pool.num_blocks


def test_littles_law_holds_per_pool():
    """The time-integral of each pool's population equals the sum of its requests' times in it
    (L = lambda W over the run), from independent bookkeeping: counters vs per-request records."""
    sim = disagg_sim(2, 3)
    arrivals, inputs, outputs = poisson_workload(300, 15.0, seed=7)
    res = run(sim, arrivals, inputs, outputs)
    assert res.completed.all()
    rec = sim.records
    prefill_w = rec.transferred_s - res.arrival_s
    decode_w = res.finish_s - rec.prefilled_s
    assert sim.pool_area_s[PREFILL] == pytest.approx(prefill_w.sum(), rel=1e-9)
    assert sim.pool_area_s[DECODE] == pytest.approx(decode_w.sum(), rel=1e-9)
    assert sim.pool_in == {PREFILL: 0, DECODE: 0}
    span = res.finish_s.max() - res.arrival_s.min()
    lam = len(arrivals) / span
    assert sim.pool_area_s[DECODE] / span == pytest.approx(lam * decode_w.mean(), rel=1e-9)


def test_decode_kv_pressure_queues_hand_offs_and_recomputes_only_after_preemption():
    """A decode pool of 60 blocks (960 tokens): hand-offs wait for room, decodes preempt and are
    recomputed on the decode replica; nothing is lost, every pool is whole at the end."""
    sim = disagg_sim(1, 1, decode_blocks=60)
    arrivals, inputs, outputs = poisson_workload(120, 40.0, seed=11, max_in=400, max_out=300)
    res = run(sim, arrivals, inputs, outputs)
    assert res.completed.all()
    prefill, decode = sim.replicas
    assert decode.num_preemptions > 0
    assert 0 < decode.prefill_tokens
    assert prefill.pool.num_free == prefill.pool.num_blocks
    assert decode.pool.num_free == decode.pool.num_blocks
    assert int(res.num_preemptions.sum()) == decode.num_preemptions + prefill.num_preemptions
    waited = sim.records.transferred_s - sim.records.prefilled_s > HANDOFF_S + 1e-6
    assert waited.sum() > 10  # hand-offs that queued for decode KV room


def test_simulate_plan_prices_the_hand_off_on_the_cluster_links():
    """The same group on one node (NVLink) and across two nodes (network): a 6000-token prompt's single
    prefill pass (~0.3 s) outlasts either transfer (3 or 24 ms), so with layer-wise overlap only the
    last layer's message shows: TTFT grows by the difference of one layer's message; TPOT does not
    depend on the link."""
    cost = CostModel(load_models().get("llama-3-8b"))
    cluster = parse_cluster("2x8xH100-80GB")
    h1 = ReplicaConfig("H100-80GB")

    def plan(decode_gpu: int) -> Plan:
        replicas = (Replica(0, (0,), h1, PREFILL, 0), Replica(1, (decode_gpu,), h1, DECODE, 0))
        return Plan("llama-3-8b", replicas, ("t",), (1.0,), ((1.0,), (1.0,)), ((1.0, 0.0),), 1.0,
                    (0.0, 0.0), (), "hand", cluster=cluster.describe())

    from oserve.workload.request_types import fit_request_types
    from oserve.workload.trace import Trace

    trace = Trace(np.arange(20) * 1.0, np.full(20, 6000), np.full(20, 50), "t")
    types = fit_request_types(trace, 1, cache=False)
    near = simulate_plan(plan(1), trace, types, cost, SimConfig())
    far = simulate_plan(plan(8), trace, types, cost, SimConfig())
    gap = float(np.median(far.ttft_s - near.ttft_s))
    model = cost.model
    nvlink = KvHandoff(model, h1, h1, KvLink.between(cluster, (0,), (1,))).transfer_s(6000)
    network = KvHandoff(model, h1, h1, KvLink.between(cluster, (0,), (8,))).transfer_s(6000)
    assert 5 * nvlink < network < 0.05
    assert gap == pytest.approx((network - nvlink) / model.num_layers, rel=1e-6, abs=1e-9)
    assert np.median(far.tpot_s) == pytest.approx(np.median(near.tpot_s), rel=1e-6)


def test_a_disaggregated_plan_without_its_cluster_is_refused():
    from oserve.common.errors import ConfigError
    from oserve.sim.api import plan_handoff

    cost = CostModel(load_models().get("llama-3-8b"))
    h1 = ReplicaConfig("H100-80GB")
    replicas = (Replica(0, (0,), h1, PREFILL, 0), Replica(1, (1,), h1, DECODE, 0))
    plan = Plan("llama-3-8b", replicas, ("t",), (1.0,), ((1.0,), (1.0,)), ((1.0, 0.0),), 1.0,
                (0.0, 0.0), (), "hand")
    with pytest.raises(ConfigError, match="must name its cluster"):
        plan_handoff(plan, cost)
