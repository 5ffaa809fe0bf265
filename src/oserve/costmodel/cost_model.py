"""The cost model of one replica configuration: memory, step times and per-type capacity.

A replica runs ``num_layers / pp`` layers per pipeline stage, each layer sharded ``tp`` ways. An engine step
(as in vLLM's continuous batching) processes some prefill tokens and one decode token per running
sequence; its time on one stage is the calibrated layer time times the stage's layers, plus two
all-reduces per layer when ``tp > 1``, plus the LM head and a fixed per-step engine overhead. With
``pp > 1`` the stages work on up to ``pp`` micro-batches at once (``costmodel.pipeline``): a step's time is
``pp`` stage times of its largest micro-batch plus the stage-boundary transfers, so a step with fewer
items than stages, or one prompt chunk far larger than the rest, leaves the pipeline partly idle.

The planner, the simulator and the runtime's fake engines all time work with this one class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from oserve.common.errors import ConfigError
from oserve.costmodel.calibration import Calibration, load_calibration
from oserve.costmodel.catalog import GpuSpec, ModelSpec, load_gpus
from oserve.costmodel.operators import kv_heads_per_shard
from oserve.costmodel.precision import Factor, kv_format, resolve_weight_format
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.costmodel.step_pricer import OpKey, StepPricer

FP32_BYTES = 4.0
DEFAULT_TPOT_SLO_S = 0.1


@dataclass(frozen=True)
class EngineParams:
    """The engine settings a replica runs with (vLLM's names and defaults where they exist)."""

    gpu_memory_utilization: float = 0.90
    reserved_bytes_per_gpu: float = 2.0e9  # CUDA context, activations, CUDA graphs
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    step_overhead_s: float = 0.003  # scheduling, sampling and detokenisation per engine step
    kv_block_tokens: int = 16
    min_kv_tokens: int = 4096  # a config is usable only if it can hold this many tokens of KV


@dataclass(frozen=True)
class TypeLoad:
    """The mean shape of a request type, as the capacity computation needs it."""

    mean_input_tokens: float
    mean_output_tokens: float


@dataclass
class CostModel:
    """Timings and capacities of a model's replica configurations on the catalog's GPUs."""

    model: ModelSpec
    calibration: Calibration = field(default_factory=load_calibration)
    params: EngineParams = field(default_factory=EngineParams)
    gpus: dict[str, GpuSpec] = field(default_factory=dict)
    # Planning latency bound: capacities count only batches whose effective time per output token
    # (decode step plus interleaved prefill) stays under it. None plans for raw throughput.
    tpot_slo_s: float | None = DEFAULT_TPOT_SLO_S

    def __post_init__(self) -> None:
        if not self.gpus:
            cat = load_gpus()
            self.gpus = {n: cat.get(n) for n in cat.names()}
        # Per-instance cache (no global state: two cost models can coexist).
        self._capacity_cache: dict[tuple[ReplicaConfig, float, float], float] = {}
        # per configuration: its step times, each operator time memoised by what it reads (a
        # simulator's step-time misses ask for the same ones again and again: the same prefill at two
        # decode contexts, the same decode batch under many prefills)
        self._pricers: dict[ReplicaConfig, StepPricer] = {}
        # an operator's memo, shared by the configs that agree on what it reads
        self._op_memo: dict[OpKey, dict[Any, Any]] = {}

    def gpu(self, cfg: ReplicaConfig) -> GpuSpec:
        if cfg.gpu_type not in self.gpus:
            raise ConfigError(f"unknown GPU type '{cfg.gpu_type}'")
        return self.gpus[cfg.gpu_type]

    # ---- memory -------------------------------------------------------------------------------------

    def weight_bytes_per_gpu(self, cfg: ReplicaConfig) -> float:
        if cfg.weight_format == "bf16" and cfg.precision == "fp32":  # unquantised weights in fp32 (CPU)
            return self.model.num_params * FP32_BYTES / cfg.num_gpus
        if cfg.weight_format == "bf16":  # the catalog's own bytes per weight (2, or what a user set)
            return self.model.weight_bytes / cfg.num_gpus
        wf = resolve_weight_format(cfg.weight_format, self.gpu(cfg))
        return self.model.num_params * wf.bytes_per_weight.value / cfg.num_gpus

    def kv_bytes_per_element(self, cfg: ReplicaConfig) -> float:
        if cfg.kv_cache_dtype == "bf16" and cfg.precision == "fp32":  # vLLM's "auto": the model dtype
            return FP32_BYTES
        return kv_format(cfg.kv_cache_dtype).bytes_per_element(self.model.head_dim).value

    def kv_bytes_per_token_per_gpu(self, cfg: ReplicaConfig) -> float:
        layers = math.ceil(self.model.num_layers / cfg.pp)
        return (layers * 2 * kv_heads_per_shard(self.model, cfg.tp) * self.model.head_dim
                * self.kv_bytes_per_element(cfg))

    def kv_capacity_tokens(self, cfg: ReplicaConfig) -> int:
        """Tokens of KV cache the replica holds (0 when the weights alone do not fit)."""
        gpu = self.gpu(cfg)
        if gpu.kv_cache_gib is not None:  # vLLM-CPU: a fixed KV space beside the weights
            if self.weight_bytes_per_gpu(cfg) + gpu.kv_cache_gib * 2**30 > gpu.hbm_bytes:
                return 0
            tokens = int(gpu.kv_cache_gib * 2**30 // self.kv_bytes_per_token_per_gpu(cfg))
            return tokens - tokens % self.params.kv_block_tokens
        usable = (self.gpu(cfg).hbm_bytes * self.params.gpu_memory_utilization
                  - self.params.reserved_bytes_per_gpu - self.weight_bytes_per_gpu(cfg))
        if usable <= 0:
            return 0
        tokens = int(usable // self.kv_bytes_per_token_per_gpu(cfg))
        return tokens - tokens % self.params.kv_block_tokens

    def fits(self, cfg: ReplicaConfig) -> bool:
        valid_split = (self.model.num_heads % cfg.tp == 0 and cfg.pp <= self.model.num_layers)
        return valid_split and self.kv_capacity_tokens(cfg) >= self.params.min_kv_tokens

    def precision_factors(self, cfg: ReplicaConfig) -> dict[str, Factor]:
        """What the replica's number formats contribute and where each number comes from; a kernel
        efficiency not measured by the calibration's profile is marked ``assumed`` (uncalibrated)."""
        gpu = self.gpu(cfg)
        wf = resolve_weight_format(cfg.weight_format, gpu)
        kvf = kv_format(cfg.kv_cache_dtype)
        out = {"weight bytes/param": wf.bytes_per_weight,
               "KV bytes/value": kvf.bytes_per_element(self.model.head_dim)}
        if wf.peak != "bf16":
            out[f"{wf.peak} peak TFLOPS"] = Factor(gpu.peak_tflops(wf.peak), "datasheet", gpu.name)
        for label, kind, fmt_name in (("GEMM efficiency", wf.profile_kind, wf.name),
                                      ("decode attention efficiency", kvf.profile_kind, kvf.name)):
            if fmt_name == "bf16":
                continue
            measured = self.calibration.factors(kind)[1]
            out[label] = (Factor(1.0, "measured", f"profile kind {kind}") if measured else
                          Factor(1.0, "assumed", f"uncalibrated: bf16 factors until a '{kind}' profile "
                                                 "is fitted"))
        if wf.compute_overhead.source != "exact":
            out["GEMM compute overhead"] = wf.compute_overhead
        return out

    # ---- step times (``costmodel.step_pricer``) -------------------------------------------------------

    def pricer(self, cfg: ReplicaConfig) -> StepPricer:
        """The stage and step times of ``cfg`` (``costmodel.step_pricer``), built once per config."""
        pricer = self._pricers.get(cfg)
        if pricer is None:
            pricer = self._pricers[cfg] = StepPricer(self.model, self.calibration, self.gpu(cfg), cfg,
                                                     self.step_overhead_s(cfg), self.batched_tokens(cfg),
                                                     lambda key: self._op_memo.setdefault(key, {}))
        return pricer

    def stage_time_s(self, cfg: ReplicaConfig, prefill_chunks: tuple[tuple[float, float], ...] = (),
                     decode_batch: int = 0, decode_ctx_total: float = 0.0) -> float:
        """Time one pipeline stage takes for one engine step, without the fixed engine overhead.

        ``prefill_chunks`` holds (new tokens, tokens already cached) per prefilling sequence.
        """
        return self.pricer(cfg).stage_times(prefill_chunks, decode_batch, (decode_ctx_total,))[0]

    def stage_times_s(self, cfg: ReplicaConfig, prefill_chunks: tuple[tuple[float, float], ...],
                      decode_batch: int, decode_ctx_totals: tuple[float, ...]) -> list[float]:
        """``stage_time_s`` at each of several decode contexts (the same step otherwise): the terms that
        do not depend on the context are computed once, each result exactly as ``stage_time_s``'s."""
        return self.pricer(cfg).stage_times(prefill_chunks, decode_batch, decode_ctx_totals)

    def step_time_s(self, cfg: ReplicaConfig, prefill_chunks: tuple[tuple[float, float], ...] = (),
                    decode_batch: int = 0, decode_ctx_total: float = 0.0) -> float:
        """Wall time of one engine step: the time between two tokens of a sequence in it.

        With ``pp > 1`` the step is one round of the ``pp`` batches vLLM keeps in flight
        (``costmodel.pipeline``): the work split into micro-batches of at most the replica's chunk budget
        each, the round ``max(pp * max_j t_j, sum_j t_j)`` over their stage times, plus the
        stage-boundary sends of the largest.
        """
        return self.pricer(cfg).step_times(prefill_chunks, decode_batch, (decode_ctx_total,))[0]

    def step_times_s(self, cfg: ReplicaConfig, prefill_chunks: tuple[tuple[float, float], ...],
                     decode_batch: int, decode_ctx_totals: tuple[float, ...]) -> list[float]:
        """``step_time_s`` at each of several decode contexts, the rest of the step the same (the
        simulator's step timer fits a line through two): the micro-batch split and every term that does
        not depend on the context are computed once; each result is exactly ``step_time_s``'s."""
        return self.pricer(cfg).step_times(prefill_chunks, decode_batch, decode_ctx_totals)

    def step_overhead_s(self, cfg: ReplicaConfig) -> float:
        """The fixed cost of one engine step: the device's fitted value, else the engine default."""
        step_model = self.gpu(cfg).step_model
        return step_model.step_overhead_s if step_model is not None else self.params.step_overhead_s

    def decode_step_s(self, cfg: ReplicaConfig, batch: int, total_context: float) -> float:
        """One decode token for ``batch`` sequences holding ``total_context`` tokens in all: how long
        every sequence waits between two of its tokens (with PP, ``ceil(batch / pp)`` sequences in the
        largest micro-batch set the round)."""
        if batch <= 0:
            return 0.0
        return self.step_time_s(cfg, (), batch, total_context)

    def prefill_time_s(self, cfg: ReplicaConfig, prompt_lens: list[int] | tuple[int, ...]) -> float:
        """Time to prefill the given prompts in one step (no cached prefix)."""
        return self.step_time_s(cfg, tuple((int(s), 0) for s in prompt_lens))

    # ---- engine settings ----------------------------------------------------------------------------

    def batched_tokens(self, cfg: ReplicaConfig) -> int:
        """The replica's chunked-prefill budget per step: its own setting, else the engine default."""
        return cfg.max_num_batched_tokens or self.params.max_num_batched_tokens

    def max_seqs(self, cfg: ReplicaConfig) -> int:
        """Most sequences the replica runs at once: its own setting, else the engine default."""
        return cfg.max_num_seqs or self.params.max_num_seqs

    # ---- capacity -----------------------------------------------------------------------------------

    def _prefill_cost_per_request_s(self, cfg: ReplicaConfig, input_tokens: float) -> float:
        """Busy time a replica spends prefilling one prompt when prompts are batched to the budget."""
        budget = self.batched_tokens(cfg)
        s = max(1, int(round(input_tokens)))
        if s >= budget:
            chunks = math.ceil(s / budget)
            per_chunk = [(min(budget, s - i * budget), i * budget) for i in range(chunks)]
            return sum(self.stage_time_s(cfg, (c,)) + self.step_overhead_s(cfg) for c in per_chunk)
        n = max(1, budget // s)
        return (self.stage_time_s(cfg, ((s, 0),) * n) + self.step_overhead_s(cfg)) / n

    def effective_tpot_s(self, cfg: ReplicaConfig, load: TypeLoad, batch: int) -> float:
        """Mean time between a sequence's tokens when the replica runs ``batch`` sequences of this type
        at its capacity: the decode step plus the prefill work interleaved with it.

        At capacity the prefill of newly admitted requests takes ``X * t_p`` of the replica's time, which
        stretches every decode step by ``1 / (1 - X t_p)``; with ``X`` from :meth:`type_capacity_rps` this is
        ``t_d(B) + B * t_p / O``.
        """
        o = max(load.mean_output_tokens, 1.0)
        per_seq = load.mean_input_tokens + o / 2
        t_d = self.decode_step_s(cfg, batch, batch * per_seq)
        return t_d + batch * self._prefill_cost_per_request_s(cfg, load.mean_input_tokens) / o

    def max_batch(self, cfg: ReplicaConfig, load: TypeLoad) -> int:
        """Most sequences of this type that run together: KV-cache, max_num_seqs and TPOT bounds.

        0 when even one sequence misses the TPOT bound.
        """
        per_seq = load.mean_input_tokens + load.mean_output_tokens / 2
        by_kv = int(0.9 * self.kv_capacity_tokens(cfg) / max(per_seq, 1.0))
        batch = max(0, min(self.max_seqs(cfg), by_kv))
        if self.tpot_slo_s is None or batch == 0:
            return batch
        if self.effective_tpot_s(cfg, load, batch) <= self.tpot_slo_s:
            return batch
        lo, hi = 0, batch  # effective TPOT grows with the batch: bisect for the largest that meets it
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.effective_tpot_s(cfg, load, mid) <= self.tpot_slo_s:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def type_capacity_rps(self, cfg: ReplicaConfig, load: TypeLoad) -> float:
        """Requests/s of one type that the replica sustains alone at its best batch size.

        In steady state a replica with B running sequences spends ``t_p`` per admitted request on prefill
        and produces B tokens per decode step of ``t_d(B)``; each request needs ``O`` tokens, so it
        completes ``X = B / (O * t_d(B) + B * t_p)`` requests/s.
        """
        key = (cfg, round(load.mean_input_tokens, 1), round(load.mean_output_tokens, 1))
        if key in self._capacity_cache:
            return self._capacity_cache[key]
        result = 0.0
        b_max = self.max_batch(cfg, load) if self.fits(cfg) else 0
        if b_max > 0:
            t_p = self._prefill_cost_per_request_s(cfg, load.mean_input_tokens)
            o = max(load.mean_output_tokens, 1.0)
            per_seq = load.mean_input_tokens + o / 2
            candidates = {b_max} | {2 ** i for i in range(9) if 2 ** i < b_max}
            for b in candidates:
                if b < 1:
                    continue
                # with pp > 1 the pp micro-batches fill the pipeline: B tokens per decode_step_s
                t_d = self.decode_step_s(cfg, b, b * per_seq)
                result = max(result, b / (o * t_d + b * t_p))
        self._capacity_cache[key] = result
        return result
