"""A large fleet simulated on every fast path equals the reference paths request by request.

Fast paths: routing from the outstanding counts grouped by value (``LoadIndex``, fleets of more than
``SMALL_SET`` replicas), DecodeSet steps, decode runs in closed form; reference: every routing choice by
a scan of the counts and every step by ``batching.schedule_step`` (``Simulation(fast_steps=False)``).
"""

from __future__ import annotations

import numpy as np
import pytest
from tests.sim.factories import poisson_workload, run

from oserve.costmodel.catalog import load_models
from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.dispatch_policy import SMALL_SET, DispatchTable
from oserve.sim.batching import BatchingConfig
from oserve.sim.config import SimConfig
from oserve.sim.simulator import Simulation, replicas_from_configs

ARRAYS = ("first_token_s", "finish_s", "replica_id", "num_preemptions", "drop_reason")
STATS = ("busy_s", "peak_kv_frac", "num_steps", "num_events", "num_preemptions", "num_requests",
         "prefill_tokens", "decode_tokens")


def _simulate(fast: bool, dispatch: str, num_replicas: int, weights):
    cost = CostModel(load_models().get("llama-2-13b"))
    setups = replicas_from_configs([ReplicaConfig("H100-80GB", 1)] * num_replicas, cost)
    sim = Simulation(setups, DispatchTable(weights), SimConfig(dispatch=dispatch),
                     BatchingConfig("chunked", 64, 4096), cost.params.kv_block_tokens, fast_steps=fast)
    arrivals, inputs, outputs = poisson_workload(1500, 40.0 * num_replicas, seed=num_replicas,
                                                 max_in=3000, max_out=400)
    types = np.arange(len(arrivals)) % len(weights)
    return run(sim, arrivals, inputs, outputs, types), sim


@pytest.mark.parametrize("dispatch", ["least-outstanding", "spillover"])
@pytest.mark.parametrize("num_replicas", [SMALL_SET + 8, 3 * SMALL_SET, 2 * SMALL_SET])
def test_large_fleet_fast_paths_equal_the_reference(dispatch, num_replicas):
    """24 and 48 replicas: the even type's credits are floats; 32 (a power of two): in count form for
    least-outstanding (the reference keeps floats throughout)."""
    even = (1.0 / num_replicas,) * num_replicas
    half = tuple(2.0 / num_replicas if r % 2 else 0.0 for r in range(num_replicas))  # not every replica
    (fast, fast_sim), (ref, _) = (_simulate(f, dispatch, num_replicas, (even, half)) for f in (True, False))
    assert fast_sim.router._least is not None  # the LoadIndex was used
    counted = fast_sim.router._dispatcher._chosen[0] is not None
    assert counted == (num_replicas == 2 * SMALL_SET and dispatch == "least-outstanding")
    for key in ARRAYS:
        np.testing.assert_array_equal(getattr(fast, key), getattr(ref, key), err_msg=key)
    assert fast.num_events == ref.num_events and fast.in_system_area == ref.in_system_area
    for a, b in zip(fast.replicas, ref.replicas):
        assert [getattr(a, f) for f in STATS] == [getattr(b, f) for f in STATS]
    assert len(set(fast.replica_id.tolist())) == num_replicas  # the whole fleet served
