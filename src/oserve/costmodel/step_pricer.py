"""Step times of one replica configuration: ``CostModel``'s stage and step formulas, bound to the config.

A simulator prices tens of thousands of distinct engine steps per planning run (step-timer misses) and the
latency model thousands more, each a handful of memoised operator times combined by a few float
operations. What depends only on the configuration (the GPU, layers per stage, shard sizes, the layer
overhead factors, the engine overhead) is looked up once here instead of on every call, and each
operator time is memoised in a small dict keyed on exactly what it reads. The operations on floats and
their order are ``CostModel``'s own: this *is* its implementation (``CostModel.stage_time_s`` and
``step_time_s`` delegate here), so there is one formula, not a fast copy of it.

A stage (``pp`` of them, equal layer counts) runs ``layers`` decoder layers; a layer is its GEMMs over
all the step's tokens, the prefill attention over the prompt chunks and the decode attention over the
KV cache (the only term that reads the decode context), scaled by the calibration's layer overhead, plus
two all-reduces with TP; the stage adds the LM head over the sampled tokens. With ``pp > 1`` a step is
one round of the ring of micro-batches (``costmodel.pipeline``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from oserve.costmodel.network import all_reduce_s, send_recv_s
from oserve.costmodel.operators import (
    GEMM_LAYERS,
    GEMM_PARALLELISM,
    Work,
    gemm_cost,
    gemm_shape,
    kv_heads_per_shard,
)
from oserve.costmodel.pipeline import ring_round_s, split_round
from oserve.costmodel.precision import decode_work_for, gemm_cost_for, kv_format, resolve_weight_format

if TYPE_CHECKING:
    from oserve.costmodel.calibration import Calibration
    from oserve.costmodel.catalog import GpuSpec, ModelSpec
    from oserve.costmodel.replica_config import ReplicaConfig

ACTIVATION_BYTES = 2.0
MICRO_MEMO = 1 << 16  # micro-batches a pricer remembers (a long simulation's memory stays bounded)
Chunks = tuple[tuple[float, float], ...]
OpKey = tuple[object, ...]  # an operator and what of the configuration it reads
OpMemo = Callable[[OpKey], dict[Any, Any]]  # the memo of one operator's times


class StepPricer:
    """Stage and step times of one configuration (``CostModel.pricer(cfg)``), memoised per operator."""

    def __init__(self, model: ModelSpec, calibration: Calibration, gpu: GpuSpec, cfg: ReplicaConfig,
                 overhead_s: float, max_tokens: int, memo: OpMemo | None = None) -> None:
        """``memo(key)``: the dict to memoise one operator's times in (``key`` names the operator and
        what of the configuration it reads: configurations that agree on it share it); default: own."""
        if memo is None:
            own: dict[OpKey, dict[Any, Any]] = {}
            memo = lambda key: own.setdefault(key, {})  # noqa: E731
        self.cfg = cfg
        self.gpu = gpu
        self.calibration = calibration
        self.model = model
        self.overhead_s = overhead_s  # the fixed engine cost of a step
        self.max_tokens = max_tokens  # the chunk budget of one in-flight batch (the PP split)
        self.pp = cfg.pp
        self.tp = cfg.tp
        self.step_model = gpu.step_model
        self.layers = math.ceil(model.num_layers / cfg.pp)
        self.heads = model.num_heads / cfg.tp
        self.kv_heads = kv_heads_per_shard(model, cfg.tp)
        self.head_dim = model.head_dim
        self.layer_scale = 1 + calibration.layer_extra_frac
        self.layer_fixed_s = calibration.layer_fixed_ms * 1e-3
        self._kvf = kv_format(cfg.kv_cache_dtype)
        # the layer's GEMMs: their shapes, (FLOPs, bytes) per token count and the kernel time
        self._gemm_shapes = [gemm_shape(model, cfg.tp, g) for g in GEMM_LAYERS]
        if cfg.weight_format == "bf16":
            self._gemm_cost: Callable[[int, int, float], tuple[float, float]] = gemm_cost
            gemm_kind = "gemm"
        else:
            wf = resolve_weight_format(cfg.weight_format, gpu)
            self._gemm_cost = lambda k, n, tokens: gemm_cost_for(k, n, tokens, wf)
            gemm_kind = wf.profile_kind
        self._gemm_kernel_ms = calibration.kind_timer_ms(gemm_kind, gpu)
        self._prefill_kernel_ms = calibration.kind_timer_ms("prefill", gpu)
        gpu_type, tp = cfg.gpu_type, cfg.tp
        # per token count: the layer's GEMMs
        self._gemm: dict[float, float] = memo(("gemm", gpu_type, tp, cfg.weight_format))
        # per (sum c(c+2p), tokens, chunks): the layer's prefill attention
        self._prefill: dict[tuple[float, float, int], float] = memo(("prefill", gpu_type, tp))
        self._comm: dict[float, float] = memo(("comm", gpu_type, tp))  # per token count: 2 all-reduces
        self._lm_head: dict[int, float] = memo(("lm_head", gpu_type, tp, cfg.pp))  # per sampled tokens
        # per (batch, total context): the layer's decode attention
        self._decode: dict[tuple[int, float], float] = memo(("decode", gpu_type, tp, cfg.kv_cache_dtype))
        self._hop: dict[float, float] = memo(("send_recv", gpu_type))  # per micro-batch tokens
        # ((pieces, decodes) of a micro-batch, its decode contexts): its stage times
        self._micro: dict[tuple[tuple[Chunks, int], tuple[float, ...]], list[float]] = {}

    def _op_s(self, kind: str, work: Work) -> float:
        return self.calibration.kind_time_ms(kind, work, self.gpu) * 1e-3

    # ---- one stage ----------------------------------------------------------------------------------

    def stage_times(self, chunks: Chunks, decode_batch: int, ctx_totals: tuple[float, ...]) -> list[float]:
        """The stage time at each decode context (the rest of the step the same)."""
        prefill_tokens: float = 0  # both sums in one pass, from 0 in the order sum() adds them
        prefill_sq: float = 0
        for c, p in chunks:
            prefill_tokens += c
            prefill_sq += c * (c + 2 * p)
        tokens = prefill_tokens + decode_batch
        if tokens <= 0:
            return [0.0] * len(ctx_totals)
        step_model = self.step_model
        if step_model is not None:  # fitted as a whole on the device (CPU), not from operators
            fixed = (step_model.prefill_s_per_token * prefill_tokens
                     + step_model.prefill_attention_s_per_token2 * prefill_sq
                     + step_model.decode_s_per_seq * decode_batch) / self.pp
            return [fixed] * len(ctx_totals)
        total = self._gemm.get(tokens)  # the GEMMs depend on the token count alone
        if total is None:
            total = self._gemm[tokens] = self._gemm_s(tokens)
        num_prefill = len(chunks)
        if num_prefill > 0:
            key = (prefill_sq, tokens - decode_batch, num_prefill)
            op = self._prefill.get(key)
            if op is None:
                op = self._prefill[key] = self._prefill_s(*key)
            total += op
        comm = 0.0
        if self.tp > 1:
            comm = self._comm.get(tokens)  # type: ignore[assignment]
            if comm is None:
                comm = self._comm[tokens] = 2 * all_reduce_s(
                    tokens * self.model.hidden_size * ACTIVATION_BYTES, self.tp, self.gpu.intra_node_gbps)
        sampled = num_prefill + decode_batch
        lm_head = self._lm_head.get(sampled)
        if lm_head is None:
            lm_head = self._lm_head[sampled] = self._lm_head_s(sampled)
        layers, scale, fixed_s = self.layers, self.layer_scale, self.layer_fixed_s
        if decode_batch <= 0:
            stage = layers * ((total * scale + fixed_s) + comm) + lm_head
            return [stage] * len(ctx_totals)
        out = []
        decode = self._decode
        for ctx in ctx_totals:
            op = decode.get((decode_batch, ctx))
            if op is None:
                op = decode[(decode_batch, ctx)] = self._op_s(self._kvf.profile_kind, decode_work_for(
                    self.model, self.tp, decode_batch, ctx / decode_batch, self._kvf))
            out.append(layers * (((total + op) * scale + fixed_s) + comm) + lm_head)
        return out

    def _gemm_s(self, tokens: float) -> float:
        total: float = 0  # from 0 in the order sum() adds them
        cost, kernel_ms = self._gemm_cost, self._gemm_kernel_ms
        for k, n in self._gemm_shapes:
            flops, nbytes = cost(k, n, tokens)
            total += kernel_ms(flops, nbytes, GEMM_PARALLELISM) * 1e-3
        return total

    def _prefill_s(self, prefill_sq: float, prefill_tokens: float, num_prefill: int) -> float:
        # sum over prompts of s^2 (causal attention FLOPs) and s (bytes), batched into one kernel
        heads, hd = self.heads, self.head_dim
        flops = 2.0 * prefill_sq * hd * heads
        nbytes = ACTIVATION_BYTES * prefill_tokens * hd * (2 * heads + 2 * self.kv_heads)
        return self._prefill_kernel_ms(flops, nbytes, heads * num_prefill) * 1e-3

    def _lm_head_s(self, sampled: int) -> float:
        m, tp = self.model, self.tp
        return self._op_s("gemm", Work(2.0 * sampled * m.hidden_size * m.vocab_size / tp,
                                       ACTIVATION_BYTES * m.hidden_size * m.vocab_size / tp)) / self.pp

    # ---- one step -----------------------------------------------------------------------------------

    def step_times(self, chunks: Chunks, decode_batch: int, ctx_totals: tuple[float, ...]) -> list[float]:
        """The step time at each decode context: with PP one round of the ring of micro-batches (each at
        most the chunk budget), ``max(pp * max_j t_j, sum_j t_j)`` over their stage times, plus the
        stage-boundary sends of the largest; every step adds the engine's fixed overhead."""
        overhead_s = self.overhead_s
        if self.pp == 1:
            return [stage + overhead_s for stage in self.stage_times(chunks, decode_batch, ctx_totals)]
        pp = self.pp
        micro, largest = split_round(chunks, decode_batch, pp, self.max_tokens)
        # a micro-batch's stage times are a function of it and its contexts alone: memoised across
        # steps (a simulator's misses price their contexts at the same tokens per sequence, and
        # micro-batches of decodes alone, or of one same piece, recur)
        memo = self._micro
        per_seq = [ctx / decode_batch if decode_batch else 0.0 for ctx in ctx_totals]
        per_mb = []  # per micro-batch: its stage time at each context
        for mb in micro:
            decodes = mb[1]
            ctxs = tuple([s * decodes for s in per_seq])
            key = (mb, ctxs)
            times = memo.get(key)
            if times is None:
                times = self.stage_times(mb[0], decodes, ctxs)
                if len(memo) < MICRO_MEMO:
                    memo[key] = times
            per_mb.append(times)
        hop = self._hop.get(largest)
        if hop is None:
            hop = self._hop[largest] = send_recv_s(largest * self.model.hidden_size * ACTIVATION_BYTES, True,
                                                   self.gpu.intra_node_gbps)
        hops = (pp - 1) * hop
        return [ring_round_s([times[k] for times in per_mb], pp) + hops + overhead_s
                for k in range(len(ctx_totals))]


__all__ = ["ACTIVATION_BYTES", "OpKey", "OpMemo", "StepPricer"]
