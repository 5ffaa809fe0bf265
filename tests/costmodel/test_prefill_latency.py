"""The prefill-only replica's TTFT model (costmodel.prefill_latency): a packed step costs its tokens, as
the measured layer profile shows, and the queue's known limits."""

import numpy as np
import pytest

from oserve.costmodel.calibration import read_profile
from oserve.costmodel.catalog import load_models
from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.latency_model import ReplicaLatencyModel
from oserve.costmodel.prefill_latency import PrefillPoolModel
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.workload.burstiness import LengthSample


@pytest.fixture(scope="module")
def pool():
    cost = CostModel(load_models().get("llama-2-70b"))
    return PrefillPoolModel(ReplicaLatencyModel(cost, ReplicaConfig("H100-80GB", 4).with_engine(8192)))


def test_a_packed_step_costs_its_tokens_as_the_layer_profile_measures(pool, profiles_dir):
    """Eight 1,024-token prompts in one step: the measured per-layer prefill time is linear in tokens
    above 1,024 (so the step costs ~8x a 1,024-token layer pass per layer); the pool model's full step
    agrees, while the colocated model's sum of chunk extras (each less a decode step) falls far short."""
    rows = {r.a: r.ms for r in read_profile(profiles_dir / "h100_layer_profile.csv")
            if r.kind == "layer_prefill" and r.model == "llama-2-70b" and r.tp == 4}
    assert rows[8192] / 8192 == pytest.approx(rows[1024] / 1024, rel=0.15)  # linear: measured
    layers = pool.replica.cost.model.num_layers
    measured_s = layers * 8 * rows[1024] / 1e3
    assert pool.full_step_s(1024) == pytest.approx(measured_s, rel=0.15)
    extras_s = 8 * pool.replica.chunk_extra_s(1024, 0) + pool.replica.decode_s(1, 1)
    assert extras_s < 0.85 * measured_s


def test_alone_time_is_the_prompts_own_chunk_steps(pool):
    cost, hw = pool.replica.cost, pool.replica.hw
    c = pool.budget_tokens
    two = cost.step_time_s(hw, ((c, 0),)) + cost.step_time_s(hw, ((100, c),))
    assert pool.alone_s(c + 100) == pytest.approx(two)


def test_idle_replica_meets_bounds_its_prompts_fit_and_overload_is_zero(pool):
    samples = [LengthSample((500, 1500), (1, 1)), LengthSample((6000,), (1,))]
    bound_ok = pool.alone_s(6000) * 1.01
    low = pool.predict(samples, np.array([1e-4, 1e-4]), [10.0, bound_ok])
    assert not low.overloaded and low.ttft_attainment == pytest.approx((1.0, 1.0), abs=1e-3)
    tight = pool.predict(samples, np.array([1e-4, 1e-4]), [10.0, pool.alone_s(6000) * 0.99])
    assert tight.ttft_attainment[1] == 0.0
    # throughput bound: the packed service of the mix over one second
    per_s = pool.full_step_s(2000) / pool.budget_tokens
    cap_rps = 1.0 / (per_s * 2000)
    hot = pool.predict([LengthSample((2000,), (1,))], np.array([1.05 * cap_rps]), [10.0])
    assert hot.overloaded and hot.ttft_attainment == (0.0,)
    mid = pool.predict([LengthSample((2000,), (1,))], np.array([0.5 * cap_rps]), [10.0])
    assert not mid.overloaded and 0.4 < mid.utilisation < 0.7
