"""Simulating a plan on a trace: the entry point the CLI, the benchmarks and the tests use."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from oserve.common.errors import ConfigError
from oserve.costmodel.catalog import ClusterSpec, parse_cluster
from oserve.costmodel.cost_model import CostModel
from oserve.planner.dispatch_policy import DispatchTable
from oserve.planner.plan import Plan
from oserve.sim.batching import BatchingConfig
from oserve.sim.config import SimConfig
from oserve.sim.early_stop import MissBudget
from oserve.sim.handoff import PlanHandoff
from oserve.sim.metrics import SimResult
from oserve.sim.simulator import Simulation, replicas_from_configs
from oserve.workload.request_types import RequestTypes
from oserve.workload.slo import Slo
from oserve.workload.trace import Trace


def request_type_ids(trace: Trace, types: RequestTypes, oracle: bool = False) -> np.ndarray:
    """The type the router gives each request: from its prompt alone, or from both true lengths."""
    if oracle:
        return np.asarray(types.assign(trace.input_tokens, trace.output_tokens), dtype=np.int64)
    return np.asarray(types.classify_online(trace.input_tokens), dtype=np.int64)


def batching_config(cost_model: CostModel, config: SimConfig) -> BatchingConfig:
    p = cost_model.params
    return BatchingConfig(config.batching, config.max_num_seqs or p.max_num_seqs,
                          config.max_num_batched_tokens or p.max_num_batched_tokens)


def plan_handoff(plan: Plan, cost_model: CostModel, cluster: ClusterSpec | None = None) -> PlanHandoff | None:
    """The KV hand-off timer of a disaggregated plan (None for a colocated one), on ``cluster`` or the
    one the plan names."""
    if not plan.is_disaggregated:
        return None
    if cluster is None:
        if plan.cluster is None:
            raise ConfigError("a plan with disaggregated groups must name its cluster (field 'cluster') "
                              "to price the KV hand-offs")
        cluster = parse_cluster(plan.cluster)
    return PlanHandoff(cost_model.model, plan.replicas, cluster)


def simulate_plan(plan: Plan, trace: Trace, types: RequestTypes, cost_model: CostModel,
                  config: SimConfig | None = None, progress: bool = False,
                  cluster: ClusterSpec | None = None, timers: dict | None = None,
                  type_slos: tuple[Slo, ...] | None = None,
                  budget: MissBudget | None = None) -> SimResult:
    """Serve ``trace`` with ``plan``'s replicas and dispatch; step times from ``cost_model``, memoised in
    ``timers`` (a dict kept across calls shares step times between simulations of the same model); KV
    hand-offs of disaggregated groups priced on ``cluster`` (default: the plan's own); ``type_slos``
    (each request type's SLO) is what the ``slo-spill`` dispatch needs; ``budget`` stops a goodput probe
    once it must fail (``sim.early_stop``: the result is then partial)."""
    config = config or SimConfig()
    setups = [replace(s, role=r.role, group=r.group)
              for s, r in zip(replicas_from_configs(plan.configs(), cost_model, timers), plan.replicas)]
    max_context = cost_model.model.max_context_tokens if config.context_policy == "drop" else None
    sim = Simulation(setups, DispatchTable.from_fractions(plan.dispatch), config,
                     batching_config(cost_model, config), cost_model.params.kv_block_tokens,
                     max_context, handoff=plan_handoff(plan, cost_model, cluster), type_slos=type_slos)
    type_ids = request_type_ids(trace, types, config.oracle_types)
    result = sim.run(trace.arrival_s, trace.input_tokens, trace.output_tokens, type_ids, progress,
                     budget=budget)
    result.meta.update({"plan": plan.describe(), "planner": plan.planner, "trace": trace.name})
    return result
