"""The simulator against cases with known answers: constant step times and queueing arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
from tests.sim.factories import make_sim, poisson_workload, run

STEP = 0.01


def test_single_request_takes_one_step_per_token():
    res = run(make_sim(step_s=STEP), [1.0], [100], [50])
    assert res.first_token_s[0] == pytest.approx(1.0 + STEP)  # the prefill step samples token 1
    assert res.finish_s[0] == pytest.approx(1.0 + 50 * STEP)  # then 49 decode steps
    assert res.tpot_s[0] == pytest.approx(STEP)


def test_long_prompt_is_prefilled_in_budget_sized_chunks():
    res = run(make_sim(step_s=STEP, max_tokens=1000), [0.0], [2500], [10])
    assert res.ttft_s[0] == pytest.approx(3 * STEP)  # 1000 + 1000 + 500
    assert res.e2e_s[0] == pytest.approx(12 * STEP)


@pytest.mark.parametrize("mode", ["chunked", "prefill-first"])
def test_one_at_a_time_replica_follows_lindley_recursion(mode):
    """With max_num_seqs = 1, a replica is a FIFO single server: finish = max(arrival, prev) + service."""
    arrivals, inputs, outputs = poisson_workload(400, rate_rps=1.0, seed=3, max_in=500, max_out=200)
    res = run(make_sim(step_s=STEP, max_num_seqs=1, mode=mode), arrivals, inputs, outputs)
    expected, prev = [], 0.0
    for a, o in zip(arrivals, outputs):
        prev = max(a, prev) + o * STEP
        expected.append(prev)
    np.testing.assert_allclose(res.finish_s, expected, rtol=0, atol=1e-9)
    assert (res.drop_reason == "").all()


def test_batched_request_waits_at_most_one_step_for_admission():
    """With room for everyone, each request runs at one token per step once the next step starts."""
    arrivals, inputs, outputs = poisson_workload(500, rate_rps=20.0, seed=1, max_in=300, max_out=100)
    res = run(make_sim(step_s=STEP), arrivals, inputs, outputs)
    service = outputs * STEP
    assert np.all(res.e2e_s >= service - 1e-9)
    assert np.all(res.e2e_s <= service + STEP + 1e-9)


def test_littles_law_holds_on_a_long_run():
    arrivals, inputs, outputs = poisson_workload(3000, rate_rps=8.0, seed=7)
    res = run(make_sim(num_replicas=2, step_s=0.02, kv_blocks=2000), arrivals, inputs, outputs)
    assert res.completed.all()
    span = res.end_s - arrivals[0]
    mean_in_system = res.in_system_area / span  # L, integrated event by event
    arrival_rate = len(arrivals) / span  # lambda over the same window
    assert mean_in_system == pytest.approx(arrival_rate * res.e2e_s.mean(), rel=1e-6)  # L = lambda W


def test_deterministic_utilisation_matches_offered_work():
    """Alone on a replica, requests keep it busy exactly for their steps."""
    arrivals = [0.0, 10.0, 20.0]
    res = run(make_sim(step_s=STEP), arrivals, [10, 10, 10], [100, 200, 300])
    assert res.replicas[0].busy_s == pytest.approx(600 * STEP)
    assert res.replicas[0].num_steps == 600
