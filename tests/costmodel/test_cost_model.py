import numpy as np
import pytest

from oserve.costmodel.calibration import (
    OPERATOR_KINDS,
    fit_calibration,
    load_calibration,
    predict_row_ms,
    read_profile,
)
from oserve.costmodel.catalog import load_gpus, load_models
from oserve.costmodel.cost_model import CostModel, TypeLoad
from oserve.costmodel.network import all_reduce_s
from oserve.costmodel.replica_config import ReplicaConfig

H100 = "H100-80GB"


@pytest.fixture(scope="module")
def cm70():
    return CostModel(load_models().get("llama-2-70b"))


def test_memory_fit_and_kv_capacity(cm70):
    assert not cm70.fits(ReplicaConfig(H100, 1))  # 138 GB of weights on one 80 GB card
    kv2, kv4, kv8 = (cm70.kv_capacity_tokens(ReplicaConfig(H100, tp)) for tp in (2, 4, 8))
    assert 0 < kv2 < kv4 < kv8
    # Llama-2-70B: 80 layers x 2 x 8 KV heads x 128 x 2 bytes = 327,680 bytes per token
    per_token = cm70.kv_bytes_per_token_per_gpu(ReplicaConfig(H100, 4)) * 4
    assert per_token == pytest.approx(327680)
    assert cm70.kv_capacity_tokens(ReplicaConfig(H100, 4)) % cm70.params.kv_block_tokens == 0


def test_heads_must_divide_tp():
    cm = CostModel(load_models().get("llama-30b"))  # 52 heads
    assert not cm.fits(ReplicaConfig(H100, 8))
    assert cm.fits(ReplicaConfig(H100, 4))


def test_step_times_are_monotone(cm70):
    cfg = ReplicaConfig(H100, 4)
    d = [cm70.decode_step_s(cfg, b, b * 1000) for b in (1, 8, 64, 256)]
    assert d == sorted(d) and d[0] > cm70.params.step_overhead_s
    p = [cm70.prefill_time_s(cfg, [s]) for s in (128, 1024, 8192)]
    assert p == sorted(p)
    # long prompts are compute bound: 8x the tokens costs roughly 8x (more, with attention)
    assert 5 < p[2] / p[1] < 12


def test_tensor_parallel_speeds_up_decode_but_adds_allreduce(cm70):
    t4 = cm70.decode_step_s(ReplicaConfig(H100, 4), 1, 1000)
    t8 = cm70.decode_step_s(ReplicaConfig(H100, 8), 1, 1000)
    assert t8 < t4 < 2 * t8
    assert all_reduce_s(1e6, 8) > all_reduce_s(1e6, 1) == 0.0


def test_pipeline_parallel_latency_vs_throughput(cm70):
    pp = ReplicaConfig(H100, 2, 2)
    tp = ReplicaConfig(H100, 4, 1)
    load = TypeLoad(500, 100)
    assert cm70.type_capacity_rps(pp, load) > 0 and cm70.type_capacity_rps(tp, load) > 0
    # one token through a 2-stage pipeline takes two stage times
    single = cm70.decode_step_s(pp, 1, 500)
    assert single > cm70.stage_time_s(pp, (), 1, 500) * 2


def test_capacity_formula_matches_definition(cm70):
    cfg = ReplicaConfig(H100, 4)
    load = TypeLoad(1000, 200)
    x = cm70.type_capacity_rps(cfg, load)
    b = cm70.max_batch(cfg, load)
    # at the capacity, prefill plus decode work fill exactly the replica's time
    t_p = cm70._prefill_cost_per_request_s(cfg, 1000)
    t_d = cm70.decode_step_s(cfg, b, b * 1100)
    assert x * t_p + x * 200 * t_d / b <= 1.0 + 1e-9
    assert x >= b / (200 * t_d + b * t_p) * (1 - 1e-9)
    # longer outputs lower the request rate
    assert cm70.type_capacity_rps(cfg, TypeLoad(1000, 800)) < x


def test_tpot_slo_caps_batch():
    m = load_models().get("llama-2-70b")
    free = CostModel(m, tpot_slo_s=None)
    tight = CostModel(m, tpot_slo_s=0.05)
    cfg = ReplicaConfig(H100, 4)
    load = TypeLoad(2000, 300)
    b = tight.max_batch(cfg, load)
    assert 0 < b < free.max_batch(cfg, load)
    assert tight.effective_tpot_s(cfg, load, b) <= 0.05 < tight.effective_tpot_s(cfg, load, b + 1)
    assert tight.decode_step_s(cfg, b, b * 2150) <= 0.05
    assert tight.type_capacity_rps(cfg, load) < free.type_capacity_rps(cfg, load)


def test_config_that_cannot_meet_the_tpot_bound_has_no_capacity():
    m = load_models().get("llama-2-70b")
    cfg = ReplicaConfig(H100, 1, 4)  # one GPU's bandwidth per token: slow tokens
    strict = CostModel(m, tpot_slo_s=0.02)
    assert strict.max_batch(cfg, TypeLoad(500, 100)) == 0
    assert strict.type_capacity_rps(cfg, TypeLoad(500, 100)) == 0.0


def test_shipped_calibration_meets_targets_on_held_out_models(profiles_dir):
    cal = load_calibration()
    rows = read_profile(profiles_dir / "h100_operator_profile.csv") + read_profile(
        profiles_dir / "h100_layer_profile.csv")
    models, gpu = load_models(), load_gpus().get(H100)
    held = [r for r in rows if r.model not in cal.fitted_on]
    assert {r.model for r in held} >= {"llama-3-8b", "opt-30b", "llama-2-13b"}
    errs = np.array([abs(predict_row_ms(r, models.get(r.model), gpu, cal) / r.ms - 1) for r in held])
    assert np.median(errs) <= 0.10 and np.percentile(errs, 90) <= 0.25


def test_fit_recovers_shipped_calibration(profiles_dir):
    rows = read_profile(profiles_dir / "h100_operator_profile.csv")
    m = load_models()
    models = {n: m.get(n) for n in {r.model for r in rows}}
    cal = fit_calibration(rows, models, load_gpus().get(H100), ["llama-2-7b", "llama-2-70b"])
    shipped = load_calibration()
    for k in OPERATOR_KINDS:
        assert cal.kinds[k].compute_eff == pytest.approx(shipped.kinds[k].compute_eff, rel=0.05)


def test_step_times_at_several_contexts_are_the_single_calls_floats():
    """``step_times_s`` shares the work that does not depend on the decode context; its floats are
    exactly ``step_time_s``'s, with and without prefill, decode or pipeline stages."""
    rng = np.random.default_rng(7)
    cost = CostModel(load_models().get("llama-2-70b"))
    for cfg in (ReplicaConfig("H100-80GB", 4), ReplicaConfig("A100-80GB", 8),
                ReplicaConfig("H100-80GB", 2, pp=2)):
        for _ in range(60):
            chunks = tuple((float(rng.uniform(1, 3000)), float(rng.uniform(0, 2000)))
                           for _ in range(int(rng.integers(0, 4))))
            batch = int(rng.choice([0, 1, int(rng.integers(1, 256))]))
            ctxs = (batch * 256.0, batch * 4096.0, batch * float(rng.uniform(1, 3000)))
            assert cost.step_times_s(cfg, chunks, batch, ctxs) == [cost.step_time_s(cfg, chunks, batch, c)
                                                                   for c in ctxs]
