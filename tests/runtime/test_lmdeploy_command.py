"""TurboMind launch commands: formats map to LMDeploy's flags; what TurboMind cannot run is refused."""

import argparse

import pytest

from oserve.costmodel.replica_config import ReplicaConfig
from oserve.runtime.errors import EngineStartError
from oserve.runtime.lmdeploy_engine import lmdeploy_command, lmdeploy_launch_for


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
])
def test_what_turbomind_cannot_run_is_refused_with_the_reason(cfg, reason):
    with pytest.raises(EngineStartError, match=reason):
        lmdeploy_launch_for(cfg, "m", "m", 1)


def test_commands_parse_with_lmdeploys_own_parser():
    """Skipped unless LMDeploy is installed: then a renamed flag fails here, not on a GPU cluster."""
    cli = pytest.importorskip("lmdeploy.cli.serve")
    parser = cli.SubCliServe.parser
    assert isinstance(parser, argparse.ArgumentParser)
    cli.SubCliServe.add_parser_api_server()
    cfg = ReplicaConfig("H100-80GB", 2, 1, weight_format="int4", kv_cache_dtype="int4")
    cmd = lmdeploy_command(lmdeploy_launch_for(cfg, "m", "m", 9001))
    args = parser.parse_args(cmd[2:])
    assert args.tp == 2 and args.quant_policy == 4 and args.model_format == "awq"


def test_engine_settings_use_turbomind_names():
    cfg = ReplicaConfig("H100-80GB", 1, 1, max_num_batched_tokens=2048, max_num_seqs=64)
    f = flags(lmdeploy_command(lmdeploy_launch_for(cfg, "m", "m", 1)))
    assert f["--max-prefill-token-num"] == "2048" and f["--max-batch-size"] == "64"
    plain = flags(lmdeploy_command(lmdeploy_launch_for(ReplicaConfig("H100-80GB"), "m", "m", 1)))
    assert "--max-prefill-token-num" not in plain and "--max-batch-size" not in plain
