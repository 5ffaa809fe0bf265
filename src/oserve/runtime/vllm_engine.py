"""A vLLM replica launched as a process (``vllm serve``) with the plan's TP and PP, driven over HTTP.

The launch command is built by a pure function from the plan's replica (``vllm_command``), so it can be
checked without a GPU. The process binds 127.0.0.1 on a free port, sees only its replica's GPUs through
``CUDA_VISIBLE_DEVICES``, and is healthy once its ``/health`` answers. Generation goes through
``RemoteOpenAIEngine``; a process that exits makes the engine unhealthy and its requests fail with
``EngineDeadError``.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from oserve.planner.plan import Replica
from oserve.runtime.clock import Clock, WallClock
from oserve.runtime.engine import EngineInfo, EngineLoad, GenerationRequest, TokenChunk
from oserve.runtime.errors import EngineDeadError, EngineStartError
from oserve.runtime.remote_engine import RemoteOpenAIEngine

PRECISION_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@dataclass(frozen=True)
class VllmLaunch:
    """Everything that decides a vLLM replica's command line."""

    model: str                      # Hugging Face id or local path of the weights
    served_name: str
    port: int
    tp: int = 1
    pp: int = 1
    gpu_ids: tuple[int, ...] = ()   # node-local GPU indices
    precision: str = "bf16"
    host: str = "127.0.0.1"
    max_model_len: int | None = None
    max_num_batched_tokens: int | None = None  # None: vLLM's default
    max_num_seqs: int | None = None
    gpu_memory_utilization: float = 0.90
    extra_args: tuple[str, ...] = ()
    executable: str = "vllm"


def vllm_command(launch: VllmLaunch) -> list[str]:
    """The ``vllm serve`` command line of one replica."""
    cmd = [launch.executable, "serve", launch.model, "--served-model-name", launch.served_name,
           "--host", launch.host, "--port", str(launch.port),
           "--tensor-parallel-size", str(launch.tp), "--pipeline-parallel-size", str(launch.pp),
           "--gpu-memory-utilization", f"{launch.gpu_memory_utilization:g}"]
    if launch.precision in PRECISION_DTYPE:
        cmd += ["--dtype", PRECISION_DTYPE[launch.precision]]
    elif launch.precision == "fp8":
        cmd += ["--quantization", "fp8"]
    if launch.max_model_len:
        cmd += ["--max-model-len", str(launch.max_model_len)]
    if launch.max_num_batched_tokens:
        cmd += ["--max-num-batched-tokens", str(launch.max_num_batched_tokens)]
    if launch.max_num_seqs:
        cmd += ["--max-num-seqs", str(launch.max_num_seqs)]
    return cmd + list(launch.extra_args)


def vllm_env(launch: VllmLaunch, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    if launch.gpu_ids:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in launch.gpu_ids)
    return env


def launch_for_replica(replica: Replica, model: str, served_name: str, port: int,
                       gpus_per_node: int = 8, extra_args: Sequence[str] = ()) -> VllmLaunch:
    """The launch of a plan replica: its TP/PP, precision, engine settings and node-local GPU ids."""
    if replica.config.num_gpus != len(replica.gpus):
        raise EngineStartError(f"replica {replica.replica_id} has {len(replica.gpus)} GPUs but "
                               f"TP{replica.config.tp} x PP{replica.config.pp} needs "
                               f"{replica.config.num_gpus}")
    return VllmLaunch(model=model, served_name=served_name, port=port, tp=replica.config.tp,
                      pp=replica.config.pp, gpu_ids=tuple(g % gpus_per_node for g in replica.gpus),
                      precision=replica.config.precision,
                      max_num_batched_tokens=replica.config.max_num_batched_tokens or None,
                      max_num_seqs=replica.config.max_num_seqs or None, extra_args=tuple(extra_args))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class VllmProcessEngine:
    """Starts ``vllm serve`` for one replica, waits until healthy, then serves through HTTP."""

    def __init__(self, launch: VllmLaunch, startup_timeout_s: float = 900.0,
                 clock: Clock | None = None) -> None:
        self.launch = launch
        self.startup_timeout_s = startup_timeout_s
        self.clock = clock or WallClock()
        self.remote = RemoteOpenAIEngine(f"http://{launch.host}:{launch.port}", launch.served_name,
                                         name=f"vllm:{launch.port}")
        self.info: EngineInfo = self.remote.info
        self.info.extra.update(kind="vllm", command=vllm_command(launch))
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        try:
            self._process = await asyncio.create_subprocess_exec(
                *vllm_command(self.launch), env=vllm_env(self.launch))
        except FileNotFoundError:
            raise EngineStartError(f"'{self.launch.executable}' not found: install vLLM on this "
                                   "machine (pip install vllm)") from None
        await self.remote.start()
        deadline_s = self.clock.now_s() + self.startup_timeout_s
        while self.clock.now_s() < deadline_s:
            if self._process.returncode is not None:
                raise EngineStartError(f"vllm exited with code {self._process.returncode} during start")
            if await self.remote.health():
                return
            await self.clock.sleep(2.0)
        await self.stop()
        raise EngineStartError(f"vllm did not become healthy within {self.startup_timeout_s:.0f} s")

    async def stop(self) -> None:
        await self.remote.stop()
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 30.0)
        except TimeoutError:
            process.kill()
            await process.wait()

    async def health(self) -> bool:
        if self._process is None or self._process.returncode is not None:
            return False
        return await self.remote.health()

    def load(self) -> EngineLoad:
        return self.remote.load()

    def count_tokens(self, text: str) -> int:
        return self.remote.count_tokens(text)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenChunk]:
        if self._process is None or self._process.returncode is not None:
            raise EngineDeadError(f"vllm replica on port {self.launch.port} is not running")
        async for chunk in self.remote.generate(request):
            yield chunk


__all__ = ["VllmLaunch", "VllmProcessEngine", "free_port", "launch_for_replica", "vllm_command",
           "vllm_env"]
