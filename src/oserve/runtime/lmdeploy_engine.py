"""LMDeploy TurboMind replicas: the ``lmdeploy serve api_server`` command of a plan replica, run as a process.

TurboMind is the engine built around the number formats of ``oserve.quant``: INT4 AWQ weights
(``--model-format awq``, group 128), FP8 weights (``--model-format fp8``), and per-head per-token INT8 or
INT4 KV caches (``--quant-policy 8`` / ``4``). The command is built by a pure function, so that it can
be checked without a GPU; the flags follow LMDeploy 0.18's ``lmdeploy/cli`` argument definitions
(``tests/runtime/test_lmdeploy_command.py`` parses them with LMDeploy's own parser when it is
importable). ``LmdeployProcessEngine`` runs it through the shared ``ProcessEngine`` life cycle (health
wait, ``/metrics`` under LMDeploy's names, stop with its workers) and serves through the
OpenAI-compatible ``RemoteOpenAIEngine``, like vLLM. A replica sees only its own GPUs
(``CUDA_VISIBLE_DEVICES``).

Engine settings map to TurboMind's names: ``max_num_seqs`` is ``--max-batch-size`` and the chunked-prefill
budget ``max_num_batched_tokens`` is ``--max-prefill-token-num``. TurboMind has no pipeline parallelism
and no FP8 KV cache (LMDeploy's ``TurbomindEngineConfig`` refuses quant_policy fp8), and it needs NVIDIA
GPUs: such replicas are refused with the reason.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.plan import COLOCATED, Replica
from oserve.runtime.clock import Clock
from oserve.runtime.errors import EngineStartError
from oserve.runtime.process_engine import ProcessEngine, ServerCommand
from oserve.runtime.vllm_metrics import parse_lmdeploy_metrics

WEIGHT_MODEL_FORMAT = {"bf16": "hf", "fp8": "fp8", "int4": "awq"}
KV_QUANT_POLICY = {"bf16": 0, "int8": 8, "int4": 4}
PRECISION_DTYPE = {"bf16": "bfloat16", "fp16": "float16"}
INSTALL_HINT = "install LMDeploy on this GPU machine (pip install lmdeploy) or pass --lmdeploy-executable"


@dataclass(frozen=True)
class LmdeployLaunch:
    """Everything that decides a TurboMind replica's command line and environment."""

    model: str  # local path or id of the weights (an AWQ checkpoint for int4 weights)
    served_name: str
    port: int
    tp: int = 1
    gpu_ids: tuple[int, ...] = ()  # node-local GPU indices
    model_format: str = "hf"
    quant_policy: int = 0
    dtype: str = "bfloat16"
    host: str = "127.0.0.1"
    max_batch_size: int | None = None
    max_prefill_token_num: int | None = None
    session_len: int | None = None
    extra_args: tuple[str, ...] = ()
    executable: str = "lmdeploy"


def lmdeploy_launch_for(config: ReplicaConfig, model: str, served_name: str, port: int,
                        session_len: int | None = None, gpu_ids: tuple[int, ...] = (),
                        extra_args: Sequence[str] = (), executable: str = "lmdeploy") -> LmdeployLaunch:
    """The TurboMind launch of a replica configuration, or EngineStartError naming what it cannot run."""
    if config.gpu_type.lower() == "cpu":
        raise EngineStartError(f"{config.label()}: TurboMind runs on NVIDIA GPUs, not on a CPU replica "
                               "(use --engine embedded or vllm there)")
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
    return LmdeployLaunch(model=model, served_name=served_name, port=port, tp=config.tp, gpu_ids=gpu_ids,
                          model_format=WEIGHT_MODEL_FORMAT[config.weight_format],
                          quant_policy=KV_QUANT_POLICY[config.kv_cache_dtype],
                          dtype=PRECISION_DTYPE[config.precision],
                          max_batch_size=config.max_num_seqs or None,
                          max_prefill_token_num=config.max_num_batched_tokens or None,
                          session_len=session_len, extra_args=tuple(extra_args), executable=executable)


def lmdeploy_launch_for_replica(replica: Replica, model: str, served_name: str, port: int,
                                gpus_per_node: int = 8, session_len: int | None = None,
                                extra_args: Sequence[str] = (),
                                executable: str = "lmdeploy") -> LmdeployLaunch:
    """The launch of a plan replica: its configuration's formats and TP, and its node-local GPUs."""
    config = replica.config
    if replica.role != COLOCATED:
        raise EngineStartError(f"replica {replica.replica_id} is a {replica.role} replica of a "
                               "disaggregated group: oserve drives prefill/decode disaggregation through "
                               "vLLM's KV transfer only (use --engine vllm)")
    if config.num_gpus != len(replica.gpus):
        raise EngineStartError(f"replica {replica.replica_id} has {len(replica.gpus)} GPUs but "
                               f"TP{config.tp} x PP{config.pp} needs {config.num_gpus}")
    return lmdeploy_launch_for(config, model, served_name, port, session_len,
                               tuple(g % gpus_per_node for g in replica.gpus), extra_args, executable)


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
    return cmd + list(launch.extra_args)


def lmdeploy_env(launch: LmdeployLaunch, base: dict[str, str] | None = None) -> dict[str, str]:
    """The replica's environment: offline (the weights are local) and only its own GPUs visible."""
    env = dict(os.environ if base is None else base)
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    if launch.gpu_ids:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in launch.gpu_ids)
    return env


def lmdeploy_server(launch: LmdeployLaunch) -> ServerCommand:
    return ServerCommand("lmdeploy", tuple(lmdeploy_command(launch)), launch.host, launch.port,
                         launch.served_name, launch.session_len or 4096, env=lmdeploy_env(launch),
                         install_hint=INSTALL_HINT)


class LmdeployProcessEngine(ProcessEngine):
    """One ``lmdeploy serve api_server`` per replica. Its metrics are read when it serves them; its
    health is its ``/health`` alone (older LMDeploy releases serve no ``/metrics`` by default)."""

    def __init__(self, launch: LmdeployLaunch, startup_timeout_s: float = 1800.0,
                 clock: Clock | None = None, log_path: str | Path | None = None,
                 metrics_interval_s: float = 0.5) -> None:
        super().__init__(lmdeploy_server(launch), startup_timeout_s, clock, log_path, metrics_interval_s,
                         parse_metrics=parse_lmdeploy_metrics, health_needs_metrics=False)
        self.launch = launch


__all__ = ["KV_QUANT_POLICY", "LmdeployLaunch", "LmdeployProcessEngine", "WEIGHT_MODEL_FORMAT",
           "lmdeploy_command", "lmdeploy_env", "lmdeploy_launch_for", "lmdeploy_launch_for_replica",
           "lmdeploy_server"]
