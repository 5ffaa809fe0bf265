"""Disaggregation in the goodput planner: the group latency model, role splits, the shortlist that
always keeps the best colocated plan, and the simulator-verified choice."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from goodput_setup import goodput_setup
from oserve.cli.main import main
from oserve.costmodel.catalog import parse_cluster
from oserve.costmodel.group_latency import GroupLatencyModel, predict_decode_only
from oserve.costmodel.kv_transfer import KvHandoff, KvLink
from oserve.costmodel.latency_model import ReplicaLatencyModel
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.disagg_search import layouts
from oserve.planner.plan import COLOCATED, DECODE, PREFILL
from oserve.planner.slo_planner import GoodputPlanner, candidate_plan
from oserve.sim.config import SimConfig
from oserve.sim.verify import verify_shortlist
from oserve.workload.burstiness import LengthSample
from oserve.workload.slo import Slo

TP2 = ReplicaConfig("H100-80GB", tp=2)


@pytest.fixture(scope="module")
def setup():
    return goodput_setup("azure-code", "tight")


def test_decode_only_tpot_is_the_decode_step_without_prefill_interference(setup):
    cost = setup[0]
    model = ReplicaLatencyModel(cost, ReplicaConfig("H100-80GB", tp=4))
    sample = [LengthSample((1000,) * 4, (200,) * 4)]
    light = predict_decode_only(model, sample, np.array([0.5]), [Slo(tpot_s=0.05)])
    # Little's law: B = 0.5 req/s * 200 tokens * d(B)
    assert light.batch == pytest.approx(100 * light.step_s, rel=0.05)
    assert light.step_s == pytest.approx(model.decode_s(light.batch, 1100), rel=1e-9)
    assert light.tpot_attainment == (1.0,) and not light.overloaded
    tight = predict_decode_only(model, sample, np.array([0.5]), [Slo(tpot_s=light.step_s * 0.9)])
    assert tight.tpot_attainment == (0.0,)
    assert predict_decode_only(model, sample, np.array([500.0]), [Slo(tpot_s=1.0)]).overloaded


def test_a_slower_link_costs_ttft_attainment(setup):
    cost = setup[0]
    pm = ReplicaLatencyModel(cost, TP2.with_engine(8192))
    dm = ReplicaLatencyModel(cost, TP2)
    samples = [LengthSample((6000,) * 4, (50,) * 4)]
    slos = [Slo(ttft_s=0.9, tpot_s=0.1)]

    def att(link: KvLink, overlap: bool) -> float:
        gm = GroupLatencyModel(pm, dm, 1, 1, KvHandoff(cost.model, pm.config, dm.config, link, overlap))
        # 0.1 req/s: the decode replica's 6,240-token cache holds one 6,000-token sequence, and two
        # overlap 1.5% of the time (at 0.3 req/s 11%: KV-bound, latency_model.kv_mean_held_tokens)
        return float(gm.attainment(samples, np.array([0.1]), slos, None, 1.0, 1.0)[0])

    nvlink = KvLink(True, 450.0)
    slow = KvLink(False, 450.0, 0.5)  # a 4 Gb/s network: 6000 tokens of 70B KV (2 GB) take ~4 s
    assert att(nvlink, True) > 0.5
    assert att(slow, True) == 0.0 and att(slow, False) == 0.0
    assert att(nvlink, False) <= att(nvlink, True)


def test_layouts_move_gpus_between_roles_within_and_across_nodes():
    cluster = parse_cluster("2x8xH100-80GB")
    found = dict(layouts(cluster, TP2, TP2))
    assert set(found) == {"per-node m0 1P3D", "per-node m0 2P2D", "per-node m0 3P1D", "cross-node 1P-nodes",
                          "pooled 1D", "pooled 2D", "pooled 3D"}
    for reps in found.values():
        gpus = [g for r in reps for g in r.gpus]
        assert len(gpus) == len(set(gpus)) == 16
        assert {r.role for r in reps} == {PREFILL, DECODE}
    per_node = found["per-node m0 3P1D"]
    assert [r.role for r in per_node].count(PREFILL) == 6
    for r in per_node:  # one group per node: the hand-off stays on NVLink
        assert {g // 8 for g in r.gpus} == {r.group}
    cross = found["cross-node 1P-nodes"]
    assert all(max(r.gpus) < 8 for r in cross if r.role == PREFILL)
    assert all(min(r.gpus) >= 8 for r in cross if r.role == DECODE)
    pooled = found["pooled 1D"]  # one group: one decode replica on the last node, prefill on the rest
    assert {r.group for r in pooled} == {0}
    assert [r.gpus for r in pooled if r.role == DECODE] == [(14, 15)]
    assert [r.role for r in pooled].count(PREFILL) == 7
    assert "pooled 4D" not in found  # four TP2 decode replicas fill a node: that is "cross-node 1P-nodes"
    hybrid = dict(layouts(cluster, TP2, TP2, ReplicaConfig("H100-80GB", tp=4)))
    reps = hybrid["per-node m1 1P1D"]
    assert [r.role for r in reps[:3]] == [COLOCATED, PREFILL, DECODE]
    assert "1 colocated nodes + per-node 2P2D" in hybrid


def test_shortlist_keeps_the_best_colocated_plan_beside_the_groups(setup):
    cost, cluster, prepared, _, workload = setup
    off = GoodputPlanner(cluster, cost, prepared.stats, workload).shortlist()
    assert all(r.group is None for c in off for r in c.replicas)
    gp = GoodputPlanner(cluster, cost, prepared.stats, workload, disaggregation=True)
    on = gp.shortlist()
    best_colocated = gp.homogeneous_tuned()[0]
    assert any(c is best_colocated for c in on)
    disagg = [c for c in on if any(r.group is not None for r in c.replicas)]
    assert disagg and all(c.predicted_scale > 0 for c in disagg)
    for c in disagg:  # decode replicas get no dispatch share; each type's row sums to 1
        for r in c.replicas:
            if r.role == DECODE:
                assert (c.fractions[:, r.replica_id] == 0).all()
        assert np.allclose(c.fractions.sum(axis=1), 1.0)
    dynamo = gp.dynamo_split()
    assert dynamo is not None
    # the Dynamo-style split is verified too, so the verified plan is never worse than it
    assert any(c.replicas == dynamo.replicas for c in on)
    configs = {r.config for r in dynamo.replicas}
    assert len(configs) == 1 and next(iter(configs)).engine_label() == ""


def test_verified_choice_with_groups_is_never_worse_than_the_best_colocated(setup):
    cost, cluster, prepared, slo, workload = setup
    gp = GoodputPlanner(cluster, cost, prepared.stats, workload, disaggregation=True)
    shortlist = [candidate_plan(c, cost, prepared.stats, "goodput", "oserve", 0.0, cluster.describe())
                 for c in gp.shortlist()]
    assert any(p.is_disaggregated for p in shortlist)
    ver = verify_shortlist(shortlist, prepared, cost, SimConfig(drain_s=120.0), slo, max_requests=300)
    # a candidate that cannot beat the best so far is pruned (no simulated scale, the scale it missed)
    colocated = [p.simulated_goodput_scale for p in ver.candidates
                 if not p.is_disaggregated and p.simulated_goodput_scale is not None]
    assert colocated and ver.plan.simulated_goodput_scale >= max(colocated)
    for p, missed in zip(ver.candidates, ver.pruned_at):
        if p.simulated_goodput_scale is None:
            assert missed is not None and missed > 0
            assert ver.plan.simulated_goodput_scale * 1.03 >= missed * 0.999
        else:
            assert missed is None and not math.isnan(p.simulated_goodput_scale)


def test_plan_cli_with_disaggregation_writes_groups_a_plan_file_simulate_reads(tmp_path, capsys):
    args = ["plan", "--cluster", "1x8xH100", "--model", "llama-2-70b", "--trace", "azure-code",
            "--slo", "tight", "--json", "--verify-requests", "200", "--disaggregation", "on"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cluster"] == "1x8xH100-80GB"
    assert any("group(" in s["deployment"] for s in out["shortlist"])
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(out))
    assert main(["simulate", "--cluster", "1x8xH100", "--model", "llama-2-70b", "--trace", "azure-code",
                 "--time-range", "0:60", "--planner", "default", "--plan", str(plan_file), "--json"]) == 0
    sim = json.loads(capsys.readouterr().out)
    assert sim["results"]["plan"]["deployment"] == out["deployment"]


def test_a_type_can_be_split_between_colocated_replicas_and_a_group():
    from oserve.planner.disagg_search import proportional_fractions

    cluster = parse_cluster("1x8xH100-80GB")
    reps = dict(layouts(cluster, TP2, TP2, ReplicaConfig("H100-80GB", tp=4)))["per-node m1 1P1D"]
    fr = proportional_fractions(reps, 3)
    # 4 GPUs colocated, a 4-GPU group entered through its one prefill replica: half each
    assert [r.role for r in reps] == [COLOCATED, PREFILL, DECODE]
    assert np.allclose(fr, [[0.5, 0.5, 0.0]] * 3)


def test_group_search_tries_every_prefill_budget_and_decode_max_num_seqs():
    """``search_groups`` with a scoring double that likes a 2048-token prefill budget and 512 decode
    seats: every layout is scored at every budget of PREFILL_BUDGETS, the best split's decode side at
    every DECODE_MAX_SEQS, and the winner carries both settings."""
    from dataclasses import dataclass

    from oserve.planner.disagg_search import DECODE_MAX_SEQS, PREFILL_BUDGETS, search_groups

    @dataclass
    class Scored:
        kind: str
        replicas: tuple
        predicted_scale: float

    seen: list[tuple[int, int]] = []

    def score(kind, reps, fractions):
        budget = next(r.config.max_num_batched_tokens for r in reps if r.role == PREFILL)
        seqs = next(r.config.max_num_seqs for r in reps if r.role == DECODE)
        seen.append((budget, seqs))
        return Scored(kind, reps, -abs(budget - 2048) / 1e4 + (0.1 if seqs == 512 else 0.0))

    cluster = parse_cluster("1x8xH100-80GB")
    best = search_groups(cluster, [TP2], 1, [0], score)
    top = best[0]
    assert {r.config.max_num_batched_tokens for r in top.replicas if r.role == PREFILL} == {2048}
    assert {r.config.max_num_seqs for r in top.replicas if r.role == DECODE} == {512}
    assert {b for b, s in seen} == set(PREFILL_BUDGETS)
    assert {s for b, s in seen} == set(DECODE_MAX_SEQS)
    num_layouts = len(dict(layouts(cluster, TP2, TP2)))
    assert len(seen) == num_layouts * len(PREFILL_BUDGETS) + len(DECODE_MAX_SEQS) - 1


def test_pairs_take_the_prefill_side_from_every_tuned_split_and_the_widest_decode_split():
    """Which split prefills best alone is not which one serves best colocated: every tuned split is a
    prefill candidate, also one ranked last (on 32 GPUs of azure-code the best pair, TP2 PP2 -> TP4, had
    a prefill split outside the best few, and the enumeration of bench/disagg_enumerate.py found it).
    The decode side is the best few and the highest-TP split without PP (the fastest decode step); a
    middling split is no decode candidate."""
    from oserve.planner.disagg_search import pair_configs

    tp8 = ReplicaConfig("H100-80GB", tp=8)
    tp2pp2 = ReplicaConfig("H100-80GB", tp=2, pp=2)
    tp1pp2 = ReplicaConfig("H100-80GB", tp=1, pp=2)
    tuned = [ReplicaConfig("H100-80GB", tp=4, pp=2), ReplicaConfig("H100-80GB", tp=4), TP2.hardware,
             ReplicaConfig("H100-80GB", tp=1, pp=4), tp8, tp2pp2, tp1pp2]
    pairs = pair_configs(tuned, 8)
    prefill = {p for p, _ in pairs}
    decode = {d for _, d in pairs}
    assert prefill == set(tuned)
    assert (tp2pp2, ReplicaConfig("H100-80GB", tp=4)) in pairs and (tp1pp2, tp8) in pairs
    assert tp8 in decode and tp2pp2 not in decode and tp1pp2 not in decode
