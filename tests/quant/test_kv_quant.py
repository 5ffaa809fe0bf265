"""Per-head per-token INT8/INT4 KV: the kernel's arithmetic, its byte and nibble order, error bounds."""

import numpy as np
import pytest

from oserve.common.errors import ConfigError
from oserve.quant import dequantize_kv, dequantize_kv_reference, quantize_kv
from oserve.quant.int4_weights import unpack_awq


def byte_perm(x: int, y: int, selector: int) -> int:
    """CUDA's __byte_perm: byte i of the result is byte (selector nibble i) of the 8-byte pair (y:x)."""
    pool = x | (y << 32)
    out = 0
    for i in range(4):
        sel = (selector >> (4 * i)) & 0x7
        out |= ((pool >> (8 * sel)) & 0xFF) << (8 * i)
    return out


def kernel_pack_u4(values: list[int]) -> int:
    """ConvertKvCache<T, uint4_t>::pack, transcribed: eight u8 values (< 16) into one 32-bit word."""
    ui0 = values[0] | values[1] << 8 | values[2] << 16 | values[3] << 24
    ui1 = values[4] | values[5] << 8 | values[6] << 16 | values[7] << 24
    ui0 |= ui0 >> 12
    ui1 |= ui1 >> 12
    return byte_perm(ui0, ui1, 0x5140)


@pytest.fixture(scope="module")
def kv():
    rng = np.random.default_rng(3)
    # realistic K/V: per-head offsets and scales, a few outliers
    x = rng.normal(size=(40, 4, 64)) * rng.uniform(0.2, 3.0, size=(1, 4, 1)) + rng.normal(size=(1, 4, 1))
    x[5, 1, 7] = 25.0
    return x.astype(np.float16)


def test_int4_nibble_order_is_the_kernels_pack():
    rng = np.random.default_rng(0)
    for _ in range(50):
        vals = rng.integers(0, 16, size=8).tolist()
        x = np.array(vals, dtype=np.float16).reshape(1, 1, 8) + np.float16(0)
        x[0, 0, 0], x[0, 0, 1] = 0, 15  # pin min and max so q equals vals
        q = quantize_kv(x, 4)
        vals[0], vals[1] = 0, 15
        assert int(q.data[0, 0, 0]) == kernel_pack_u4(vals)


@pytest.mark.parametrize("bits", [8, 4])
def test_magic_read_path_matches_plain_arithmetic(kv, bits):
    q = quantize_kv(kv, bits)
    got = dequantize_kv(q).astype(np.float32)
    ref = dequantize_kv_reference(q)
    # one fused multiply-add rounded to fp16: within half an fp16 ulp of the float32 reference
    ulp = np.spacing(np.abs(ref).astype(np.float16)).astype(np.float32)
    assert np.all(np.abs(got - ref) <= 0.5 * ulp + 1e-6)


@pytest.mark.parametrize("bits", [8, 4])
def test_error_bound_per_element(kv, bits):
    q = quantize_kv(kv, bits)
    got = dequantize_kv(q).astype(np.float32)
    scale = q.scale.astype(np.float32)[..., None]
    q_max = (1 << bits) - 1
    # half a step, plus the fp16 arithmetic of (x - zero) * (1 / scale) (up to q_max * 2^-10 steps),
    # plus fp16 rounding of the stored zero (pre-biased by -64 * scale for INT4) and of the result
    biased_zero = 64 * 2.0 ** -11 if bits == 4 else 0.0
    bound = (scale * (0.5 + q_max * 2.0 ** -10 + biased_zero)
             + 2.0 ** -10 * (np.abs(kv.astype(np.float32)) + 1))
    assert np.all(np.abs(got - kv.astype(np.float32)) <= bound)


def test_int8_values_are_natural_byte_order(kv):
    q = quantize_kv(kv, 8)
    assert q.data.dtype == np.uint8 and q.data.shape == kv.shape
    # min of each (token, head) maps to 0, max to 255
    flat = kv.astype(np.float32)
    lo = np.argmin(flat, axis=-1)
    hi = np.argmax(flat, axis=-1)
    assert np.all(np.take_along_axis(q.data, lo[..., None], -1) == 0)
    assert np.all(np.take_along_axis(q.data, hi[..., None], -1) == 255)


def test_int4_storage_and_bytes(kv):
    q = quantize_kv(kv, 4)
    assert q.data.dtype == np.uint32 and q.data.shape == (40, 4, 8)
    assert unpack_awq(q.data).max() <= 15
    assert q.nbytes_per_token_head == 64 * 0.5 + 4
    assert quantize_kv(kv, 8).nbytes_per_token_head == 64 + 4


def test_constant_vector_quantizes_to_zero_without_nan():
    x = np.full((2, 1, 16), 3.5, dtype=np.float16)
    for bits in (8, 4):
        got = dequantize_kv(quantize_kv(x, bits))
        assert np.all(np.isfinite(got)) and np.allclose(got, 3.5)


def test_decode_attention_error_with_quantized_kv(kv):
    """One query over the quantized cache: INT8 nearly exact, INT4 within a few percent."""
    rng = np.random.default_rng(1)
    query = rng.normal(size=(4, 64)).astype(np.float32)

    def attend(k, v):
        logits = np.einsum("hd,thd->ht", query, k) / 8.0
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        return np.einsum("ht,thd->hd", p, v)

    exact = attend(kv.astype(np.float32), kv.astype(np.float32))
    errs = {}
    for bits in (8, 4):
        deq = dequantize_kv(quantize_kv(kv, bits)).astype(np.float32)
        out = attend(deq, deq)
        errs[bits] = np.linalg.norm(out - exact) / np.linalg.norm(exact)
    assert errs[8] < 0.01 and errs[4] < 0.15 and errs[8] < errs[4]


@pytest.mark.parametrize("shape, bits", [((2, 3), 8), ((2, 1, 12), 4), ((2, 1, 16), 3)])
def test_bad_input_is_refused(shape, bits):
    with pytest.raises(ConfigError):
        quantize_kv(np.zeros(shape, dtype=np.float16), bits)
