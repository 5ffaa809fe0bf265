"""Every vLLM command line oserve builds, parsed by vLLM's own ``serve`` argument parser.

A flag that vLLM renamed or dropped fails here instead of on a GPU cluster. The commands come from the
same code the runtime uses (``launch_for_replica`` -> ``vllm_command``, and ``EngineSpec.build`` for the
whole serve path), over CPU replicas, GPU replicas with TP/PP, every precision, engine settings, and the
replicas of real plans. Needs an interpreter with vLLM (``$OSERVE_VLLM_PYTHON`` or this one); skipped
otherwise.
"""

from __future__ import annotations

import pytest

from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.plan import DECODE, PREFILL, Replica
from oserve.runtime.engine_spec import EngineSpec
from oserve.runtime.vllm_launch import CPU_API_SERVER_MODULE, launch_for_replica, vllm_command

from .vllm_fixtures import parse_with_vllm, require_vllm_python


def server_args(cmd: list[str]) -> list[str]:
    """What vLLM's serve parser sees: after ``vllm serve`` or ``python -m MODULE``."""
    if cmd[1:3] == ["-m", CPU_API_SERVER_MODULE]:
        return cmd[3:]
    assert cmd[1] == "serve", cmd
    return cmd[2:]


def gpu_replicas() -> list[Replica]:
    replicas, rid = [], 0
    for tp, pp in [(1, 1), (2, 1), (4, 1), (8, 1), (1, 2), (2, 2), (4, 2)]:
        for precision in ("bf16", "fp16", "fp32", "fp8"):
            replicas.append(Replica(rid, tuple(range(tp * pp)), ReplicaConfig("H100", tp, pp, precision)))
            rid += 1
    for weights, kv in (("fp8", "fp8"), ("int4", "bf16"), ("int8", "fp8")):
        replicas.append(Replica(rid, (0, 1), ReplicaConfig("H100", 2, 1, weight_format=weights,
                                                          kv_cache_dtype=kv)))
        rid += 1
    replicas.append(Replica(rid, (0, 1), ReplicaConfig("A100", 2, 1, "bf16", 2048, 64)))
    return replicas


def planned_replicas() -> list[Replica]:
    from oserve.costmodel.catalog import load_models, parse_cluster
    from oserve.costmodel.cost_model import CostModel
    from oserve.planner.api import make_plan
    from oserve.workload import fit_request_types, load_trace

    trace = load_trace("azure-conv")
    stats = fit_request_types(trace, 3, 0).stats(trace)
    model = load_models().get("llama-2-13b")
    plan = make_plan(parse_cluster("1x8xH100"), model, stats, "oserve", CostModel(model))
    return list(plan.replicas)


def disagg_replicas() -> list[Replica]:
    """A group: a TP2 prefill replica (8192-token chunks) handing off to two TP1 decode replicas."""
    return [Replica(0, (0, 1), ReplicaConfig("H100", 2, 1, "bf16", 8192), PREFILL, 0),
            Replica(1, (2,), ReplicaConfig("H100"), DECODE, 0),
            Replica(2, (3,), ReplicaConfig("H100"), DECODE, 0)]


CPU_SETTINGS = [(0, 0), (512, 8), (4096, 256)]  # 0: vLLM's default
RENAMED_FLAG = ["m", "--tensor-parallel-degree", "2"]  # not a vLLM flag: the check must reject it


def cpu_replicas() -> list[Replica]:
    return [Replica(i, (i,), ReplicaConfig("cpu", 1, 1, "bf16", *s))
            for i, s in enumerate(CPU_SETTINGS)]


