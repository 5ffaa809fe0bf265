"""Bit-level fp16 helpers: the register tricks of CUDA's ``lop3``/``byte_perm``/``f16x2`` code in numpy.

A 32-bit register holds two fp16 values (``half2``): the low 16 bits are the first (``.x``), the high 16
bits the second. numpy's float16 ufuncs compute each add, subtract or multiply in float32 and round once
to fp16, which is the correctly rounded result (float32 has more than twice fp16's precision), so they
match ``sub.f16x2``/``mul.f16x2`` (round to nearest even) exactly. A fused multiply-add is done in float64
and rounded once; for the operands of the dequantisers here (small integers, powers of two) the float64
result is exact, so that too is bit-exact.
"""

from __future__ import annotations

import numpy as np

F16_1024 = 0x6400  # fp16 1024.0: an integer n < 1024 in the low mantissa bits reads as 1024 + n
F16_64 = 0x5400  # fp16 64.0: mantissa unit 1/16, so n << 4 in the mantissa reads as 64 + n
F16_ONE_SIXTEENTH = 0x2C00
F16_NEG_64 = 0xD400


def as_u32(x: np.ndarray | np.integer | int) -> np.ndarray:
    return np.asarray(x).astype(np.uint32)


def halves(words: np.ndarray | np.integer) -> np.ndarray:
    """uint32 registers -> float16 array with a trailing axis of 2 (low half first)."""
    w = np.ascontiguousarray(as_u32(words)).astype("<u4")
    return w.view("<u2").view(np.float16).reshape(*w.shape, 2)


def half2(value_bits: int) -> np.ndarray:
    """The half2 constant with ``value_bits`` in both halves, as (2,) float16."""
    return halves(np.uint32((value_bits << 16) | value_bits))


def lop3_and_or(a: np.ndarray, mask: int, magic: int) -> np.ndarray:
    """``lop3.b32`` with immLut (0xf0 & 0xcc) | 0xaa: (a & mask) | magic."""
    return (as_u32(a) & np.uint32(mask)) | np.uint32(magic)


def flush_subnormals(x: np.ndarray) -> np.ndarray:
    """The ``.ftz`` modifier: fp16 subnormals become signed zero."""
    x = np.asarray(x, dtype=np.float16)
    tiny = np.abs(x) < np.float16(2.0 ** -14)
    return np.where(tiny & (x != 0), np.copysign(np.float16(0), x), x).astype(np.float16)


def sub_ftz(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = flush_subnormals(a), flush_subnormals(b)
    return flush_subnormals(np.subtract(a, b, dtype=np.float16))


def mul_ftz(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = flush_subnormals(a), flush_subnormals(b)
    return flush_subnormals(np.multiply(a, b, dtype=np.float16))


def fma_f16(a: np.ndarray | np.floating, b: np.ndarray | np.floating,
            c: np.ndarray | np.floating) -> np.ndarray:
    """``fma.rn.f16``: a * b + c rounded once."""
    exact = (np.asarray(a, np.float64) * np.asarray(b, np.float64)) + np.asarray(c, np.float64)
    return np.asarray(exact.astype(np.float16))


def round_sat_u8(x: np.ndarray) -> np.ndarray:
    """``cvt.rni.sat.u8``: round to nearest even, clamp to [0, 255], NaN to 0."""
    x = np.asarray(x, dtype=np.float32)
    y = np.rint(np.nan_to_num(x, nan=0.0, posinf=255.0, neginf=0.0))
    return np.clip(y, 0, 255).astype(np.uint8)
