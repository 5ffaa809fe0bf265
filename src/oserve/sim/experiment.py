"""Plan-and-simulate pipeline shared by ``oserve simulate`` and the evaluation scripts."""

from __future__ import annotations

import json
from dataclasses import dataclass

from oserve.costmodel.catalog import ClusterSpec
from oserve.costmodel.cost_model import CostModel
from oserve.planner.api import make_plan
from oserve.planner.plan import Plan
from oserve.sim.api import simulate_plan
from oserve.sim.config import SimConfig
from oserve.sim.early_stop import MissBudget
from oserve.sim.metrics import SimResult
from oserve.sim.rate_search import RateSearchResult, search_max_scale
from oserve.workload.request_types import RequestTypes, TypeStats, fit_request_types
from oserve.workload.slo import Slo
from oserve.workload.trace import Trace, load_trace


@dataclass(frozen=True)
class PreparedTrace:
    """A trace fitted to the model's context, its request types and their statistics."""

    trace: Trace
    types: RequestTypes
    stats: list[TypeStats]
    num_clipped: int


def prepare_trace(trace_spec: str | Trace, cost_model: CostModel, num_types: int = 4, seed: int = 0,
                  window_s: tuple[float, float] | None = None, clip: bool = True) -> PreparedTrace:
    """Load, window and clip a trace; fit request types on it (the router's online typing)."""
    trace = trace_spec if isinstance(trace_spec, Trace) else load_trace(trace_spec)
    if window_s is not None:
        trace = trace.window(*window_s)
        trace = Trace(trace.arrival_s - trace.arrival_s[0], trace.input_tokens, trace.output_tokens,
                      trace.name, dict(trace.meta))
    num_clipped = 0
    if clip:
        trace, num_clipped = trace.clipped_to_context(cost_model.model.max_context_tokens)
    types = fit_request_types(trace, num_types, seed)
    return PreparedTrace(trace, types, types.stats(trace), num_clipped)


def plan_for(cluster: ClusterSpec, cost_model: CostModel, prepared: PreparedTrace, planner: str,
             rate_scale: float = 1.0) -> Plan:
    stats = prepared.types.stats(prepared.trace.scaled(rate_scale)) if rate_scale != 1.0 \
        else prepared.stats
    return make_plan(cluster, cost_model.model, stats, planner, cost_model)


def simulate_at(plan: Plan, prepared: PreparedTrace, cost_model: CostModel, config: SimConfig,
                rate_scale: float = 1.0, progress: bool = False, timers: dict | None = None,
                type_slos: tuple[Slo, ...] | None = None, budget: MissBudget | None = None) -> SimResult:
    trace = prepared.trace if rate_scale == 1.0 else prepared.trace.scaled(rate_scale)
    return simulate_plan(plan, trace, prepared.types, cost_model, config, progress, timers=timers,
                         type_slos=type_slos, budget=budget)


def summary_at(plan: Plan, prepared: PreparedTrace, cost_model: CostModel, config: SimConfig,
               rate_scale: float = 1.0, cache: dict | None = None) -> dict:
    """``simulate_at(...).summary()``, memoised in ``cache`` (when given) by deployment (replicas and
    dispatch) and scale: the same deployment from two planners is simulated once."""
    if cache is None:
        return simulate_at(plan, prepared, cost_model, config, rate_scale).summary()
    key = (json.dumps(plan.to_dict()["replicas"]) + json.dumps(plan.dispatch), round(rate_scale, 9))
    if key not in cache:
        cache[key] = simulate_at(plan, prepared, cost_model, config, rate_scale).summary()
    return cache[key]


def max_sustainable_scale(plan: Plan, prepared: PreparedTrace, cost_model: CostModel,
                          config: SimConfig, p99_bound_s: float, start_scale: float = 1.0,
                          rel_tol: float = 0.05, cache: dict | None = None) -> RateSearchResult:
    """Highest rate scale at which ``plan`` keeps P99 end-to-end latency within the bound (simulations
    memoised in ``cache`` as by ``summary_at``)."""
    def evaluate(scale: float) -> dict:
        return summary_at(plan, prepared, cost_model, config, scale, cache)

    return search_max_scale(evaluate, p99_bound_s, start_scale, rel_tol)
