"""A replica that is an OpenAI-compatible server run as a child process (vLLM, LMDeploy), driven over HTTP.

The one life cycle that every process engine shares: start the command in a session (process group) of
its own, so that stopping or killing the replica takes the server's children (vLLM's engine core,
TurboMind's workers) with it; wait until its ``/health`` answers, failing early with the tail of its log
if it exits; then serve through ``RemoteOpenAIEngine``. While it runs, its own Prometheus ``/metrics``
is scraped every ``metrics_interval_s`` by the engine's ``parse_metrics`` (vLLM's or LMDeploy's names):
requests running and waiting become the router's load signal (``load()``), with the KV-cache usage and
preemptions. When ``health_needs_metrics`` is set, a health check scrapes too, so a server whose metrics
stop answering fails its check. A process that exits makes the engine unhealthy and its requests fail
with ``EngineDeadError``. Which server a replica runs (its ``ServerCommand``) is decided by the
launchers (``vllm_launch``, ``lmdeploy_engine``); this module knows nothing about either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from oserve.runtime.clock import Clock, WallClock
from oserve.runtime.cpu_pinning import start_pinned
from oserve.runtime.engine import EngineInfo, EngineLoad, GenerationRequest, TokenChunk
from oserve.runtime.errors import EngineDeadError, EngineStartError
from oserve.runtime.remote_engine import RemoteOpenAIEngine
from oserve.runtime.vllm_metrics import ServerStats

log = logging.getLogger("oserve.runtime.process")
STOP_GRACE_S = 30.0


@dataclass(frozen=True)
class ServerCommand:
    """What starts one replica's server and where it will listen."""

    kind: str                    # "vllm", "lmdeploy": names the engine, its logs and its errors
    argv: tuple[str, ...]
    host: str
    port: int
    served_name: str
    context_tokens: int
    env: Mapping[str, str] = field(default_factory=dict)  # the whole environment of the child
    install_hint: str = ""       # how to get argv[0] when it is not found
    cpu_cores: tuple[int, ...] = ()  # CPU replicas: the cores the whole process tree is born on


