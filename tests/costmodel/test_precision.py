"""Number formats in the cost model: memory, KV capacity, step times, and where each factor comes from."""

import csv
import math

import pytest

from oserve.common.errors import ConfigError
from oserve.costmodel.calibration import KindFactors, fit_calibration, load_calibration, read_profile
from oserve.costmodel.catalog import load_gpus, load_models
from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.precision import (
    KV_FORMATS,
    WEIGHT_FORMATS,
    gemm_work_for,
    parse_formats,
    weight_format,
)
from oserve.costmodel.replica_config import ReplicaConfig


@pytest.fixture(scope="module")
def cost():
    return CostModel(load_models().get("llama-2-70b"))


def cfg(weights="bf16", kv="bf16", gpu="H100-80GB", tp=2):
    return ReplicaConfig(gpu, tp, 1, weight_format=weights, kv_cache_dtype=kv)


def test_weight_bytes_follow_the_format(cost):
    bf16 = cost.weight_bytes_per_gpu(cfg())
    assert cost.weight_bytes_per_gpu(cfg("fp8")) == pytest.approx(bf16 / 2, rel=1e-3)
    assert cost.weight_bytes_per_gpu(cfg("int8")) == pytest.approx(bf16 / 2, rel=1e-3)
    # INT4 group 128: half a byte plus an fp16 scale and zero per 128 weights
    assert cost.weight_bytes_per_gpu(cfg("int4")) == pytest.approx(bf16 * (0.5 + 4 / 128) / 2, rel=1e-3)


def test_kv_bytes_and_capacity_follow_the_format(cost):
    per_tok = {kv: cost.kv_bytes_per_token_per_gpu(cfg(kv=kv)) for kv in KV_FORMATS}
    assert per_tok["fp8"] == pytest.approx(per_tok["bf16"] / 2)
    assert per_tok["int8"] == pytest.approx(per_tok["bf16"] * (1 + 4 / 128) / 2)
    assert per_tok["int4"] == pytest.approx(per_tok["bf16"] * (0.5 + 4 / 128) / 2)
    # 70B on two H100s: bf16 weights leave little room; fp8 KV holds twice the tokens in the same room
    assert cost.kv_capacity_tokens(cfg(kv="fp8")) == pytest.approx(2 * cost.kv_capacity_tokens(cfg()),
                                                                   abs=32)
    # fp8 weights free memory for KV as well
    assert cost.kv_capacity_tokens(cfg("fp8")) > 3 * cost.kv_capacity_tokens(cfg())


def test_step_times_respond_to_formats_where_the_roofline_says(cost):
    # decode at batch 1 is weight-bandwidth bound: INT4 weights read ~3.8x fewer bytes
    small = {w: cost.decode_step_s(cfg(w), 1, 1024) for w in WEIGHT_FORMATS}
    assert small["int4"] < small["fp8"] < small["bf16"]
    # a large prefill is compute bound: fp8 runs at twice bf16's peak, INT4 pays its dequantisation
    big = {w: cost.prefill_time_s(cfg(w), [8192]) for w in WEIGHT_FORMATS}
    assert big["fp8"] < 0.75 * big["bf16"]
    assert big["int4"] > big["bf16"]
    # long-context decode reads the KV cache: fp8 KV makes the step faster
    assert cost.decode_step_s(cfg(kv="fp8"), 64, 64 * 4096) < cost.decode_step_s(cfg(), 64, 64 * 4096)


def test_bf16_default_is_todays_model(cost):
    plain = ReplicaConfig("H100-80GB", 2, 1)
    assert plain == cfg() and plain.label() == "H100-80GB TP2"
    assert cfg("fp8", "int8").label() == "H100-80GB TP2 W:fp8 KV:int8"


def test_fp8_weights_on_a100_run_weight_only(cost):
    a100 = cfg("fp8", gpu="A100-80GB")
    assert cost.weight_bytes_per_gpu(a100) == pytest.approx(cost.weight_bytes_per_gpu(cfg("fp8")))
    # no FP8 tensor cores: a compute-bound prefill gains nothing over bf16 on the same card
    bf16_a100 = cfg(gpu="A100-80GB")
    assert cost.prefill_time_s(a100, [8192]) == pytest.approx(cost.prefill_time_s(bf16_a100, [8192]),
                                                              rel=0.02)
    factors = cost.precision_factors(a100)
    assert factors["weight bytes/param"].value == 1.0
    assert "fp8 peak TFLOPS" not in factors


def test_unmeasured_kernels_are_flagged_uncalibrated(cost):
    factors = cost.precision_factors(cfg("fp8", "fp8"))
    assert factors["GEMM efficiency"].source == "assumed"
    assert "uncalibrated" in factors["GEMM efficiency"].note
    assert factors["fp8 peak TFLOPS"].source == "datasheet"
    assert factors["weight bytes/param"].source == "exact"
    plain = cost.precision_factors(cfg())
    assert set(plain) == {"weight bytes/param", "KV bytes/value"}  # bf16: nothing assumed
    assert plain["weight bytes/param"].value == 2.0 and plain["KV bytes/value"].value == 2.0