@pytest.fixture(scope="module")
def parsed():
    """Every command group built once and parsed in one vLLM process (importing vLLM takes seconds)."""
    python = require_vllm_python()
    gpu = gpu_replicas()
    groups = {
        "gpu": [vllm_command(launch_for_replica(r, "meta-llama/Llama-2-13b-hf", "llama-2-13b",
                                                30000 + r.replica_id, max_model_len=4096))
                for r in gpu],
        "cpu": [vllm_command(launch_for_replica(r, "/models/smollm2", "SmolLM2", 31000 + r.replica_id,
                                                python=python, max_model_len=2048))
                for r in cpu_replicas()],
    }
    groups["disagg"] = [vllm_command(launch_for_replica(r, "meta-llama/Llama-2-13b-hf", "llama-2-13b",
                                                    32000 + r.replica_id))
                        for r in disagg_replicas()]
    planned = planned_replicas()
    spec = EngineSpec("vllm", {"model": "meta-llama/Llama-2-13b-hf", "served_name": "llama-2-13b"})
    cpu_spec = EngineSpec("vllm", {"model": "/models/smollm2", "served_name": "SmolLM2",
                                   "python": python, "max_model_len": 2048})
    groups["serve_path"] = [spec.build(r).info.extra["command"] for r in planned] + [
        cpu_spec.build(Replica(0, (0,), ReplicaConfig("cpu"))).info.extra["command"]]
    flat = [(name, cmd) for name, cmds in groups.items() for cmd in cmds]
    results = parse_with_vllm(python, [server_args(cmd) for _, cmd in flat] + [RENAMED_FLAG])
    out: dict[str, list] = {name: [] for name in groups}
    for (name, cmd), result in zip(flat, results):
        out[name].append((cmd, result))
    out["renamed"] = results[-1]
    return {"gpu_replicas": gpu, "planned": planned, **out}


def values_of(pairs) -> list[dict]:
    bad = [(cmd, r["error"]) for cmd, r in pairs if not r["ok"]]
    assert not bad, f"vLLM's parser rejected {len(bad)} command(s); first: {bad[0]}"
    return [r["values"] for _, r in pairs]


def test_gpu_commands_parse_and_carry_tp_pp_precision_and_settings(parsed):
    values = values_of(parsed["gpu"])
    for replica, v in zip(parsed["gpu_replicas"], values):
        config = replica.config
        assert v["model_tag"] == "meta-llama/Llama-2-13b-hf"
        assert (v["tensor_parallel_size"], v["pipeline_parallel_size"]) == (config.tp, config.pp)
        if config.weight_format != "bf16":
            assert v["quantization"] == {"fp8": "fp8", "int4": "awq", "int8": "compressed-tensors"}[
                config.weight_format]
            assert v["kv_cache_dtype"] == ("fp8" if config.kv_cache_dtype == "fp8" else "auto")
        elif config.precision == "fp8":
            assert v["quantization"] == "fp8"
        else:
            assert v["dtype"] == {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[
                config.precision]
        assert v["host"] == "127.0.0.1" and v["port"] == 30000 + replica.replica_id
        assert v["max_model_len"] == 4096 and v["served_model_name"] == ["llama-2-13b"]
    assert (values[-1]["max_num_batched_tokens"], values[-1]["max_num_seqs"]) == (2048, 64)
    assert values[0]["max_num_seqs"] is None  # unset settings are left to vLLM


def test_cpu_commands_parse_as_fp32_eager_tp1_with_the_engine_settings(parsed):
    for v, settings in zip(values_of(parsed["cpu"]), CPU_SETTINGS):
        assert v["model"] == "/models/smollm2" and v["dtype"] == "float32" and v["enforce_eager"]
        assert (v["tensor_parallel_size"], v["pipeline_parallel_size"]) == (1, 1)
        assert (v["max_num_batched_tokens"] or 0, v["max_num_seqs"] or 0) == settings


def test_commands_of_a_planned_gpu_fleet_and_the_serve_path_parse(parsed):
    values = values_of(parsed["serve_path"])
    assert [(v["tensor_parallel_size"], v["pipeline_parallel_size"]) for v in values[:-1]] == \
        [(r.config.tp, r.config.pp) for r in parsed["planned"]]
    assert values[-1]["dtype"] == "float32"


def test_disaggregated_replicas_get_nixl_kv_transfer_configs_with_their_roles(parsed):
    """vLLM parses each role's --kv-transfer-config into its KVTransferConfig (role validated)."""
    values = values_of(parsed["disagg"])
    roles = ["kv_producer", "kv_consumer", "kv_consumer"]
    for v, role, replica in zip(values, roles, disagg_replicas()):
        config = str(v["kv_transfer_config"])
        assert "kv_connector='NixlConnector'" in config and f"kv_role='{role}'" in config
        assert v["tensor_parallel_size"] == replica.config.tp
    assert values[0]["max_num_batched_tokens"] == 8192
    assert values_of(parsed["gpu"])[0]["kv_transfer_config"] is None  # colocated: no connector


def test_a_renamed_flag_is_caught_by_the_parser(parsed):
    """The check can fail: a flag vLLM does not know is reported, not ignored."""
    result = parsed["renamed"]
    assert not result["ok"] and "tensor-parallel-degree" in " ".join(result["error"])