class ProcessEngine:
    """Starts one server for one replica, waits until healthy, then serves through HTTP."""

    def __init__(self, server: ServerCommand, startup_timeout_s: float = 900.0,
                 clock: Clock | None = None, log_path: str | Path | None = None,
                 metrics_interval_s: float = 0.5,
                 parse_metrics: Callable[[str], ServerStats] | None = None,
                 health_needs_metrics: bool = True) -> None:
        self.server = server
        self.startup_timeout_s = startup_timeout_s
        self.clock = clock or WallClock()
        self.log_path = Path(log_path) if log_path else None
        self.metrics_interval_s = metrics_interval_s
        self.parse_metrics = parse_metrics
        self.health_needs_metrics = health_needs_metrics and parse_metrics is not None
        self.remote = RemoteOpenAIEngine(f"http://{server.host}:{server.port}", server.served_name,
                                         name=f"{server.kind}:{server.port}",
                                         context_tokens=server.context_tokens)
        self.info: EngineInfo = self.remote.info
        self.info.extra.update(kind=server.kind, command=list(server.argv))
        self.stats = ServerStats()
        self._process: asyncio.subprocess.Process | None = None
        self._poller: asyncio.Task | None = None
        self._metrics_client: httpx.AsyncClient | None = None  # its own, for /metrics

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def _where(self) -> str:
        return f"{self.server.kind} replica on port {self.server.port}"

    async def start(self) -> None:
        argv = list(self.server.argv)
        # checked here, in the child's PATH: a pinned start execs the command from a trampoline
        if shutil.which(argv[0], path=self.server.env.get("PATH") if self.server.env else None) is None:
            raise EngineStartError(f"'{argv[0]}' not found: {self.server.install_hint}")
        out = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115 - child owns a copy
        try:
            # confined to its cores from the start, never moving itself there (cpu_pinning)
            self._process = await start_pinned(
                argv, self.server.cpu_cores, env=dict(self.server.env) or None,
                stdin=asyncio.subprocess.DEVNULL, stdout=out,
                stderr=asyncio.subprocess.STDOUT if out else None, start_new_session=True)
        except FileNotFoundError:
            raise EngineStartError(f"'{argv[0]}' not found: {self.server.install_hint}") from None
        finally:
            if out is not None:
                out.close()
        self.info.extra["pid"] = self._process.pid
        cores = f" on cores {list(self.server.cpu_cores)}" if self.server.cpu_cores else ""
        log.info("%s: started (pid %d)%s: %s", self._where(), self._process.pid, cores, " ".join(argv))
        try:
            await self._wait_healthy()
        except BaseException:
            # a start that fails or is cancelled (a shutdown during a restart) must not leave the
            # process behind: it runs in a session of its own, so nothing else would stop it
            await asyncio.shield(self.stop())
            raise

    async def _wait_healthy(self) -> None:
        process = self._process
        assert process is not None  # set by start
        await self.remote.start()
        self._metrics_client = httpx.AsyncClient(base_url=self.remote.base_url, timeout=5.0)
        deadline_s = self.clock.now_s() + self.startup_timeout_s
        while self.clock.now_s() < deadline_s:
            if process.returncode is not None:
                raise EngineStartError(f"{self.server.kind} exited with code {process.returncode} "
                                       f"during start{self._log_tail()}")
            if await self.remote.health():
                await self._scrape()
                self._poller = asyncio.create_task(self._poll_metrics())
                return
            await self.clock.sleep(1.0)
        raise EngineStartError(f"{self.server.kind} did not become healthy within "
                               f"{self.startup_timeout_s:.0f} s{self._log_tail()}")

    def _log_tail(self, num_lines: int = 8) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        lines = self.log_path.read_text(errors="replace").strip().splitlines()[-num_lines:]
        return f"; last lines of {self.log_path}: " + " | ".join(lines)

    async def _scrape(self) -> bool:
        client = self._metrics_client
        if client is None or self.parse_metrics is None:
            return False
        try:
            response = await client.get("/metrics")
        except httpx.HTTPError:
            return False
        if response.status_code != 200:
            return False
        self.stats = self.parse_metrics(response.text)
        return True

    async def _poll_metrics(self) -> None:
        while self.is_running and self.parse_metrics is not None:
            await self._scrape()
            await self.clock.sleep(self.metrics_interval_s)

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
                log.warning("%s pid %d ignored SIGTERM for %.0f s; killing it", self.server.kind,
                            process.pid, STOP_GRACE_S)
        self._signal(process, signal.SIGKILL)  # whatever is left of its group (engine core, workers)
        await process.wait()

    @staticmethod
    def _signal(process: asyncio.subprocess.Process, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)  # the process is its group's leader (start_new_session)

    async def health(self) -> bool:
        if not self.is_running or not await self.remote.health():
            return False
        scraped = await self._scrape()
        return scraped or not self.health_needs_metrics

    def load(self) -> EngineLoad:
        # the router counts what it sent; the server says how much of it is still waiting for a slot
        stats = self.stats
        return EngineLoad(stats.num_running, stats.num_waiting, stats.kv_cache_usage,
                          stats.num_preemptions)

    def count_tokens(self, text: str) -> int:
        return self.remote.count_tokens(text)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenChunk]:
        if not self.is_running:
            raise EngineDeadError(f"{self._where()} is not running")
        async for chunk in self.remote.generate(request):
            yield chunk

    async def log_likelihood(self, messages: tuple[dict, ...], continuation: str) -> tuple[float, ...]:
        """Scoring through the replica's own OpenAI server (see ``RemoteOpenAIEngine``)."""
        if not self.is_running:
            raise EngineDeadError(f"{self._where()} is not running")
        return await self.remote.log_likelihood(messages, continuation)


__all__ = ["STOP_GRACE_S", "ProcessEngine", "ServerCommand"]
