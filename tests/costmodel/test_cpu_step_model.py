"""A vLLM-CPU replica in the cost model: fp32 bytes, a fixed KV space, a fitted step model, and the fit."""

from __future__ import annotations

import csv

import pytest

from oserve.common.errors import ConfigError
from oserve.costmodel.calibration import fit_step_model, predict_step_ms, read_profile
from oserve.costmodel.catalog import GpuSpec, StepModel, load_gpus, load_models
from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.replica_config import ReplicaConfig

STEP = StepModel(step_overhead_s=0.05, prefill_s_per_token=0.002, decode_s_per_seq=0.01)
CPU = GpuSpec(name="cpu-test", bf16_tflops=0.1, hbm_gb=4, hbm_gbps=10, intra_node_gbps=10,
              kv_cache_gib=1, step_model=STEP)


def cost() -> CostModel:
    h100 = load_gpus().get("H100-80GB")
    return CostModel(load_models().get("smollm2-135m"), gpus={"cpu-test": CPU, h100.name: h100})


def test_fp32_prices_four_bytes_per_weight_and_kv_value():
    m = load_models().get("smollm2-135m")
    c = cost()
    fp32, bf16 = ReplicaConfig("cpu-test", precision="fp32"), ReplicaConfig("cpu-test")
    assert c.weight_bytes_per_gpu(fp32) == m.num_params * 4
    assert c.weight_bytes_per_gpu(bf16) == m.num_params * 2
    # 30 layers x (K and V) x 3 KV heads x 64 dims x 4 bytes
    assert c.kv_bytes_per_token_per_gpu(fp32) == 30 * 2 * 3 * 64 * 4 == 46080
    assert c.kv_bytes_per_token_per_gpu(bf16) == 23040
    # an explicitly quantised KV cache keeps its own bytes under fp32 compute
    fp8_kv = ReplicaConfig("cpu-test", precision="fp32", kv_cache_dtype="fp8")
    assert c.kv_bytes_per_token_per_gpu(fp8_kv) == 30 * 2 * 3 * 64


def test_fixed_kv_space_holds_its_tokens():
    c = cost()
    fp32 = ReplicaConfig("cpu-test", precision="fp32")
    # 1 GiB / 46080 B = 23301.7 tokens, rounded down to 16-token blocks
    assert c.kv_capacity_tokens(fp32) == 23296
    small = CPU.model_copy(update={"name": "tiny", "hbm_gb": 1.0})  # weights + 1 GiB KV exceed 1 GB
    c2 = CostModel(load_models().get("smollm2-135m"), gpus={"tiny": small})
    assert c2.kv_capacity_tokens(ReplicaConfig("tiny", precision="fp32")) == 0


def test_step_model_times_steps():
    c = cost()
    cfg = ReplicaConfig("cpu-test", precision="fp32")
    assert c.prefill_time_s(cfg, [100]) == pytest.approx(0.05 + 100 * 0.002)
    assert c.decode_step_s(cfg, 8, 8 * 200) == pytest.approx(0.05 + 8 * 0.01)
    assert c.step_time_s(cfg, ((30, 0), (20, 5)), 4, 400) == pytest.approx(0.05 + 50 * 0.002 + 0.04)
    assert c.step_overhead_s(ReplicaConfig("H100-80GB")) == c.params.step_overhead_s


def write_rows(path, rows):
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["gpu", "kind", "model", "tp", "a", "b", "ms"])
        w.writerows(rows)


def test_fit_recovers_a_known_step_model(tmp_path):
    rows = [["cpu-test", "step_prefill", "smollm2-135m", 1, p, 1, 1e3 * (0.05 + 0.002 * p)]
            for p in (30, 120, 400)]
    rows += [["cpu-test", "step_decode", "smollm2-135m", 1, b, 40, 1e3 * (0.05 + 0.01 * b)]
             for b in (1, 4, 8)]
    write_rows(tmp_path / "p.csv", rows)
    fitted = fit_step_model(read_profile(tmp_path / "p.csv"))
    assert fitted.step_overhead_s == pytest.approx(0.05, rel=1e-6)
    assert fitted.prefill_s_per_token == pytest.approx(0.002, rel=1e-6)
    assert fitted.decode_s_per_seq == pytest.approx(0.01, rel=1e-6)
    assert fitted.prefill_attention_s_per_token2 == pytest.approx(0.0, abs=1e-12)  # linear rows
    row = read_profile(tmp_path / "p.csv")[0]
    assert predict_step_ms(row, fitted) == pytest.approx(row.ms)


def test_fit_recovers_the_prefill_attention_term(tmp_path):
    # prompts whose time grows with their square (attention) besides their length, as on vLLM-CPU
    def prefill_ms(p):
        return 1e3 * (0.07 + 0.002 * p + 3e-7 * p * p)

    rows = [["cpu-test", "step_prefill", "smollm2-135m", 1, p, 1, prefill_ms(p)] for p in (80, 250, 1280)]
    rows += [["cpu-test", "step_decode", "smollm2-135m", 1, b, 55, 1e3 * (0.07 + 0.004 * b)]
             for b in (1, 8, 32)]
    write_rows(tmp_path / "p.csv", rows)
    fitted = fit_step_model(read_profile(tmp_path / "p.csv"))
    assert (fitted.step_overhead_s, fitted.prefill_s_per_token, fitted.decode_s_per_seq,
            fitted.prefill_attention_s_per_token2) == pytest.approx((0.07, 0.002, 0.004, 3e-7), rel=1e-6)
    assert [predict_step_ms(r, fitted) for r in read_profile(tmp_path / "p.csv")] == pytest.approx(
        [r[-1] for r in rows])
    # the cost model prices a step's chunks by sum c(c + 2p): a prompt of 250 after 100 cached tokens
    # costs its 250 tokens and 250 * 450 token pairs, beside 4 decodes
    cpu = CPU.model_copy(update={"step_model": fitted})
    c = CostModel(load_models().get("smollm2-135m"), gpus={"cpu-test": cpu})
    cfg = ReplicaConfig("cpu-test", precision="fp32")
    assert c.prefill_time_s(cfg, [250]) == pytest.approx(prefill_ms(250) * 1e-3)
    assert c.step_time_s(cfg, ((250, 100),), 4, 400) == pytest.approx(
        0.07 + 0.002 * 250 + 3e-7 * 250 * 450 + 0.004 * 4)


def test_fit_needs_both_step_kinds(tmp_path):
    write_rows(tmp_path / "p.csv", [["cpu-test", "step_decode", "smollm2-135m", 1, 4, 40, 90.0]])
    with pytest.raises(ConfigError, match="step_prefill"):
        fit_step_model(read_profile(tmp_path / "p.csv"))


def test_catalog_has_a_vllm_cpu_replica_with_its_step_model():
    cpu = load_gpus().get("vllm-cpu-1core")
    assert cpu.step_model is not None and cpu.kv_cache_gib == 1
    c = CostModel(load_models().get("smollm2-135m"))
    assert c.fits(ReplicaConfig(cpu.name, precision="fp32"))
