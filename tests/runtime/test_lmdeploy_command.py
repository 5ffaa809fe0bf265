"""TurboMind launch commands: formats map to LMDeploy's flags; what TurboMind cannot run is refused."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from oserve.costmodel.replica_config import ReplicaConfig
from oserve.runtime.errors import EngineStartError
from oserve.runtime.lmdeploy_engine import (
    KV_QUANT_POLICY,
    WEIGHT_MODEL_FORMAT,
    lmdeploy_command,
    lmdeploy_launch_for,
)

PARSE_CHECK = Path(__file__).with_name("lmdeploy_parse_check.py")


def flags(cmd: list[str]) -> dict[str, str]:
    return {cmd[i]: cmd[i + 1] for i in range(len(cmd) - 1) if cmd[i].startswith("--")}


def test_int4_weights_and_int8_kv_become_awq_and_quant_policy_8():
    cfg = ReplicaConfig("H100-80GB", 2, 1, weight_format="int4", kv_cache_dtype="int8")
    cmd = lmdeploy_command(lmdeploy_launch_for(cfg, "/models/llama-2-70b-awq", "llama", 9001))
    assert cmd[:4] == ["lmdeploy", "serve", "api_server", "/models/llama-2-70b-awq"]
    f = flags(cmd)
    assert f["--backend"] == "turbomind" and f["--tp"] == "2"
    assert f["--model-format"] == "awq" and f["--quant-policy"] == "8"
    assert f["--server-port"] == "9001" and f["--server-name"] == "127.0.0.1"
    assert f["--model-name"] == "llama" and f["--dtype"] == "bfloat16"


@pytest.mark.parametrize("weights, kv, policy, fmt", [("bf16", "bf16", "0", "hf"),
                                                      ("fp8", "int4", "4", "fp8")])
def test_format_mapping(weights, kv, policy, fmt):
    cfg = ReplicaConfig("H100-80GB", 1, 1, weight_format=weights, kv_cache_dtype=kv)
    f = flags(lmdeploy_command(lmdeploy_launch_for(cfg, "m", "m", 1)))
    assert (f["--quant-policy"], f["--model-format"]) == (policy, fmt)


@pytest.mark.parametrize("cfg, reason", [
    (ReplicaConfig("H100-80GB", 2, 2), "pipeline"),
    (ReplicaConfig("H100-80GB", 1, 1, kv_cache_dtype="fp8"), "KV cache"),
    (ReplicaConfig("H100-80GB", 1, 1, weight_format="int8"), "weights"),
    (ReplicaConfig("cpu"), "NVIDIA GPUs"),
    (ReplicaConfig("H100-80GB", 1, 1, precision="fp32"), "bf16 or fp16"),
])
def test_what_turbomind_cannot_run_is_refused_with_the_reason(cfg, reason):
    with pytest.raises(EngineStartError, match=reason):
        lmdeploy_launch_for(cfg, "m", "m", 1)


def lmdeploy_python() -> str:
    """An interpreter that imports LMDeploy's CLI: ``$OSERVE_LMDEPLOY_PYTHON`` or this one; else skip."""
    explicit = os.environ.get("OSERVE_LMDEPLOY_PYTHON")
    if explicit and Path(explicit).is_file():
        return explicit
    if importlib.util.find_spec("lmdeploy") is not None:
        return sys.executable
    pytest.skip("LMDeploy is not importable here: set OSERVE_LMDEPLOY_PYTHON to a python where "
                "'pip install lmdeploy --no-deps' (and the light modules its CLI imports) is installed")


def parse_with_lmdeploy(argvs: list[list[str]]) -> list[dict]:
    result = subprocess.run([lmdeploy_python(), str(PARSE_CHECK)], input=json.dumps(argvs),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_commands_parse_with_lmdeploys_own_parser():
    """Every format, TP and engine setting oserve launches, through LMDeploy's own CLI parser and its
    TurbomindEngineConfig: a renamed flag or a refused value fails here, not on a GPU cluster."""
    configs = [ReplicaConfig("H100-80GB", tp, 1, precision, batched, seqs, weights, kv)
               for tp in (1, 2, 4, 8) for weights in WEIGHT_MODEL_FORMAT for kv in KV_QUANT_POLICY
               for precision, batched, seqs in (("bf16", 0, 0), ("fp16", 2048, 64))]
    launches = [lmdeploy_launch_for(c, "/models/m", "served", 9000 + i, session_len=4096)
                for i, c in enumerate(configs)]
    parsed = parse_with_lmdeploy([lmdeploy_command(launch)[1:] for launch in launches])
    for config, launch, result in zip(configs, launches, parsed, strict=True):
        assert result["ok"], (config.label(), result)
        values = result["values"]
        assert values["backend"] == "turbomind" and values["model_path"] == "/models/m"
        assert (values["tp"], values["server_port"], values["model_name"]) == (config.tp, launch.port,
                                                                             "served")
        assert values["model_format"] == WEIGHT_MODEL_FORMAT[config.weight_format]
        assert values["quant_policy"] == KV_QUANT_POLICY[config.kv_cache_dtype]
        assert values["max_batch_size"] == (config.max_num_seqs or None)
        assert values["max_prefill_token_num"] == (config.max_num_batched_tokens or 8192)
        assert values["session_len"] == 4096


def test_lmdeploys_parser_refuses_what_oserve_refuses():
    """The refusals in lmdeploy_launch_for are LMDeploy's own: an fp8 KV cache (quant_policy 16) parses
    but TurboMind's engine config rejects it, and an unknown flag is a parser error."""
    fp8_kv, unknown = parse_with_lmdeploy([["serve", "api_server", "m", "--backend", "turbomind",
                                            "--quant-policy", "16"],
                                           ["serve", "api_server", "m", "--pipeline-parallel-size", "2"]])
    assert not fp8_kv["ok"] and "FP8" in " ".join(fp8_kv["error"])
    assert not unknown["ok"] and "unrecognized arguments" in " ".join(unknown["error"])


def test_engine_settings_use_turbomind_names():
    cfg = ReplicaConfig("H100-80GB", 1, 1, max_num_batched_tokens=2048, max_num_seqs=64)
    f = flags(lmdeploy_command(lmdeploy_launch_for(cfg, "m", "m", 1)))
    assert f["--max-prefill-token-num"] == "2048" and f["--max-batch-size"] == "64"
    plain = flags(lmdeploy_command(lmdeploy_launch_for(ReplicaConfig("H100-80GB"), "m", "m", 1)))
    assert "--max-prefill-token-num" not in plain and "--max-batch-size" not in plain
