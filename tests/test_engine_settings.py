"""Per-replica engine settings round-trip: plan JSON -> simulator batching -> vLLM command line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from oserve.common.errors import ConfigError, InputFormatError
from oserve.costmodel.catalog import load_models
from oserve.costmodel.cost_model import CostModel, TypeLoad
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.dispatch_policy import DispatchTable
from oserve.planner.plan import Plan, Replica
from oserve.sim.api import batching_config
from oserve.sim.config import SimConfig
from oserve.sim.simulator import Simulation, replicas_from_configs

H100 = "H100-80GB"


def _plan() -> Plan:
    configs = [ReplicaConfig(H100, 4, 1, "bf16", 2048, 64), ReplicaConfig(H100, 4),
               ReplicaConfig(H100, 2, 2, "bf16", 512)]
    replicas = tuple(Replica(i, tuple(range(4 * i, 4 * i + 4)), c) for i, c in enumerate(configs))
    return Plan("llama-2-70b", replicas, ("T0",), (1.0,), ((1.0,), (1.0,), (1.0,)),
                ((0.4, 0.3, 0.3),), 1.0, (0.5, 0.5, 0.5), (), "hand")


def test_plan_json_round_trip_keeps_engine_settings_under_vllm_names():
    plan = _plan()
    d = json.loads(json.dumps(plan.to_dict()))
    assert d["replicas"][0]["max_num_batched_tokens"] == 2048
    assert d["replicas"][0]["max_num_seqs"] == 64
    assert d["replicas"][1]["max_num_batched_tokens"] is None  # engine default
    assert d["replicas"][2]["max_num_seqs"] is None
    back = Plan.from_dict(d)
    assert back.configs() == plan.configs()
    assert "2048 tok, 64 seqs" in back.describe() and "512 tok" in back.describe()


def test_old_plan_json_without_engine_keys_means_engine_defaults():
    d = _plan().to_dict()
    for r in d["replicas"]:
        del r["max_num_batched_tokens"], r["max_num_seqs"]
    assert all(c.max_num_batched_tokens == 0 and c.max_num_seqs == 0 for c in Plan.from_dict(d).configs())


@pytest.mark.parametrize("bad", [0, -5, 1.5, "2048", True])
def test_bad_engine_setting_in_plan_json_is_named(bad):
    d = _plan().to_dict()
    d["replicas"][1]["max_num_seqs"] = bad
    with pytest.raises(InputFormatError, match=r"replicas\.1\.max_num_seqs|replicas\[1\]\.max_num_seqs"):
        Plan.from_dict(d)


def test_configs_with_and_without_settings_sort_and_hash():
    a, b = ReplicaConfig(H100, 4), ReplicaConfig(H100, 4, 1, "bf16", 2048)
    assert sorted([b, a]) == [a, b]
    assert len({a, b, ReplicaConfig(H100, 4)}) == 2
    assert b.hardware == a and a.label() == "H100-80GB TP4"
    with pytest.raises(ConfigError, match="max_num_seqs"):
        ReplicaConfig(H100, 4, 1, "bf16", 0, -1)


def test_simulator_honours_per_replica_settings_over_the_global_ones():
    plan = Plan.from_dict(json.loads(json.dumps(_plan().to_dict())))
    cost = CostModel(load_models().get("llama-2-70b"))
    config = SimConfig(max_num_seqs=128, max_num_batched_tokens=4096)
    sim = Simulation(replicas_from_configs(plan.configs(), cost), DispatchTable.from_fractions(plan.dispatch),
                     config, batching_config(cost, config), cost.params.kv_block_tokens)
    got = [(r.batching.max_num_batched_tokens, r.batching.max_num_seqs) for r in sim.replicas]
    # the PP2 replica's step is a round of its 2 in-flight batches, each with its own 512-token budget
    assert got == [(2048, 64), (4096, 128), (2 * 512, 128)]


def test_a_seat_limit_is_felt_by_the_simulated_requests():
    cost = CostModel(load_models().get("llama-2-70b"))
    n = 40
    arrivals, inputs, outputs = np.zeros(n), np.full(n, 200), np.full(n, 100)
    ttft = {}
    for seqs in (0, 4):
        cfg = ReplicaConfig(H100, 4, 1, "bf16", 0, seqs)
        sim = Simulation(replicas_from_configs([cfg], cost), DispatchTable(((1.0,),)), SimConfig(),
                         batching_config(cost, SimConfig()), cost.params.kv_block_tokens)
        res = sim.run(arrivals, inputs, outputs, np.zeros(n, dtype=np.int64))
        assert res.summary()["completed"] == n
        ttft[seqs] = float(np.max(res.ttft_s))
    assert ttft[4] > 5 * ttft[0]  # 4 seats: the last request waits for nine batches to finish


def test_vllm_command_carries_the_replica_settings():
    pytest.importorskip("httpx")  # the runtime's HTTP client (the 'serve' extra)
    from oserve.runtime.vllm_engine import launch_for_replica, vllm_command

    plan = Plan.from_dict(json.loads(json.dumps(_plan().to_dict())))
    cmds = [vllm_command(launch_for_replica(r, "meta-llama/Llama-2-70b-hf", "m", 8000 + i))
            for i, r in enumerate(plan.replicas)]
    def flag(cmd, name):
        return cmd[cmd.index(name) + 1] if name in cmd else None
    assert (flag(cmds[0], "--max-num-batched-tokens"), flag(cmds[0], "--max-num-seqs")) == ("2048", "64")
    assert flag(cmds[1], "--max-num-batched-tokens") is None and flag(cmds[1], "--max-num-seqs") is None
    assert (flag(cmds[2], "--max-num-batched-tokens"), flag(cmds[2], "--max-num-seqs")) == ("512", None)


def test_cost_model_prices_the_replica_settings():
    cost = CostModel(load_models().get("llama-2-70b"), tpot_slo_s=None)
    load = TypeLoad(1000.0, 200.0)
    base = ReplicaConfig(H100, 4)
    assert cost.batched_tokens(base) == cost.params.max_num_batched_tokens
    few_seats = base.with_engine(max_num_seqs=8)
    assert cost.max_batch(few_seats, load) == 8
    assert cost.type_capacity_rps(few_seats, load) < cost.type_capacity_rps(base, load)
