"""LMDeploy TurboMind replicas: the ``lmdeploy serve api_server`` command of a plan replica.

TurboMind is the engine built around the number formats of ``oserve.quant``: INT4 AWQ weights
(``--model-format awq``, group 128), FP8 weights (``--model-format fp8``), and per-head per-token INT8 or
INT4 KV caches (``--quant-policy 8`` / ``4``). Its server speaks the OpenAI API, so generation goes
through ``RemoteOpenAIEngine`` as for vLLM. The command is built by a pure function so that it can be
checked without a GPU; the flags follow LMDeploy's ``lmdeploy/cli`` argument definitions.

Engine settings map to TurboMind's names: ``max_num_seqs`` is ``--max-batch-size`` and the chunked-prefill
budget ``max_num_batched_tokens`` is ``--max-prefill-token-num``. TurboMind has no pipeline parallelism
and no FP8 KV cache: such replicas are refused with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from oserve.costmodel.replica_config import ReplicaConfig
from oserve.runtime.errors import EngineStartError

WEIGHT_MODEL_FORMAT = {"bf16": "hf", "fp8": "fp8", "int4": "awq"}
KV_QUANT_POLICY = {"bf16": 0, "int8": 8, "int4": 4}
PRECISION_DTYPE = {"bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class LmdeployLaunch:
    """Everything that decides a TurboMind replica's command line."""

    model: str  # local path or id of the weights (an AWQ checkpoint for int4 weights)
    served_name: str
    port: int
    tp: int = 1
    model_format: str = "hf"
    quant_policy: int = 0
    dtype: str = "bfloat16"
    host: str = "127.0.0.1"
    max_batch_size: int | None = None
    max_prefill_token_num: int | None = None
    session_len: int | None = None
    executable: str = "lmdeploy"


def lmdeploy_launch_for(config: ReplicaConfig, model: str, served_name: str, port: int,
                        session_len: int | None = None) -> LmdeployLaunch:
    """The TurboMind launch of a replica configuration, or EngineStartError naming what it cannot run."""
    if config.pp > 1:
        raise EngineStartError(f"{config.label()}: TurboMind has no pipeline parallelism (PP must be 1)")
    if config.weight_format not in WEIGHT_MODEL_FORMAT:
        raise EngineStartError(f"{config.label()}: TurboMind serves weights as "
                               f"{', '.join(WEIGHT_MODEL_FORMAT)}, not {config.weight_format}")
    if config.kv_cache_dtype not in KV_QUANT_POLICY:
        raise EngineStartError(f"{config.label()}: TurboMind's KV cache is "
                               f"{', '.join(KV_QUANT_POLICY)}, not {config.kv_cache_dtype}")
    if config.precision not in PRECISION_DTYPE:
        raise EngineStartError(f"{config.label()}: TurboMind computes in bf16 or fp16, not "
                               f"{config.precision}")
    return LmdeployLaunch(model=model, served_name=served_name, port=port, tp=config.tp,
                          model_format=WEIGHT_MODEL_FORMAT[config.weight_format],
                          quant_policy=KV_QUANT_POLICY[config.kv_cache_dtype],
                          dtype=PRECISION_DTYPE[config.precision],
                          max_batch_size=config.max_num_seqs or None,
                          max_prefill_token_num=config.max_num_batched_tokens or None,
                          session_len=session_len)


def lmdeploy_command(launch: LmdeployLaunch) -> list[str]:
    """The ``lmdeploy serve api_server`` command line of one replica."""
    cmd = [launch.executable, "serve", "api_server", launch.model, "--backend", "turbomind",
           "--model-name", launch.served_name, "--server-name", launch.host,
           "--server-port", str(launch.port), "--tp", str(launch.tp),
           "--model-format", launch.model_format, "--quant-policy", str(launch.quant_policy),
           "--dtype", launch.dtype]
    if launch.max_batch_size:
        cmd += ["--max-batch-size", str(launch.max_batch_size)]
    if launch.max_prefill_token_num:
        cmd += ["--max-prefill-token-num", str(launch.max_prefill_token_num)]
    if launch.session_len:
        cmd += ["--session-len", str(launch.session_len)]
    return cmd


__all__ = ["LmdeployLaunch", "lmdeploy_command", "lmdeploy_launch_for"]
