"""The simulator on real plans and the bundled trace: invariants hold with cost-model step times."""

from __future__ import annotations

import numpy as np
import pytest

from oserve.costmodel.catalog import load_models
from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.plan import Plan, Replica
from oserve.sim.config import SimConfig
from oserve.sim.experiment import prepare_trace, simulate_at


@pytest.fixture(scope="module")
def setup():
    cost = CostModel(load_models().get("llama-2-70b"))
    prepared = prepare_trace("azure-mix", cost, window_s=(0.0, 240.0))
    return cost, prepared


def _mixed_plan(k: int) -> Plan:
    configs = [ReplicaConfig("H100-80GB", 2, 2), ReplicaConfig("H100-80GB", 4),
               ReplicaConfig("H100-80GB", 1, 4)]
    replicas = tuple(Replica(i, tuple(range(4 * i, 4 * i + 4)), c) for i, c in enumerate(configs))
    dispatch = tuple((0.5, 0.5, 0.0) if t % 2 else (0.0, 0.3, 0.7) for t in range(k))
    zeros = tuple((0.0,) * k for _ in replicas)
    return Plan("llama-2-70b", replicas, tuple(f"T{t}" for t in range(k)), (0.0,) * k, zeros, dispatch,
                1.0, (0.0,) * 3, (), "hand")


@pytest.mark.parametrize("batching", ["chunked", "prefill-first"])
@pytest.mark.parametrize("dispatch", ["least-outstanding", "spillover", "weighted-random"])
def test_heterogeneous_plan_under_overload_loses_nothing(setup, batching, dispatch):
    cost, prepared = setup
    plan = _mixed_plan(prepared.types.k)
    res = simulate_at(plan, prepared, cost, SimConfig(batching=batching, dispatch=dispatch, drain_s=60.0),
                      rate_scale=3.0)
    s = res.summary()
    assert s["completed"] + s["dropped"] == len(prepared.trace)
    assert set(np.unique(res.drop_reason)) <= {"", "unfinished_at_horizon"}
    assert all(r.peak_kv_frac <= 1.0 for r in res.replicas)
    done = res.completed
    assert np.all(res.first_token_s[done] > res.arrival_s[done])
    assert np.all(res.finish_s[done] >= res.first_token_s[done])
    if dispatch != "spillover":  # the plan's zero shares are respected
        types = res.type_id[res.replica_id >= 0]
        where = res.replica_id[res.replica_id >= 0]
        assert not np.any(where[types % 2 == 0] == 0)
        assert not np.any(where[types % 2 == 1] == 2)


def test_rate_scaling_raises_latency_and_throughput(setup):
    cost, prepared = setup
    plan = _mixed_plan(prepared.types.k)
    low = simulate_at(plan, prepared, cost, SimConfig(), 0.5).summary()
    high = simulate_at(plan, prepared, cost, SimConfig(), 2.0).summary()
    assert high["throughput_rps"] > 3 * low["throughput_rps"]
    assert high["p99_e2e_s"] > low["p99_e2e_s"]
