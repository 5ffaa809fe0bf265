"""The ``slo-spill`` dispatch in the simulator: the shared rule's decisions on the simulator's state,
and a heterogeneous plan whose SLO goodput the spill rule raises."""

from __future__ import annotations

import numpy as np
import pytest

from oserve.common.errors import ConfigError
from oserve.costmodel.catalog import load_models
from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.dispatch_policy import DispatchTable
from oserve.planner.plan import Plan, Replica
from oserve.planner.spill_rule import SpillRule, replica_speeds
from oserve.sim.config import SimConfig
from oserve.sim.experiment import prepare_trace, simulate_at
from oserve.sim.goodput import plan_goodput, prepared_type_slos
from oserve.sim.router import Router
from oserve.workload.slo import Slo, SloSpec
from oserve.workload.trace import Trace
from spill_lockstep import spills_in_lockstep

MODEL = "llama-2-7b"
CFG = ReplicaConfig("H100-80GB", 1, max_num_batched_tokens=2048)


@pytest.fixture(scope="module")
def cost():
    return CostModel(load_models().get(MODEL))


def _bursty_trace(seed: int = 0) -> Trace:
    """Short chats with a 20-second burst at 10x their rate, and steady long prompts."""
    rng = np.random.default_rng(seed)
    chats = np.sort(np.concatenate([rng.uniform(0, 120, 360), rng.uniform(50, 70, 600)]))
    longs = np.sort(rng.uniform(0, 120, 120))
    t = np.concatenate([chats, longs])
    inp = np.concatenate([rng.integers(150, 400, len(chats)), rng.integers(2500, 3500, len(longs))])
    out = np.concatenate([rng.integers(50, 150, len(chats)), rng.integers(10, 40, len(longs))])
    order = np.argsort(t, kind="stable")
    return Trace(t[order] - t[order][0], inp[order], out[order], "bursty-two-types")


def _specialised_plan(prepared) -> Plan:
    """Chats on replica 0, long prompts on replica 1: the split a mean-rate LP gives two types."""
    short = int(np.argmin([s.mean_input_tokens for s in prepared.stats]))
    dispatch = tuple((1.0, 0.0) if t == short else (0.0, 1.0) for t in range(prepared.types.k))
    replicas = (Replica(0, (0,), CFG), Replica(1, (1,), CFG))
    k = prepared.types.k
    return Plan(MODEL, replicas, tuple(prepared.types.names()), tuple(s.rate_rps for s in prepared.stats),
                ((1.0,) * k, (1.0,) * k), dispatch, 1.0, (0.0, 0.0), (), "test", 0.0)


def test_spilling_raises_the_simulated_goodput_of_a_specialised_plan(cost):
    prepared = prepare_trace(_bursty_trace(), cost, num_types=2)
    plan = _specialised_plan(prepared)
    slo = SloSpec(Slo(1.0, 0.1), attainment=0.9)
    plain = plan_goodput(plan, prepared, cost, SimConfig(dispatch="least-outstanding"), slo)
    spill = plan_goodput(plan, prepared, cost, SimConfig(dispatch="slo-spill"), slo)
    assert plain.scale > 0
    assert spill.scale > 1.5 * plain.scale  # the burst spills onto the long-prompt replica
    # at the plain plan's first failing scale, requests did leave the plan
    bad = min(p.scale for p in plain.probes if not p.ok)
    res = simulate_at(plan, prepared, cost, SimConfig(dispatch="slo-spill"), bad,
                      type_slos=prepared_type_slos(prepared, slo))
    short = int(np.argmin([s.mean_input_tokens for s in prepared.stats]))
    assert (res.replica_id[res.type_id == short] == 1).sum() > 0


def test_slo_spill_needs_the_types_slos(cost):
    with pytest.raises(ConfigError, match="SLOs"):
        Router("slo-spill", np.random.default_rng(0))
    prepared = prepare_trace(_bursty_trace(), cost, num_types=2)
    with pytest.raises(ConfigError, match="SLOs"):
        simulate_at(_specialised_plan(prepared), prepared, cost, SimConfig(dispatch="slo-spill"))


def test_simulator_router_and_runtime_dispatch_make_the_same_decisions(cost):
    """The same state shown to the simulator's router and to the runtime's policy: the same replica,
    request by request (both call planner.spill_rule.spill_choice)."""
    speeds = replica_speeds(cost, [CFG, CFG, ReplicaConfig("H100-80GB", 2, max_num_batched_tokens=512)])
    slos = (Slo(0.3, 0.05), Slo(1.0, 0.1))
    table = DispatchTable(((1.0, 0.0, 0.0), (0.0, 0.5, 0.5)))
    router = Router("slo-spill", np.random.default_rng(0), slos)
    router.set_table(table, [0, 1, 2], [10**6] * 3, [0, 0, 0], [0, 0, 0], list(speeds))
    moved = spills_in_lockstep(router, SpillRule(slos, speeds), table, requests=300, seed=1,
                               prompt_tokens=(50, 3000), prefill_done_p=0.3)
    assert moved > 0  # the rule did spill in this run


def test_slo_spill_reads_the_same_state_on_the_fast_decode_path(cost):
    """The spill rule reads each replica's prefill backlog after every event; with the DecodeSet fast
    path (sim/decode_set.py) on or off the simulation must be the same, request by request."""
    prepared = prepare_trace(_bursty_trace(), cost, num_types=2)
    plan = _specialised_plan(prepared)
    slos = prepared_type_slos(prepared, SloSpec(Slo(1.0, 0.1), attainment=0.9))
    from oserve.sim.api import batching_config, request_type_ids
    from oserve.sim.simulator import Simulation, replicas_from_configs

    config = SimConfig(dispatch="slo-spill")
    trace = prepared.trace.scaled(2.0)
    type_ids = request_type_ids(trace, prepared.types)
    runs = []
    for fast in (True, False):
        sim = Simulation(replicas_from_configs(plan.configs(), cost),
                         DispatchTable.from_fractions(plan.dispatch), config, batching_config(cost, config),
                         cost.params.kv_block_tokens, type_slos=slos, fast_steps=fast)
        runs.append(sim.run(trace.arrival_s, trace.input_tokens, trace.output_tokens, type_ids))
        if fast:  # the fast path was taken for most steps
            steps = sum(r.num_steps for r in sim.replicas)
            assert sum(r.num_reference_steps for r in sim.replicas) < steps / 2
    for key in ("first_token_s", "finish_s", "replica_id"):
        np.testing.assert_array_equal(getattr(runs[0], key), getattr(runs[1], key), err_msg=key)
    assert (runs[0].replica_id != runs[0].replica_id[0]).any()  # both replicas served
