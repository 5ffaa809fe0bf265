"""Upper level: flow-guided search over deployments (OServe's GPU-moving heuristic, made concrete).

A deployment is a count of replicas per configuration. Each step solves the dispatch LP of the current
deployment, then tries moves that take GPUs from the least-utilised replica groups (and from the hottest
bottleneck group, to reshape it) and give them to the configurations that serve the bottleneck's traffic
best per GPU; a move retires ``k`` donor replicas (1, half or all of the group) and builds as many
receiver replicas as the freed GPUs hold, re-filling leftovers. The best move is taken even when it does
not improve (a short tabu walk out of local optima); the search stops after ``patience`` steps without
improvement and returns the best deployment seen.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from oserve.planner.dispatch_lp import DispatchSolution
from oserve.planner.problem import Counts, PlanningProblem


class SearchParams(BaseModel):
    """Knobs of the deployment search (validated; unknown keys rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    patience: int = Field(6, ge=1)
    max_steps: int = Field(200, ge=0)
    num_donors: int = Field(2, ge=1)
    num_receivers: int = Field(3, ge=1)
    # A heterogeneous deployment replaces the best homogeneous one only when it is predicted to carry at
    # least this much more: the simulator showed smaller predicted gains are inside the cost model's
    # error and lose to the simpler fleet in tail latency as often as they win.
    min_gain_over_homogeneous: float = Field(0.05, ge=0, allow_inf_nan=False)


def fill(problem: PlanningProblem, counts: Counts) -> Counts:
    """Add replicas on idle GPUs, each time the one that raises the demand scale most."""
    current = counts
    while True:
        free = problem.free_gpus(current)
        options = []
        for i, cfg in enumerate(problem.configs):
            if free[cfg.gpu_type] >= cfg.num_gpus:
                nxt = list(current)
                nxt[i] += 1
                if problem.feasible(tuple(nxt)):
                    options.append(tuple(nxt))
        if not options:
            return current
        current = max(options, key=lambda c: (problem.scale(c), -sum(c)))


def _receivers(problem: PlanningProblem, counts: Counts, sol: DispatchSolution | None, gpu_type: str,
               limit: int) -> list[int]:
    """Configs of one GPU type ranked by how much bottleneck traffic they serve per GPU."""
    idx = [i for i, n in enumerate(counts) if n > 0]
    if sol is None:
        pressure = np.ones(len(problem.demand))
    else:
        cap_total = problem.capacity[idx] * np.array(counts)[idx][:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            busy = np.where(cap_total.T > 0, sol.flow / cap_total.T, 0.0)  # (types, groups)
        pressure = busy[:, sol.bottleneck].sum(axis=1)
        if pressure.sum() <= 0:
            pressure = np.ones(len(problem.demand))
    own = [i for i, c in enumerate(problem.configs) if c.gpu_type == gpu_type]
    value = {i: float(pressure @ problem.capacity[i]) / problem.configs[i].num_gpus for i in own}
    return sorted(own, key=lambda i: -value[i])[:limit]


def _neighbours(problem: PlanningProblem, counts: Counts, params: SearchParams) -> list[Counts]:
    sol = problem.solve(counts)
    idx = [i for i, n in enumerate(counts) if n > 0]
    if sol is None:
        donors = idx
    else:
        order = np.argsort(sol.utilisation)
        donors = [idx[j] for j in order[:params.num_donors]]
        hot = [idx[j] for j in order[::-1] if sol.bottleneck[j]][:1]
        donors += [d for d in hot if d not in donors]
    # the receivers depend only on the current deployment and the GPU type: rank them once per type
    receivers = {t: _receivers(problem, counts, sol, t, params.num_receivers)
                 for t in {problem.configs[a].gpu_type for a in donors}}
    out = []
    for a in donors:
        n_a = counts[a]
        for k in sorted({1, (n_a + 1) // 2, n_a}):
            base = list(counts)
            base[a] -= k
            for b in receivers[problem.configs[a].gpu_type]:
                if b == a:
                    continue
                nxt = list(base)
                free = problem.free_gpus(tuple(nxt))[problem.configs[b].gpu_type]
                nxt[b] += free // problem.configs[b].num_gpus
                out.append(fill(problem, tuple(nxt)))
    return out


def flow_guided_search(problem: PlanningProblem, start: Counts,
                       params: SearchParams = SearchParams()) -> Counts:
    current = fill(problem, start)
    best, best_scale = current, problem.scale(current)
    visited = {current}
    stale = 0
    for _ in range(params.max_steps):
        options = [c for c in _neighbours(problem, current, params) if c not in visited]
        if not options:
            break
        current = max(options, key=lambda c: (problem.scale(c), -sum(c)))
        visited.add(current)
        if problem.scale(current) > best_scale * (1 + 1e-6):
            best, best_scale, stale = current, problem.scale(current), 0
        else:
            stale += 1
            if stale >= params.patience:
                break
    return best
