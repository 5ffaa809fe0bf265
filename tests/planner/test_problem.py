"""PlanningProblem: what counts as an infeasible deployment."""

from __future__ import annotations

import numpy as np
import pytest

from oserve.common.errors import InfeasiblePlanError


def test_plan_scale_propagates_errors_that_are_not_infeasibility(monkeypatch):
    """Only an infeasible LP means "capacity 0"; any other failure is a bug and must surface."""
    from oserve.costmodel.catalog import load_models, parse_cluster
    from oserve.costmodel.cost_model import CostModel
    from oserve.planner import problem as problem_mod
    from oserve.workload.request_types import TypeStats

    stats = [TypeStats(name="t", mean_input_tokens=100.0, mean_output_tokens=10.0, p90_input_tokens=150.0,
                       p90_output_tokens=20.0, count=10, rate_rps=1.0)]
    cost = CostModel(load_models().get("llama-2-7b"))
    problem = problem_mod.PlanningProblem(parse_cluster("1x8xH100"), cost, stats)
    counts = tuple(1 if i == 0 else 0 for i in range(len(problem.configs)))

    def infeasible(*a, **k):
        raise InfeasiblePlanError("nobody serves t")

    monkeypatch.setattr(problem_mod, "solve_dispatch", infeasible)
    assert problem.solve(counts) is None

    def broken(*a, **k):
        raise np.linalg.LinAlgError("a bug, not infeasibility")

    monkeypatch.setattr(problem_mod, "solve_dispatch", broken)
    with pytest.raises(np.linalg.LinAlgError):
        problem.solve(counts)
