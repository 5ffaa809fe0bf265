"""The KV-cache format of an embedded llama.cpp replica: the CPU instance of the KV-format dimension.

A plan replica's ``kv_cache_dtype`` (``costmodel.precision.KV_FORMATS``) maps to llama.cpp's own cache
types: ``bf16`` to llama.cpp's default f16 cache (llama.cpp has no bf16 KV on CPU; both are 16-bit), and
``int8`` / ``int4`` to its ``q8_0`` / ``q4_0`` block formats (32 values with one fp16 scale per block:
8.5 and 4.5 bits per value, symmetric, unlike TurboMind's per-head per-token asymmetric INT8/INT4).
llama.cpp has no fp8 cache type, so an fp8 KV replica is refused with the reason. A quantized V cache
needs flash attention in llama.cpp, so a quantized cache turns it on; the f16 default leaves the
engine's attention as it was.
"""

from __future__ import annotations

from typing import TypedDict

from oserve.runtime.errors import EngineStartError

# kv_cache_dtype -> llama.cpp cache type name; ggml type ids and block geometry (values, bytes per block)
LLAMA_KV_TYPES = {"bf16": "f16", "int8": "q8_0", "int4": "q4_0"}
GGML_TYPE_IDS = {"f16": 1, "q8_0": 8, "q4_0": 2}
BLOCK_GEOMETRY = {"f16": (1, 2), "q8_0": (32, 34), "q4_0": (32, 18)}


class LlamaKvOptions(TypedDict, total=False):
    """``Llama(...)`` keywords that set the cache type (none for the default f16 cache)."""

    type_k: int
    type_v: int
    flash_attn: bool


def llama_cache_type(kv_cache_dtype: str) -> str:
    """llama.cpp's cache type for a replica's KV format, or EngineStartError naming what it supports."""
    if kv_cache_dtype not in LLAMA_KV_TYPES:
        raise EngineStartError(f"llama.cpp's KV cache is one of {', '.join(LLAMA_KV_TYPES)} "
                               f"(f16, q8_0, q4_0), not kv_cache_dtype {kv_cache_dtype!r}")
    return LLAMA_KV_TYPES[kv_cache_dtype]


def llama_kv_options(kv_cache_dtype: str) -> LlamaKvOptions:
    """The ``Llama`` keywords of a replica's KV format."""
    cache_type = llama_cache_type(kv_cache_dtype)
    if cache_type == "f16":
        return LlamaKvOptions()
    type_id = GGML_TYPE_IDS[cache_type]
    return LlamaKvOptions(type_k=type_id, type_v=type_id, flash_attn=True)


def kv_bytes_per_value(cache_type: str) -> float:
    values, nbytes = BLOCK_GEOMETRY[cache_type]
    return nbytes / values


__all__ = ["BLOCK_GEOMETRY", "GGML_TYPE_IDS", "LLAMA_KV_TYPES", "LlamaKvOptions", "kv_bytes_per_value",
           "llama_cache_type", "llama_kv_options"]
