"""``oserve serve --dispatch-policy slo-spill``: the runtime builds the simulator's spill rule from the plan
and the SLO (``planner.spill_rule``), decides as the simulator does, spills through the real gateway, and
rebuilds the rule for each plan a switch brings. Engines are the fake engine (the test double at the
edge)."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from oserve.common.errors import ConfigError
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.costmodel.setup import CostModelConfig
from oserve.planner.dispatch_policy import DispatchTable
from oserve.planner.spill_rule import SPILL_AT, PlanSpillRules, predict, trace_type_slos
from oserve.runtime.serve_setup import ServeConfig, build_runtime
from oserve.runtime.static_plan import static_plan
from oserve.sim.router import Router as SimRouter
from oserve.sim.simulator import replicas_from_configs
from oserve.workload import fit_request_types, load_trace
from oserve.workload.slo import Slo, slo_from_flags
from spill_lockstep import spills_in_lockstep

MODEL = "llama-2-7b"
SMALL = ReplicaConfig("H100-80GB", 1, max_num_batched_tokens=512)
LARGE = ReplicaConfig("H100-80GB", 2, max_num_batched_tokens=2048)


def _plan_file(tmp_path, configs, dispatch, name="plan.json"):
    path = tmp_path / name
    path.write_text(json.dumps(static_plan(MODEL, configs, ["T0", "T1"], dispatch).to_dict()))
    return str(path)


def _serve(plan_file=None, policy="slo-spill", slo="loose", cluster=None, **extra) -> ServeConfig:
    cost = CostModelConfig(cluster=cluster, model=MODEL) if cluster else None
    return ServeConfig(engine="fake", plan_file=plan_file, cost_model=cost, types=2, slo=slo,
                       runtime={"dispatch_policy": policy, "check_interval_s": 0}, **extra)


def test_serve_builds_the_simulators_rule_and_decides_as_the_simulator(tmp_path):
    """The rule ``build_runtime`` gives the router (from the plan file and --slo) has the simulator's
    per-replica speeds and per-type SLOs, and on the same replica states both routers pick the same
    replica, request by request, spilling some."""
    plan_file = _plan_file(tmp_path, [SMALL, SMALL, LARGE], [[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    runtime = build_runtime(_serve(plan_file, slo_ttft_s=0.4))
    rule = runtime.router.spill_rule
    cost = CostModelConfig(model=MODEL).resolve()[2]
    sim_speeds = [r.speed for r in replicas_from_configs([SMALL, SMALL, LARGE], cost)]
    assert list(rule.speeds) == sim_speeds
    trace = load_trace("azure-conv")
    types = fit_request_types(trace, 2, 0)
    slo = slo_from_flags("loose", 0.4, None, None)
    assert rule.type_slos == trace_type_slos(types, trace.input_tokens, slo)
    assert rule.type_slos[0].ttft_s == 0.4

    table = DispatchTable.from_fractions(runtime.router.table.plan.dispatch)
    sim = SimRouter("slo-spill", np.random.default_rng(0), rule.type_slos)
    sim.set_table(table, [0, 1, 2], [10**7] * 3, [0] * 3, [0] * 3, sim_speeds)
    spilled = spills_in_lockstep(sim, rule, table, requests=400, seed=3, prompt_tokens=(20, 4000),
                                 prefill_done_p=0.25)
    assert spilled > 0


@pytest.mark.parametrize("policy", ["slo-spill", "least-outstanding"])
def test_gateway_spills_a_short_request_off_a_replica_busy_prefilling(tmp_path, policy):
    """Over HTTP: the plan sends every type to replica 0; while a 60,000-token prompt prefills there
    (6 s at the fake engine's pace), a short request goes to replica 1 with slo-spill (its predicted
    TTFT on replica 0 is past half the 0.5 s SLO) and stays on replica 0 without it."""
    from oserve.runtime.engine_spec import EngineSpec
    from oserve.runtime.gateway.app import create_app
    from oserve.runtime.server import ServerThread

    from .factories import openai_client

    plan_file = _plan_file(tmp_path, [SMALL, SMALL], [[1.0, 0.0], [1.0, 0.0]])
    # test double: fakes 10x slower than the plan's H100s (the server would time them as the plan's
    # model, 1.4 s for this prompt), so the long prompt surely still prefills when the short one comes
    slow_fakes = EngineSpec("fake", {"prefill_s_per_token": 1e-4, "decode_s_per_token": 0.02,
                                     "context_tokens": 65536}).build
    runtime = build_runtime(_serve(plan_file, policy, slo=None, slo_ttft_s=0.5, slo_tpot_s=0.1,
                                   context_tokens=65536), engine_factory=slow_fakes)
    # the rule's own predictions: the long prompt misses the TTFT SLO anywhere (so it stays on its
    # primary), a short one behind it on replica 0 is past the spill point, on replica 1 well within
    speed = CostModelConfig(model=MODEL).resolve()[2]
    speed = PlanSpillRules(speed, (Slo(0.5, 0.1),) * 2).rule_for([SMALL]).speeds[0]
    assert predict(speed, 0, 0, 60000).ttft_s > 0.5
    assert predict(speed, 60000, 0, 2).ttft_s > SPILL_AT * 0.5 > predict(speed, 0, 0, 2).ttft_s
    with ServerThread(create_app(runtime)) as server:
        handles = runtime.router.table.handles
        assert handles[0].engine.cost.prefill_s(60000) > 5.0  # the long prompt is still prefilling
        client = openai_client(server)
        model = runtime.model_name
        long_reply: list = []

        def long_request():
            long_reply.append(client.completions.create(model=model, prompt="abcd" * 60000, max_tokens=2))

        worker = threading.Thread(target=long_request)
        worker.start()
        deadline = time.monotonic() + 30
        while handles[0].prefill_tokens < 60000 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert handles[0].prefill_tokens >= 60000
        short = client.completions.create(model=model, prompt="hi there", max_tokens=2)
        short_on = [h.name for h in handles if h.engine.num_served == 1]
        long_still_running = not long_reply
        worker.join(30)
    assert short.usage.completion_tokens == 2 and long_reply[0].usage.completion_tokens == 2
    assert long_still_running
    assert short_on == (["r1"] if policy == "slo-spill" else ["r0"])
    assert [h.engine.num_served for h in handles] == ([1, 1] if policy == "slo-spill" else [2, 0])


def test_a_plan_switch_brings_the_rule_of_the_new_replicas(tmp_path):
    from oserve.runtime.router import RoutingTable

    runtime = build_runtime(_serve(_plan_file(tmp_path, [SMALL, SMALL], [[1.0, 0.0], [0.0, 1.0]])))
    router = runtime.router
    before = router.spill_rule
    new_plan = static_plan(MODEL, [SMALL, LARGE, LARGE], ["T0", "T1"], [[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    router.set_table(RoutingTable(2, new_plan, router.table.handles + router.table.handles[:1]))
    cost = CostModelConfig(model=MODEL).resolve()[2]
    sim_speeds = [r.speed for r in replicas_from_configs(new_plan.configs(), cost)]
    assert list(router.spill_rule.speeds) == sim_speeds
    assert router.spill_rule.type_slos == before.type_slos
    assert router.spill_rule.speeds[1] != before.speeds[1]


def test_slo_spill_needs_an_slo_and_a_cost_model(tmp_path):
    plan_file = _plan_file(tmp_path, [SMALL, SMALL], [[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(ConfigError, match="--slo"):
        build_runtime(_serve(plan_file, slo=None))
    with pytest.raises(ConfigError, match="--cluster and --model, or --plan"):
        build_runtime(_serve(None))
    # --cluster/--model plan it, and their cost model times the rule
    runtime = build_runtime(_serve(None, cluster="1x2xH100", planner="default"))
    assert len(runtime.router.spill_rule.speeds) == len(runtime.router.table.handles)
    # no SLO needed for the other policies
    assert build_runtime(_serve(plan_file, "least-outstanding", slo=None)).router.spill_rule is None
