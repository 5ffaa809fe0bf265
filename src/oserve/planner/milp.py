"""Exact deployment choice as one mixed-integer LP (beyond OServe's heuristic search).

Under the cost model a replica group's capacity grows linearly with its replica count, so choosing the
counts and the dispatch together is a MILP: maximise the demand scale ``lam`` subject to
``sum_c f[t][c] = lam * d[t]``, ``sum_t f[t][c] / cap[c][t] <= n_c``, ``sum_c n_c * gpus_c <= G`` per GPU
type, ``n_c`` integer. With power-of-two replica sizes that divide the node size, any count vector within
the GPU budget also packs onto the nodes, so the MILP's optimum is the optimum over all deployments (what
the exhaustive planner finds by enumeration, in milliseconds). Where packing fails (odd node sizes), the
caller falls back to the search.

The same flow rows with ``n_c = N_c z_c``, ``z_c`` binary and one ``z`` per GPU type, choose the best
homogeneous deployment of a mixed cluster (one replicated configuration per GPU type) in one solve
instead of one LP per combination (the product of the per-type choices).
"""

from __future__ import annotations

import numpy as np

from oserve.common.errors import InfeasiblePlanError
from oserve.planner.highs import milp_min
from oserve.planner.problem import Counts, PlanningProblem


def _flow_rows(problem: PlanningProblem,
               count_coef: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Rows shared by both MILPs over variables [flows (nf), per-config column (num_c), lam].

    Flow conservation ``sum_c f[t][c] - lam d[t] = 0`` and capacity
    ``sum_t f[t][c] / cap[c][t] - count_coef[c] * x_c <= 0``.
    """
    cap, d = problem.capacity, problem.demand  # (configs, types), (types,)
    num_c, num_t = cap.shape
    pairs = [(t, c) for t in range(num_t) if d[t] > 0 for c in range(num_c) if cap[c, t] > 0]
    nf = len(pairs)
    nv = nf + num_c + 1
    lam = nv - 1
    served = [t for t in range(num_t) if d[t] > 0]
    conserve = np.zeros((len(served), nv))
    capacity = np.zeros((num_c, nv))
    row_of = {t: i for i, t in enumerate(served)}
    for i, (t, c) in enumerate(pairs):
        conserve[row_of[t], i] = 1.0
        capacity[c, i] = 1.0 / cap[c, t]
    conserve[:, lam] = -d[served]
    capacity[np.arange(num_c), nf + np.arange(num_c)] = -count_coef
    rows = np.vstack([conserve, capacity])
    lo = np.concatenate([np.zeros(len(served)), np.full(num_c, -np.inf)])
    hi = np.zeros(len(served) + num_c)
    return rows, lo, hi, nf, nv


def solve_milp(problem: PlanningProblem, time_limit_s: float = 60.0) -> Counts | None:
    """Optimal replica counts, or None when the solver gives up or the result does not pack."""
    num_c = len(problem.configs)
    rows, lo, hi, nf, nv = _flow_rows(problem, np.ones(num_c))
    budget_rows = []
    for gpu_type, budget in problem.gpu_budget.items():
        row = np.zeros(nv)
        for c, cfg in enumerate(problem.configs):
            if cfg.gpu_type == gpu_type:
                row[nf + c] = cfg.num_gpus
        budget_rows.append(row)
        lo, hi = np.append(lo, -np.inf), np.append(hi, float(budget))
    rows = np.vstack([rows] + budget_rows)
    # maximise lam; among optima prefer fewer replicas (a tiny, scale-relative penalty)
    objective = np.zeros(nv)
    objective[nv - 1] = -1.0
    objective[nf:nf + num_c] = 1e-7 * max(1.0, float(problem.demand.sum()))
    integrality = np.zeros(nv)
    integrality[nf:nf + num_c] = 1
    res = milp_min(objective, rows, lo, hi, integrality, 0, np.inf, time_limit_s)
    if res.x is None:
        if res.status == 2:
            raise InfeasiblePlanError("no deployment serves every request type")
        return None
    counts = tuple(int(round(v)) for v in res.x[nf:nf + num_c])
    return counts if problem.feasible(counts) else None


def best_homogeneous(problem: PlanningProblem, replicated: Counts,
                     time_limit_s: float = 60.0) -> Counts | None:
    """The best-scale choice of one configuration per GPU type, each replicated ``replicated[c]`` times
    (configurations with ``replicated[c] == 0`` are not options); None when the solver gives up."""
    num_c = len(problem.configs)
    size = np.asarray(replicated, dtype=float)
    rows, lo, hi, nf, nv = _flow_rows(problem, size)
    for gpu_type in problem.gpu_budget:  # exactly one configuration per GPU type that can host one
        own = [nf + c for c, cfg in enumerate(problem.configs) if cfg.gpu_type == gpu_type and size[c] > 0]
        if own:
            row = np.zeros(nv)
            row[own] = 1.0
            rows, lo, hi = np.vstack([rows, row]), np.append(lo, 1.0), np.append(hi, 1.0)
    integrality = np.zeros(nv)
    integrality[nf:nf + num_c] = 1
    upper = np.full(nv, np.inf)
    upper[nf:nf + num_c] = (size > 0).astype(float)
    objective = np.zeros(nv)
    objective[nv - 1] = -1.0
    # HiGHS's presolve takes ~1 s on this small model; without it the search tree is a single node
    res = milp_min(objective, rows, lo, hi, integrality, 0, upper, time_limit_s, mip_rel_gap=0.0,
                   presolve=False)
    if res.x is None or res.x[nv - 1] <= 0:
        return None
    pick = np.round(res.x[nf:nf + num_c]).astype(int)
    return tuple(int(n) for n in pick * np.asarray(replicated))
