"""FLOPs and bytes of the operators in one decoder layer on one tensor-parallel shard.

These are the roofline inputs; calibration turns them into times. Sharding follows Megatron-style tensor
parallelism as vLLM implements it: QKV and up/gate are column-parallel, O and down are row-parallel, KV heads
are split over TP ranks (replicated when there are fewer KV heads than ranks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from oserve.costmodel.catalog import ModelSpec

GEMM_LAYERS = ("qkv", "o", "up", "down")
GEMM_PARALLELISM = 1e9  # a GEMM's units of parallel work: never occupancy-limited at these shapes


@dataclass(frozen=True)
class Work:
    flops: float
    bytes: float
    parallelism: float = GEMM_PARALLELISM  # independent units (heads x sequences); small = poor occupancy


def kv_heads_per_shard(model: ModelSpec, tp: int) -> int:
    return max(1, math.ceil(model.num_kv_heads / tp))


def gemm_shape(model: ModelSpec, tp: int, layer: str) -> tuple[int, int]:
    """(in_features, out_features) of one linear layer on one TP shard."""
    h, hd = model.hidden_size, model.head_dim
    q_out = model.num_heads * hd // tp
    kv_out = 2 * kv_heads_per_shard(model, tp) * hd
    ffn = model.ffn_size // tp
    shapes = {
        "qkv": (h, q_out + kv_out),
        "o": (model.num_heads * hd // tp, h),
        "up": (h, (2 if model.gated_mlp else 1) * ffn),
        "down": (ffn, h),
    }
    if layer not in shapes:
        raise ValueError(f"unknown GEMM layer '{layer}', expected one of {GEMM_LAYERS}")
    return shapes[layer]


def gemm_work(model: ModelSpec, tp: int, layer: str, tokens: float, elem_bytes: float = 2.0) -> Work:
    k, n = gemm_shape(model, tp, layer)
    return Work(*gemm_cost(k, n, tokens, elem_bytes))


def gemm_cost(k: int, n: int, tokens: float, elem_bytes: float = 2.0) -> tuple[float, float]:
    """(FLOPs, bytes) of ``tokens`` rows through a (k x n) weight, everything in ``elem_bytes``."""
    return 2.0 * tokens * k * n, elem_bytes * (k * n + tokens * (k + n))


def prefill_attention_work(model: ModelSpec, tp: int, seq_len: float, batch: float = 1,
                           elem_bytes: float = 2.0) -> Work:
    """Causal flash attention over a prompt: half of the full QK^T and PV products."""
    heads = model.num_heads / tp
    hd = model.head_dim
    flops = batch * 2.0 * seq_len * seq_len * hd * heads  # 4*s^2*d*heads, halved by the causal mask
    kvh = kv_heads_per_shard(model, tp)
    nbytes = batch * elem_bytes * seq_len * hd * (2 * heads + 2 * kvh)
    return Work(flops, nbytes, heads * batch)


def decode_attention_work(model: ModelSpec, tp: int, batch: float, context: float,
                          elem_bytes: float = 2.0) -> Work:
    """One query token per sequence against ``context`` cached tokens: reads the whole KV cache."""
    heads = model.num_heads / tp
    hd = model.head_dim
    kvh = kv_heads_per_shard(model, tp)
    flops = 4.0 * batch * context * hd * heads
    nbytes = elem_bytes * batch * (context * 2 * kvh * hd + 2 * heads * hd)
    return Work(flops, nbytes, kvh * batch)