def test_fit_recovers_known_fp8_factors_and_marks_them_measured(tmp_path):
    """Known answer: rows timed by chosen factors at the fp8 peak; the fit must find them again."""
    models = load_models()
    gpu = load_gpus().get("H100")
    base = load_calibration()
    truth = KindFactors(0.004, 0.55, 0.7)
    path = tmp_path / "profile.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["gpu", "kind", "model", "tp", "a", "b", "ms"])
        for name in ("llama-2-7b", "llama-2-70b"):
            m = models.get(name)
            # the bf16 kinds the fit always needs, timed by the shipped factors
            for t in (1, 64, 1024, 8192):
                for layer in ("qkv", "o", "up", "down"):
                    from oserve.costmodel.operators import gemm_work
                    ms_bf16 = base.kinds["gemm"].time_ms(gemm_work(m, 1, layer, t), gpu)
                    w.writerow(["H100", "gemm", name, 1, t, layer, f"{ms_bf16:.6f}"])
                    work = gemm_work_for(m, 1, layer, t, weight_format("fp8"))
                    w.writerow(["H100", "gemm_fp8", name, 1, t, layer,
                                f"{truth.time_ms(work, gpu, 'fp8'):.6f}"])
            from oserve.costmodel.operators import decode_attention_work, prefill_attention_work
            for s in (128, 1024, 4096):
                ms = base.kinds["prefill"].time_ms(prefill_attention_work(m, 1, s, 1), gpu)
                w.writerow(["H100", "prefill", name, 1, s, 1, f"{ms:.6f}"])
                ms = base.kinds["decode"].time_ms(decode_attention_work(m, 1, 16, s), gpu)
                w.writerow(["H100", "decode", name, 1, 16, s, f"{ms:.6f}"])
    rows = read_profile(path)
    cal = fit_calibration(rows, {n: models.get(n) for n in ("llama-2-7b", "llama-2-70b")}, gpu,
                          ["llama-2-7b", "llama-2-70b"])
    fitted = cal.kinds["gemm_fp8"]
    assert fitted.compute_eff == pytest.approx(truth.compute_eff, rel=0.05)
    assert fitted.mem_eff == pytest.approx(truth.mem_eff, rel=0.05)
    fp8 = CostModel(models.get("llama-2-70b"), calibration=cal).precision_factors(cfg("fp8"))
    assert fp8["GEMM efficiency"].source == "measured"
    assert math.isfinite(cal.kind_time_ms("gemm_fp8", gemm_work_for(models.get("llama-2-7b"), 1, "up",
                                                                    64, weight_format("fp8")), gpu))


def test_bad_format_names_are_errors_naming_the_flag():
    assert parse_formats("bf16, fp8", WEIGHT_FORMATS, "--weight-formats") == ("bf16", "fp8")
    with pytest.raises(ConfigError, match="--kv-formats"):
        parse_formats("bf16,fp4", KV_FORMATS, "--kv-formats")
    with pytest.raises(ConfigError, match="unknown weight format"):
        CostModel(load_models().get("llama-2-7b")).weight_bytes_per_gpu(cfg("nf4"))


def test_planner_chooses_formats_only_when_allowed_and_they_round_trip(conv_trace):
    from oserve.costmodel.catalog import parse_cluster
    from oserve.planner.api import make_plan
    from oserve.planner.plan import Plan
    from oserve.workload import fit_request_types

    types = fit_request_types(conv_trace, k=3, seed=0).stats(conv_trace)
    cluster = parse_cluster("1x4xH100")
    model = load_models().get("llama-2-70b")
    plain = make_plan(cluster, model, types, planner="homogeneous")
    assert {r.config.weight_format for r in plain.replicas} == {"bf16"}
    mixed = make_plan(cluster, model, types, planner="homogeneous", weight_formats=("bf16", "fp8"),
                      kv_formats=("bf16", "fp8"))
    # more choice cannot predict less, and on 4 GPUs a 70B model gains from fp8 (more replicas or KV)
    assert mixed.demand_scale >= plain.demand_scale
    assert any(r.config.weight_format == "fp8" or r.config.kv_cache_dtype == "fp8"
               for r in mixed.replicas)
    again = Plan.from_dict(mixed.to_dict())
    assert again.configs() == mixed.configs()
    default = make_plan(cluster, model, types, planner="default", weight_formats=("fp8",))
    assert {r.config.weight_format for r in default.replicas} == {"bf16"}


def test_legacy_fp8_precision_in_a_plan_file_means_fp8_weights():
    from oserve.planner.plan import _replica_config

    cfg_ = _replica_config({"gpu_type": "H100-80GB", "tp": 2, "pp": 1, "precision": "fp8"})
    assert (cfg_.precision, cfg_.weight_format, cfg_.kv_cache_dtype) == ("bf16", "fp8", "bf16")
