"""The simulator's speed target (slow: run with -m slow)."""

from __future__ import annotations

import pytest

from oserve.costmodel.catalog import load_models, parse_cluster
from oserve.costmodel.cost_model import CostModel
from oserve.sim.config import SimConfig
from oserve.sim.experiment import plan_for, prepare_trace, simulate_at


@pytest.mark.slow
def test_full_conv_trace_on_32_gpus_in_under_30_seconds():
    cost = CostModel(load_models().get("llama-2-70b"))
    prepared = prepare_trace("azure-conv", cost)
    plan = plan_for(parse_cluster("4x8xH100-80GB"), cost, prepared, "default")
    result = simulate_at(plan, prepared, cost, SimConfig())
    assert len(result.arrival_s) == 19366
    assert result.completed.all()
    assert result.wall_s < 30.0
