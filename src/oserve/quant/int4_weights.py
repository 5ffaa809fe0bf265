"""INT4 weights (W4A16, group-wise asymmetric): quantisation, AWQ packing, TurboMind's layout and dequant.

Quantisation (min-max per group of ``group_size`` input channels of each output channel, as LMDeploy's
``cal_qparams_per_group_minmax``): ``scale = max(w_max - w_min, 1e-5) / 15``, ``zero = clamp(-round(w_min /
scale), 0, 15)``, ``q = clamp(round(w / scale + zero), 0, 15)``; the weight is ``(q - zero) * scale``.

Packing: the weight is stored transposed, ``[k = in_features, n = out_features]``, eight 4-bit values to a
32-bit word along n. Nibble ``i`` of a word (bits 4i..4i+3) holds column ``AWQ_PACK_ORDER[i]`` of its
group of eight: ``0, 2, 4, 6, 1, 3, 5, 7``. That interleave is what lets one ``lop3`` with mask
``0x000f000f`` pull elements 0 and 1 into the two fp16 halves of a register (bits 0-3 and 16-19), mask
``0x00f000f0`` elements 2 and 3, and the same two masks after one shift by 8 elements 4-7.

Dequantisation by magic numbers: OR-ing a nibble into the mantissa of fp16 1024 (``0x6400``) reads as
``1024 + n`` when the nibble sits in bits 0-3, or ``1024 + 16 n`` in bits 4-7; subtracting 1024, or
multiplying by 1/16 and adding -64, leaves exactly ``n`` (``dequantize_s4_to_fp16x2``). TurboMind's
``_v2`` variant uses fp16 64 (``0x5400``) with a shift instead, leaving the biased ``64 + n``; the zero
points pass through the same function, so the bias cancels in ``(x - zero) * scale`` (``apply_Q``).

Fragment order: ``reformat_s4_k_m8`` permutes the 4-bit elements of the ``[k, n/8]`` words so that each
warp's ``ldmatrix`` load of a tile delivers the operand fragments of ``mma.m16n8k16`` directly: the
elements are viewed as the 10-dimensional array ``(k/32, 2, 2, 4, 2, n/32, 2, 2, 2, 4)`` (k and n split
into warp tile, lane and 2x2 sub-tile indices, and the eight nibbles of a word) and transposed by
``(0, 5, 9, 8, 3, 1, 6, 4, 2, 7)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from oserve.common.errors import ConfigError
from oserve.quant.half_bits import (
    F16_64,
    F16_1024,
    F16_NEG_64,
    F16_ONE_SIXTEENTH,
    fma_f16,
    half2,
    halves,
    lop3_and_or,
    mul_ftz,
    sub_ftz,
)

AWQ_PACK_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
K_M8_SHAPE = (32, 2, 2, 4, 2, 32, 2, 2, 2, 4)  # first and sixth axes are k/32 and n/32 (scaled below)
K_M8_ORDER = (0, 5, 9, 8, 3, 1, 6, 4, 2, 7)
BOTTOM_MASK = 0x000F000F
TOP_MASK = 0x00F000F0


@dataclass(frozen=True)
class Int4GroupQuant:
    """A quantized weight in the transposed ``[k, n]`` layout, before packing."""

    q: np.ndarray  # uint8 [k, n], 0..15
    scales: np.ndarray  # float16 [k / group_size, n]
    zeros: np.ndarray  # uint8 [k / group_size, n], 0..15
    group_size: int

    def dequantize(self) -> np.ndarray:
        """The reference weight ``(q - zero) * scale`` in float32, ``[k, n]``."""
        g = self.group_size
        z = np.repeat(self.zeros.astype(np.float32), g, axis=0)
        s = np.repeat(self.scales.astype(np.float32), g, axis=0)
        return (self.q.astype(np.float32) - z) * s


def quantize_int4_groupwise(weight: np.ndarray, group_size: int = 128) -> Int4GroupQuant:
    """Quantize a ``[out_features, in_features]`` weight (PyTorch's layout) to INT4, min-max per group."""
    w = np.asarray(weight, dtype=np.float32)
    if w.ndim != 2:
        raise ConfigError(f"weight must be 2-D [out_features, in_features], got shape {w.shape}")
    out_f, in_f = w.shape
    if group_size <= 0 or in_f % group_size:
        raise ConfigError(f"in_features {in_f} is not a multiple of group_size {group_size}")
    grouped = w.reshape(out_f, in_f // group_size, group_size)
    w_min, w_max = grouped.min(axis=-1, keepdims=True), grouped.max(axis=-1, keepdims=True)
    scales = np.maximum(w_max - w_min, 1e-5) / 15.0
    zeros = np.clip(-np.round(w_min / scales), 0, 15)
    q = np.clip(np.round((grouped + scales * zeros) / scales), 0, 15)
    return Int4GroupQuant(q=q.reshape(out_f, in_f).T.astype(np.uint8).copy(),
                          scales=scales[..., 0].T.astype(np.float16).copy(),
                          zeros=zeros[..., 0].T.astype(np.uint8).copy(), group_size=group_size)


def pack_awq(q: np.ndarray) -> np.ndarray:
    """``[k, n]`` 4-bit values -> ``[k, n/8]`` uint32 words in AWQ's interleaved nibble order."""
    q = np.asarray(q, dtype=np.uint32)
    if q.shape[-1] % 8:
        raise ConfigError(f"the packed dimension ({q.shape[-1]}) must be a multiple of 8")
    groups = q.reshape(*q.shape[:-1], -1, 8)[..., list(AWQ_PACK_ORDER)]
    shifts = np.arange(8, dtype=np.uint32) * 4
    return np.bitwise_or.reduce(groups << shifts, axis=-1).astype(np.uint32)


def unpack_awq(words: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_awq`."""
    nib = unpack_linear(words)
    inverse = np.argsort(AWQ_PACK_ORDER)
    return nib.reshape(*nib.shape[:-1], -1, 8)[..., inverse].reshape(nib.shape)


def unpack_linear(words: np.ndarray) -> np.ndarray:
    """uint32 words -> their nibbles, low nibble first, ``[..., 8 * words]`` uint8."""
    w = np.asarray(words, dtype=np.uint32)[..., None]
    nib = (w >> (np.arange(8, dtype=np.uint32) * 4)) & np.uint32(0xF)
    return nib.reshape(*w.shape[:-2], -1).astype(np.uint8)


def pack_linear(nibbles: np.ndarray) -> np.ndarray:
    """Nibbles -> uint32 words, element ``8w + i`` in nibble ``i`` of word ``w`` (``permute_u4``'s view)."""
    n = np.asarray(nibbles, dtype=np.uint32).reshape(-1, 8)
    return np.bitwise_or.reduce(n << (np.arange(8, dtype=np.uint32) * 4), axis=-1).astype(np.uint32)


def permute_u4(words: np.ndarray, dims: tuple[int, ...], order: tuple[int, ...]) -> np.ndarray:
    """TurboMind's ``permute_u4``: the 4-bit elements viewed as ``dims``, transposed by ``order``."""
    nib = unpack_linear(np.ravel(words)).reshape(dims)
    return pack_linear(np.transpose(nib, order))


def reformat_s4_k_m8(qweight: np.ndarray) -> np.ndarray:
    """``[k, n/8]`` AWQ words -> TurboMind's fragment order for ``gemm_s4_f16`` (flat uint32)."""
    k, n = qweight.shape[0], qweight.shape[1] * 8
    if k % 32 or n % 32:
        raise ConfigError(f"k ({k}) and n ({n}) must be multiples of 32 for TurboMind's INT4 layout")
    dims = (k // 32,) + K_M8_SHAPE[1:5] + (n // 32,) + K_M8_SHAPE[6:]
    return permute_u4(qweight, dims, K_M8_ORDER)


def undo_reformat_s4_k_m8(words: np.ndarray, k: int, n: int) -> np.ndarray:
    """Inverse of :func:`reformat_s4_k_m8`: back to ``[k, n/8]`` AWQ words."""
    dims = (k // 32,) + K_M8_SHAPE[1:5] + (n // 32,) + K_M8_SHAPE[6:]
    permuted_dims = tuple(dims[i] for i in K_M8_ORDER)
    nib = unpack_linear(np.ravel(words)).reshape(permuted_dims)
    return pack_linear(np.transpose(nib, np.argsort(K_M8_ORDER))).reshape(k, n // 8)


def dequantize_s4_to_fp16x2(words: np.ndarray) -> np.ndarray:
    """The exact nibble values 0..15 as fp16, ``[..., 8]`` in element order (FasterTransformer's trick)."""
    i4s = np.asarray(words, dtype=np.uint32)
    top = i4s >> np.uint32(8)
    h0 = halves(lop3_and_or(i4s, BOTTOM_MASK, 0x64006400))
    h1 = halves(lop3_and_or(i4s, TOP_MASK, 0x64006400))
    h2 = halves(lop3_and_or(top, BOTTOM_MASK, 0x64006400))
    h3 = halves(lop3_and_or(top, TOP_MASK, 0x64006400))
    magic, sixteenth, neg64 = half2(F16_1024), half2(F16_ONE_SIXTEENTH), half2(F16_NEG_64)
    out = [np.subtract(h0, magic, dtype=np.float16), fma_f16(h1, sixteenth, neg64),
           np.subtract(h2, magic, dtype=np.float16), fma_f16(h3, sixteenth, neg64)]
    return np.concatenate(out, axis=-1)


def dequantize_s4_to_fp16x2_biased(words: np.ndarray) -> np.ndarray:
    """TurboMind's ``dequantize_s4_to_fp16x2_v2``: ``64 + n`` as fp16, ``[..., 8]`` in element order."""
    i4s = np.asarray(words, dtype=np.uint32)
    top = i4s >> np.uint32(8)
    magic_shifted = ((F16_64 << 16) | F16_64) >> 4
    h0 = lop3_and_or(i4s, BOTTOM_MASK, magic_shifted) << np.uint32(4)
    h1 = lop3_and_or(i4s, TOP_MASK, (F16_64 << 16) | F16_64)
    h2 = lop3_and_or(top, BOTTOM_MASK, magic_shifted) << np.uint32(4)
    h3 = lop3_and_or(top, TOP_MASK, (F16_64 << 16) | F16_64)
    return np.concatenate([halves(h) for h in (h0, h1, h2, h3)], axis=-1)


@dataclass(frozen=True)
class TurboMindS4:
    """A weight as TurboMind holds it: fragment-ordered words and per-group (biased zero, scale) pairs."""

    words: np.ndarray  # uint32, flat, fragment order
    q_params: np.ndarray  # float16 [k / group_size, n, 2]: (64 + zero, scale)
    k: int
    n: int
    group_size: int


def turbomind_convert_s4(gq: Int4GroupQuant) -> TurboMindS4:
    """``convert_s4_k_m8``: reorder the weight words, turn the zeros into biased fp16 (``merge_Q``)."""
    k, n = gq.q.shape
    words = reformat_s4_k_m8(pack_awq(gq.q))
    zeros_biased = dequantize_s4_to_fp16x2_biased(pack_awq(gq.zeros)).reshape(gq.zeros.shape)
    q_params = np.stack([zeros_biased, gq.scales.astype(np.float16)], axis=-1)
    return TurboMindS4(words=words, q_params=q_params, k=k, n=n, group_size=gq.group_size)


def turbomind_dequantized_weight(tm: TurboMindS4) -> np.ndarray:
    """The fp16 ``[k, n]`` weight the kernel's ``apply_Q`` produces: ``(64 + q - (64 + z)) * s``, ftz."""
    awq = undo_reformat_s4_k_m8(tm.words, tm.k, tm.n)
    biased = dequantize_s4_to_fp16x2_biased(awq).reshape(tm.k, tm.n)
    params = np.repeat(tm.q_params, tm.group_size, axis=0)
    return mul_ftz(sub_ftz(biased, params[..., 0]), params[..., 1])


def turbomind_w4a16_gemm(x: np.ndarray, tm: TurboMindS4) -> np.ndarray:
    """``x [tokens, k]`` (fp16) times the INT4 weight: fp16 operands, fp32 accumulation, fp16 output."""
    w = turbomind_dequantized_weight(tm).astype(np.float32)
    return (np.asarray(x, dtype=np.float16).astype(np.float32) @ w).astype(np.float16)
