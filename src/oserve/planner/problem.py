"""The planning problem in the form the planners share: candidate configs, their per-type capacities,
the demand, the GPU budget per type, and a cached evaluation of a deployment (a count per config)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from oserve.common.errors import InfeasiblePlanError
from oserve.costmodel.catalog import ClusterSpec
from oserve.costmodel.cost_model import CostModel, TypeLoad
from oserve.costmodel.replica_config import ReplicaConfig
from oserve.planner.dispatch_lp import DispatchSolution, solve_dispatch
from oserve.planner.placement import candidate_configs, fits_cluster, gpus_by_type
from oserve.workload.request_types import TypeStats

Counts = tuple[int, ...]


@dataclass
class PlanningProblem:
    cluster: ClusterSpec
    cost: CostModel
    types: list[TypeStats]
    allow_pp: bool = True
    # SLO planning: the candidate configurations (with engine settings) and their per-type capacities,
    # given instead of listed from the cluster and priced by the throughput model
    config_list: list[ReplicaConfig] | None = None
    capacity_matrix: np.ndarray | None = None
    configs: list[ReplicaConfig] = field(init=False)
    capacity: np.ndarray = field(init=False)  # (configs, types) requests/s per replica
    demand: np.ndarray = field(init=False)
    gpu_budget: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        if self.config_list is not None:
            self.configs = list(self.config_list)
            self.capacity = np.asarray(self.capacity_matrix, dtype=float)
        else:
            self.configs = candidate_configs(self.cluster, self.cost, self.allow_pp)
            loads = [TypeLoad(t.mean_input_tokens, t.mean_output_tokens) for t in self.types]
            self.capacity = np.array([[self.cost.type_capacity_rps(c, ld) for ld in loads]
                                      for c in self.configs])
        self.demand = np.array([t.rate_rps for t in self.types], dtype=float)
        if self.demand.sum() <= 0:  # no traffic observed: plan for the types' mix as equal shares
            self.demand = np.ones(len(self.types))
        self.gpu_budget = gpus_by_type(self.cluster)
        self._cache: dict[Counts, float] = {}
        self._feasible: dict[Counts, bool] = {}

    @property
    def type_names(self) -> list[str]:
        return [t.name for t in self.types]

    def as_dict(self, counts: Counts) -> dict[ReplicaConfig, int]:
        return {c: n for c, n in zip(self.configs, counts) if n > 0}

    def gpus_used(self, counts: Counts) -> dict[str, int]:
        used = {t: 0 for t in self.gpu_budget}
        for c, n in zip(self.configs, counts):
            used[c.gpu_type] += n * c.num_gpus
        return used

    def free_gpus(self, counts: Counts) -> dict[str, int]:
        used = self.gpus_used(counts)
        return {t: self.gpu_budget[t] - used[t] for t in self.gpu_budget}

    def feasible(self, counts: Counts) -> bool:
        """Whether the deployment packs onto the cluster (cached: the search asks again and again)."""
        known = self._feasible.get(counts)
        if known is None:
            known = min(counts, default=0) >= 0 and fits_cluster(self.as_dict(counts), self.cluster)
            self._feasible[counts] = known
        return known

    def solve(self, counts: Counts, balance: bool = False) -> DispatchSolution | None:
        idx = [i for i, n in enumerate(counts) if n > 0]
        if not idx:
            return None
        try:
            return solve_dispatch(self.demand, self.capacity[idx], np.array(counts)[idx], balance,
                                  self.type_names)
        except InfeasiblePlanError:  # a type nobody in this deployment serves: scale 0
            return None

    def scale(self, counts: Counts) -> float:
        """Max uniform demand scale of a deployment (0 when infeasible or some type is unserved)."""
        if counts in self._cache:
            return self._cache[counts]
        sol = self.solve(counts) if self.feasible(counts) else None
        value = sol.demand_scale if sol is not None else 0.0
        self._cache[counts] = value
        return value
