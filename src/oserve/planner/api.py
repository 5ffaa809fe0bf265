"""Planning entry point: from cluster, model and request types to a Plan.

Planners: ``oserve`` (LP dispatch + flow-guided deployment search, started from the best homogeneous
deployment or from a given current deployment), ``milp`` (the exact joint optimum by mixed-integer LP),
``homogeneous``, ``default`` and ``exhaustive``. Under SLOs, ``planner.slo_planner`` plans for goodput
(``oserve`` and ``homogeneous-tuned``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from oserve.common.errors import ConfigError, InfeasiblePlanError
from oserve.costmodel.catalog import ClusterSpec, ModelSpec
from oserve.costmodel.cost_model import CostModel
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner import references
from oserve.planner.milp import solve_milp
from oserve.planner.placement import pack
from oserve.planner.plan import Plan
from oserve.planner.problem import Counts, PlanningProblem
from oserve.planner.search import SearchParams, flow_guided_search
from oserve.workload.request_types import TypeStats

PLANNERS = ("oserve", "milp", "homogeneous", "homogeneous-tuned", "default", "exhaustive")


def _choose(problem: PlanningProblem, planner: str, initial: Mapping[ReplicaConfig, int] | None,
            search: SearchParams) -> Counts:
    if planner == "homogeneous":
        return references.homogeneous(problem)
    if planner == "homogeneous-tuned":
        raise ConfigError("planner 'homogeneous-tuned' tunes engine settings for an SLO: give one "
                          "(--slo loose|tight|FILE or --slo-ttft/--slo-tpot)")
    if planner == "default":
        return references.default(problem)
    if planner == "exhaustive":
        return references.exhaustive(problem)
    if planner == "milp":
        exact = solve_milp(problem)
        return exact if exact is not None else flow_guided_search(
            problem, references.homogeneous(problem), search)
    if planner == "oserve":
        homogeneous = references.homogeneous(problem)
        best = flow_guided_search(problem, homogeneous, search)
        if initial:
            warm = tuple(int(initial.get(c, 0)) for c in problem.configs)
            if problem.feasible(warm):
                from_current = flow_guided_search(problem, warm, search)
                if problem.scale(from_current) >= problem.scale(best) * (1 - 1e-6):
                    best = from_current
        margin = 1 + search.min_gain_over_homogeneous
        if best != homogeneous and problem.scale(best) < problem.scale(homogeneous) * margin:
            return homogeneous
        return best
    raise ConfigError(f"unknown planner '{planner}'; choose one of {', '.join(PLANNERS)}")


def build_plan(problem: PlanningProblem, counts: Counts, planner: str, seconds: float) -> Plan:
    """Place a deployment on GPUs and attach its balanced dispatch."""
    replicas = pack(problem.as_dict(counts), problem.cluster)
    if not replicas:
        raise InfeasiblePlanError("the chosen deployment does not fit the cluster")
    sol = problem.solve(counts, balance=True)
    if sol is None:
        raise InfeasiblePlanError("the chosen deployment cannot serve every request type")
    group_of = {cfg: j for j, cfg in enumerate(c for c, n in zip(problem.configs, counts) if n > 0)}
    cfg_index = {c: i for i, c in enumerate(problem.configs)}
    num_types = len(problem.types)
    dispatch = np.zeros((num_types, len(replicas)))
    capacity = np.zeros((len(replicas), num_types))
    utilisation = np.zeros(len(replicas))
    for r in replicas:
        g = group_of[r.config]
        n = counts[cfg_index[r.config]]
        capacity[r.replica_id] = problem.capacity[cfg_index[r.config]]
        dispatch[:, r.replica_id] = sol.flow[:, g] / n
        utilisation[r.replica_id] = sol.utilisation[g]
    for t in range(num_types):
        total = dispatch[t].sum()
        if total > 0:
            dispatch[t] /= total
        else:  # no planned traffic of this type: spread it by capacity, should some arrive
            dispatch[t] = capacity[:, t] / capacity[:, t].sum() if capacity[:, t].sum() > 0 else 0
    bottlenecks = tuple(r.replica_id for r in replicas if sol.bottleneck[group_of[r.config]])
    return Plan(
        model=problem.cost.model.name,
        replicas=tuple(replicas),
        type_names=tuple(problem.type_names),
        type_rates_rps=tuple(float(x) for x in problem.demand),
        capacity_rps=tuple(tuple(float(x) for x in row) for row in capacity),
        dispatch=tuple(tuple(float(x) for x in row) for row in dispatch),
        demand_scale=float(sol.demand_scale),
        utilisation=tuple(float(u) for u in utilisation),
        bottlenecks=bottlenecks,
        planner=planner,
        planner_seconds=seconds,
    )


def make_plan(cluster: ClusterSpec, model: ModelSpec, types: list[TypeStats], planner: str = "oserve",
              cost_model: CostModel | None = None, initial: Mapping[ReplicaConfig, int] | None = None,
              allow_pp: bool = True, search: SearchParams = SearchParams()) -> Plan:
    """Choose a deployment of ``model`` on ``cluster`` for the request types' rates and dispatch them.

    ``initial`` is the current deployment (replica count per config): the ``oserve`` planner also searches
    from it and keeps its result when it is as good, so re-planning prefers nearby deployments. The
    ``oserve`` planner returns a heterogeneous deployment only when it beats the best homogeneous one by
    ``search.min_gain_over_homogeneous`` (5%) in predicted capacity.
    """
    start = time.perf_counter()
    cost = cost_model or CostModel(model)
    problem = PlanningProblem(cluster, cost, types, allow_pp)
    counts = _choose(problem, planner, initial, search)
    return build_plan(problem, counts, planner, time.perf_counter() - start)
