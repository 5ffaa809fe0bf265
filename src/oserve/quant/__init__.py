"""Mixed-precision storage formats of LMDeploy TurboMind, reproduced bit for bit on the CPU with numpy.

This package owns how quantized weights and KV-cache entries are laid out in memory and turned back into
fp16 values: group-wise asymmetric INT4 weights (AWQ/W4A16, group 128) with their nibble interleave and
the tensor-core fragment order of TurboMind's ``gemm_s4_f16`` kernels, and per-head, per-token asymmetric
INT8/INT4 KV quantisation with the magic-number dequantisers of its attention kernels. It says nothing
about time: what each format costs on a GPU is the cost model's business (``costmodel.precision``).

The layouts follow the public TurboMind sources (``kernels/gemm_s_f16/format.cu``, ``common.h`` and
``kernels/attention/quantization.h``); ``docs/precision.md`` describes each one.
"""

from oserve.quant.int4_weights import (
    AWQ_PACK_ORDER,
    Int4GroupQuant,
    dequantize_s4_to_fp16x2,
    dequantize_s4_to_fp16x2_biased,
    pack_awq,
    quantize_int4_groupwise,
    turbomind_convert_s4,
    turbomind_w4a16_gemm,
    unpack_awq,
)
from oserve.quant.kv_quant import (
    KvQuant,
    dequantize_kv,
    dequantize_kv_reference,
    quantize_kv,
)

__all__ = [
    "AWQ_PACK_ORDER",
    "Int4GroupQuant",
    "KvQuant",
    "dequantize_kv",
    "dequantize_kv_reference",
    "dequantize_s4_to_fp16x2",
    "dequantize_s4_to_fp16x2_biased",
    "pack_awq",
    "quantize_int4_groupwise",
    "quantize_kv",
    "turbomind_convert_s4",
    "turbomind_w4a16_gemm",
    "unpack_awq",
]
