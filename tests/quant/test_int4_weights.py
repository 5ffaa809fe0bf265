"""INT4 weights: packing, TurboMind's fragment order and the magic-number dequantisers, bit for bit."""

import numpy as np
import pytest

from oserve.common.errors import ConfigError
from oserve.quant import (
    AWQ_PACK_ORDER,
    dequantize_s4_to_fp16x2,
    dequantize_s4_to_fp16x2_biased,
    pack_awq,
    quantize_int4_groupwise,
    turbomind_convert_s4,
    turbomind_w4a16_gemm,
    unpack_awq,
)
from oserve.quant.int4_weights import (
    K_M8_ORDER,
    reformat_s4_k_m8,
    turbomind_dequantized_weight,
    undo_reformat_s4_k_m8,
)


def scalar_permute_u4(src: list[int], dims: list[int], order: list[int]) -> list[int]:
    """TurboMind's permute_u4 kernel, transcribed loop for loop (one element per iteration)."""
    n = len(dims)
    count = int(np.prod(dims))
    dst = [0] * len(src)
    for i in range(count):
        indices, ii = [0] * n, i
        for j in range(n - 1, -1, -1):
            indices[j] = ii % dims[j]
            ii //= dims[j]
        data = (src[i // 8] >> ((i % 8) * 4)) & 0xF
        index, stride = 0, 1
        for j in range(n - 1, -1, -1):
            index += indices[order[j]] * stride
            stride *= dims[order[j]]
        word = dst[index // 8] & ~(0xF << ((index % 8) * 4))
        dst[index // 8] = word | (data << ((index % 8) * 4))
    return dst


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(7)


def test_awq_pack_puts_element_order_in_nibble_positions(rng):
    q = rng.integers(0, 16, size=(3, 16), dtype=np.uint8)
    words = pack_awq(q)
    for row in range(3):
        for w in range(2):
            for pos in range(8):
                nibble = (int(words[row, w]) >> (4 * pos)) & 0xF
                assert nibble == q[row, 8 * w + AWQ_PACK_ORDER[pos]]
    assert np.array_equal(unpack_awq(words), q)


def test_magic_dequantisers_are_exact_for_every_nibble(rng):
    q = np.tile(np.arange(16, dtype=np.uint8), 8).reshape(16, 8)  # every value in every position
    q = np.concatenate([q, rng.integers(0, 16, size=(64, 8), dtype=np.uint8)])
    words = pack_awq(q)[:, 0]
    exact = dequantize_s4_to_fp16x2(words)
    biased = dequantize_s4_to_fp16x2_biased(words)
    assert exact.dtype == np.float16 and biased.dtype == np.float16
    assert np.array_equal(exact, q.astype(np.float16))
    assert np.array_equal(biased, (q + 64).astype(np.float16))


def test_fragment_order_matches_the_kernel_loop_and_inverts(rng):
    k, n = 64, 64
    words = rng.integers(0, 2 ** 32, size=(k, n // 8), dtype=np.uint64).astype(np.uint32)
    fast = reformat_s4_k_m8(words)
    dims = [k // 32, 2, 2, 4, 2, n // 32, 2, 2, 2, 4]
    slow = scalar_permute_u4([int(w) for w in words.ravel()], dims, list(K_M8_ORDER))
    assert fast.tolist() == slow
    assert np.array_equal(undo_reformat_s4_k_m8(fast, k, n), words)
    assert not np.array_equal(fast, words.ravel())  # it does move elements


def test_quantisation_error_is_within_half_a_step(rng):
    w = rng.normal(size=(96, 256)).astype(np.float32)
    gq = quantize_int4_groupwise(w, group_size=128)
    assert gq.q.shape == (256, 96) and gq.scales.shape == (2, 96)
    err = np.abs(gq.dequantize() - w.T)
    step = np.repeat(gq.scales.astype(np.float32), 128, axis=0)
    # half a step, plus the fp16 rounding of the stored scale times up to 15 steps
    assert np.all(err <= 0.5 * step + 15 * step * 2.0 ** -11 + 1e-6)


def test_turbomind_weight_equals_reference_dequantisation(rng):
    w = rng.normal(scale=0.02, size=(64, 256)).astype(np.float32)
    gq = quantize_int4_groupwise(w, group_size=128)
    tm = turbomind_convert_s4(gq)
    got = turbomind_dequantized_weight(tm)
    # (q - z) is an exact small integer, so (64+q) - (64+z) is exact and one fp16 multiply remains
    want = (gq.q.astype(np.float32) - np.repeat(gq.zeros, 128, axis=0)).astype(np.float16)
    want = np.multiply(want, np.repeat(gq.scales, 128, axis=0), dtype=np.float16)
    assert np.array_equal(got, want)


def test_w4a16_gemm_against_float_matmul(rng):
    w = rng.normal(scale=0.05, size=(128, 256)).astype(np.float32)
    x = rng.normal(size=(4, 256)).astype(np.float16)
    gq = quantize_int4_groupwise(w, group_size=128)
    out = turbomind_w4a16_gemm(x, turbomind_convert_s4(gq)).astype(np.float32)
    ref_q = x.astype(np.float32) @ gq.dequantize()
    ref_fp = x.astype(np.float32) @ w.T
    # against the quantized weight: only fp16 rounding of weights and output
    assert np.max(np.abs(out - ref_q)) <= 2e-3 * np.max(np.abs(ref_q)) + 1e-3
    # against the original weight: bounded by sum |x| * half a step per column
    step = np.repeat(gq.scales.astype(np.float32), 128, axis=0)
    bound = np.abs(x.astype(np.float32)) @ (0.5 * step + 15 * step * 2.0 ** -11) + 2e-3
    assert np.all(np.abs(out - ref_fp) <= bound + 2e-3 * np.abs(ref_fp))


@pytest.mark.parametrize("shape, group", [((64, 100), 128), ((64, 256), 0), ((60, 256), 128)])
def test_bad_shapes_are_refused(shape, group):
    w = np.zeros(shape, dtype=np.float32)
    with pytest.raises(ConfigError):
        tm = turbomind_convert_s4(quantize_int4_groupwise(w, group_size=group))
        assert tm is None
