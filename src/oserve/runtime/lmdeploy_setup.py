"""``oserve serve --engine lmdeploy``: the settings of TurboMind replicas (``LmdeployServeConfig``) ->
an ``EngineSpec``.

TurboMind runs on NVIDIA GPUs only, so an LMDeploy fleet is a planned one (``--cluster`` or ``--plan``)
and serves the weights of the planned model (``--hf-model``; an AWQ checkpoint where the plan chose
int4 weights). Each replica is one ``lmdeploy serve api_server`` (``lmdeploy_engine``).
"""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field

from oserve.common.errors import ConfigError
from oserve.runtime.engine_spec import EngineSpec


class LmdeployServeConfig(BaseModel):
    """What ``oserve serve`` sets for every LMDeploy replica (unknown keys rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    executable: str = Field("lmdeploy", min_length=1)  # the lmdeploy console script
    log_dir: str | None = None  # each replica's output to LOG_DIR/lmdeploy-rN-PORT.log (default: inherit)
    extra_args: tuple[str, ...] = ()  # more api_server flags for every replica
    startup_timeout_s: float = Field(1800.0, gt=0, allow_inf_nan=False)


def lmdeploy_engine_spec(config: LmdeployServeConfig, hf_model: str | None, served_name: str,
                         planned: bool, context_tokens: int) -> EngineSpec:
    """The LMDeploy replicas' engine spec; ConfigError for a fleet TurboMind cannot serve."""
    if not planned:
        raise ConfigError("--engine lmdeploy runs TurboMind on NVIDIA GPUs: give --cluster and --model "
                          "(or --plan) so that replicas have GPUs")
    if not hf_model:
        raise ConfigError("--engine lmdeploy needs --hf-model (the weights of the planned model)")
    if config.log_dir:
        os.makedirs(config.log_dir, exist_ok=True)
    return EngineSpec("lmdeploy", {"model": hf_model, "served_name": served_name,
                                   "session_len": context_tokens, "executable": config.executable,
                                   "log_dir": config.log_dir,
                                   "startup_timeout_s": config.startup_timeout_s,
                                   "extra_args": tuple(config.extra_args)})


__all__ = ["LmdeployServeConfig", "lmdeploy_engine_spec"]
