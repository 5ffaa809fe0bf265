"""Step times: the cached timer against the cost model, and the closed forms of decode runs."""

from __future__ import annotations

import numpy as np
import pytest

from oserve.costmodel.catalog import load_models
from oserve.costmodel.cost_model import CostModel, TypeLoad
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.dispatch_policy import DispatchTable
from oserve.sim.api import batching_config
from oserve.sim.config import SimConfig
from oserve.sim.simulator import Simulation, replicas_from_configs
from oserve.sim.step_timer import CostModelStepTimer, decode_run_s, decode_steps_within, quantize


@pytest.fixture(scope="module")
def cost():
    return CostModel(load_models().get("llama-2-70b"))


def test_quantize_is_exact_when_small_and_within_one_percent_above():
    assert quantize(100) == 100
    for x in (300.0, 1234.0, 8191.0, 1e6):
        assert abs(quantize(x) / x - 1) < 0.006


@pytest.mark.parametrize("tp", [2, 4, 8])
def test_cached_step_times_match_the_cost_model(cost, tp):
    cfg = ReplicaConfig("H100-80GB", tp)
    timer = CostModelStepTimer(cost, cfg)
    rng = np.random.default_rng(0)
    for _ in range(50):
        chunks = tuple((int(c), int(p)) for c, p in zip(rng.integers(1, 3000, rng.integers(0, 4)),
                                                       rng.integers(0, 2000, 4)))
        batch = int(rng.integers(0 if chunks else 1, 200))
        ctx = float(batch * rng.integers(10, 3000))
        exact = cost.step_time_s(cfg, chunks, batch, ctx)
        tokens = sum(c for c, _ in chunks)
        sq = sum(c * (c + 2 * p) for c, p in chunks)
        assert timer.step_s(tokens, len(chunks), sq, batch, ctx) == pytest.approx(exact, rel=0.01)


def test_decode_run_sums_its_steps_and_cut_finds_the_boundary():
    line, batch, ctx = (0.02, 1e-7), 8, 5000.0
    steps = [line[0] + line[1] * (ctx + i * batch) for i in range(100)]
    assert decode_run_s(line, batch, ctx, 100) == pytest.approx(sum(steps))
    cumulative = np.cumsum(steps)
    for elapsed in (1e-6, 0.02, 0.5, float(cumulative[40]), float(cumulative[40]) + 1e-9, 1.7):
        n = decode_steps_within(line, batch, ctx, elapsed, 100)
        assert cumulative[n - 1] >= elapsed - 1e-12
        assert n == 1 or cumulative[n - 2] < elapsed


@pytest.mark.parametrize("tp,shape", [(8, (1000, 200)), (8, (300, 500)), (4, (300, 500))])
def test_saturated_replica_serves_what_the_planner_assumes(cost, tp, shape):
    """A replica fed above its capacity completes requests at the cost model's per-type capacity."""
    cfg = ReplicaConfig("H100-80GB", tp)
    capacity = cost.type_capacity_rps(cfg, TypeLoad(*shape))
    n = 1500
    arrivals = np.arange(n) / (1.3 * capacity)
    conf = SimConfig()
    sim = Simulation(replicas_from_configs([cfg], cost), DispatchTable(((1.0,),)), conf,
                     batching_config(cost, conf), cost.params.kv_block_tokens)
    res = sim.run(arrivals, np.full(n, shape[0]), np.full(n, shape[1]), np.zeros(n, dtype=np.int64))
    done = np.sort(res.finish_s[res.completed])
    lo, hi = int(0.3 * len(done)), int(0.9 * len(done))
    throughput = (hi - lo) / (done[hi] - done[lo])
    assert throughput == pytest.approx(capacity, rel=0.2)


def test_simulation_reports_the_step_timer_cache_hit_rate(cost):
    cfg = ReplicaConfig("H100-80GB", 4)
    setups = replicas_from_configs([cfg, cfg], cost)  # one configuration: one shared cache
    conf = SimConfig()
    sim = Simulation(setups, DispatchTable(((0.5, 0.5),)), conf, batching_config(cost, conf),
                     cost.params.kv_block_tokens)
    rng = np.random.default_rng(0)
    n = 400
    res = sim.run(np.sort(rng.uniform(0, 20, n)), rng.integers(10, 2000, n), rng.integers(2, 300, n),
                  np.zeros(n, dtype=np.int64))
    stats = res.meta["step_timer"]
    timer = setups[0].timer
    assert stats["misses"] == len(timer._lines) + len(timer._mixed) > 0  # one miss per key cached
    assert stats["lookups"] >= sum(r.num_events for r in res.replicas)  # at least one per event
    assert stats["hit_rate"] == pytest.approx(1 - stats["misses"] / stats["lookups"])
    assert 0.0 < stats["hit_rate"] < 1.0


@pytest.mark.parametrize("cfg", [ReplicaConfig("H100-80GB", 4), ReplicaConfig("H100-80GB", 2, pp=2)])
def test_a_mixed_line_is_the_secant_of_two_cost_model_steps(cost, cfg):
    """A miss prices both contexts in one ``step_times_s`` call: the line is the secant through the two
    ``step_time_s`` values at CTX_PROBE_TOKENS per sequence, exactly."""
    from oserve.sim.step_timer import CTX_PROBE_TOKENS

    timer = CostModelStepTimer(CostModel(cost.model), cfg)
    for tokens, n, batch in ((900.0, 2, 16), (512.0, 1, 1), (3000.0, 3, 120)):
        sq = tokens * tokens / n + 2 * 100.0 * tokens  # n equal chunks after 100 cached tokens
        c1, c2 = (batch * x for x in CTX_PROBE_TOKENS)
        chunks = ((tokens / n, 100.0),) * n
        t1, t2 = (cost.step_time_s(cfg, chunks, batch, c) for c in (c1, c2))
        slope = (t2 - t1) / (c2 - c1)
        assert timer._mixed_line(tokens, n, sq, batch, 0.0) == (t1 - slope * c1, slope)
