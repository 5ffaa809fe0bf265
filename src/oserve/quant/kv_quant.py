"""Per-head, per-token asymmetric INT8/INT4 KV cache (TurboMind's ``quant_policy`` 8 and 4).

Each cached token's K (or V) vector of one head, ``head_dim`` values, gets its own ``scale = (max - min) /
(2^bits - 1)`` and ``zero = min``, stored in the parameter dtype (fp16 for fp16 models). Quantisation is
done in that dtype as the kernel does it: ``q = cvt.rni.sat((x - zero) * (1 / scale))``, clamped to
``2^bits - 1``.

Layout: INT8 values are one byte each in element order; reading them back, ``byte_perm`` drops each byte
into the low mantissa byte of fp16 1024 (``0x64XX`` reads as ``1024 + q``) and 1024 is subtracted, so the
byte order is natural. INT4 values are packed eight to a 32-bit word in the interleaved nibble order
``0, 2, 4, 6, 1, 3, 5, 7`` (the same as INT4 weights), which the read path decodes with the biased fp16 64
magic number into ``64 + q``; to save the subtraction the stored zero is pre-biased, ``zero - 64 * scale``,
so the kernel computes ``(64 + q) * scale + zero'`` with one fused multiply-add. INT8 stores ``zero``
unbiased and uses the normalised conversion.

Where the GPU differs: the kernel takes ``1 / scale`` and ``1 / (2^bits - 1)`` with ``fdividef`` (an
approximate division, within 2 ulp of float32); here they are IEEE divisions. That can move a float32
parameter by an ulp before it is rounded to fp16, which in practice leaves the stored fp16 unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from oserve.common.errors import ConfigError
from oserve.quant.half_bits import fma_f16, round_sat_u8
from oserve.quant.int4_weights import dequantize_s4_to_fp16x2_biased, pack_awq, unpack_awq

KV_BITS = (8, 4)


@dataclass(frozen=True)
class KvQuant:
    """Quantized K or V of ``[tokens, heads, head_dim]`` values."""

    data: np.ndarray  # bits=8: uint8 [tokens, heads, head_dim]; bits=4: uint32 [tokens, heads, head_dim/8]
    scale: np.ndarray  # [tokens, heads], param dtype
    zero: np.ndarray  # [tokens, heads], param dtype, as stored (pre-biased by -64 * scale for 4 bits)
    bits: int
    head_dim: int

    @property
    def nbytes_per_token_head(self) -> float:
        """Bytes one token of one head occupies, values plus its (scale, zero) pair."""
        return self.head_dim * self.bits / 8 + 2 * self.scale.dtype.itemsize


def quantize_kv(x: np.ndarray, bits: int, param_dtype: type = np.float16) -> KvQuant:
    """Quantize ``[tokens, heads, head_dim]`` K or V values per (token, head)."""
    if bits not in KV_BITS:
        raise ConfigError(f"KV bits must be one of {KV_BITS}, got {bits}")
    x = np.asarray(x)
    if x.ndim != 3:
        raise ConfigError(f"KV must be [tokens, heads, head_dim], got shape {x.shape}")
    head_dim = x.shape[-1]
    if bits == 4 and head_dim % 8:
        raise ConfigError(f"head_dim {head_dim} must be a multiple of 8 for INT4 KV")
    p = np.dtype(param_dtype).type
    xs = x.astype(p)
    lo, hi = xs.min(axis=-1), xs.max(axis=-1)
    q_max = (1 << bits) - 1
    scale = ((hi.astype(np.float32) - lo.astype(np.float32)) * np.float32(1.0 / q_max)).astype(p)
    zero = lo.astype(p)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_scale = (np.float32(1.0) / scale.astype(np.float32)).astype(p)
        v = np.multiply(np.subtract(xs, zero[..., None], dtype=p), inv_scale[..., None], dtype=p)
    q = np.minimum(round_sat_u8(v), np.uint8(q_max))
    if bits == 8:
        return KvQuant(data=q, scale=scale, zero=zero, bits=8, head_dim=head_dim)
    stored_zero = fma_f16(-scale.astype(np.float16), np.float16(64.0), zero.astype(np.float16)).astype(p)
    return KvQuant(data=pack_awq(q), scale=scale, zero=stored_zero, bits=4, head_dim=head_dim)


def dequantize_kv(kv: KvQuant) -> np.ndarray:
    """What the attention kernel's ``ConvertKvCache`` reads back, in fp16, ``[tokens, heads, head_dim]``."""
    scale = kv.scale.astype(np.float16)[..., None]
    zero = kv.zero.astype(np.float16)[..., None]
    if kv.bits == 8:
        bits = np.uint16(0x6400) | kv.data.astype(np.uint16)  # byte_perm into fp16 1024's mantissa
        ints = np.subtract(bits.view(np.float16), np.float16(1024.0), dtype=np.float16)
        return fma_f16(ints, scale, zero)
    biased = dequantize_s4_to_fp16x2_biased(kv.data).reshape(*kv.data.shape[:-1], kv.head_dim)
    return fma_f16(biased, scale, zero)


def dequantize_kv_reference(kv: KvQuant) -> np.ndarray:
    """The same values computed plainly in float32 from the unpacked integers, for checking the bit tricks."""
    scale = kv.scale.astype(np.float32)[..., None]
    zero = kv.zero.astype(np.float32)[..., None]
    if kv.bits == 8:
        return kv.data.astype(np.float32) * scale + zero
    return (unpack_awq(kv.data).astype(np.float32) + np.float32(64.0)) * scale + zero
