"""Exact deployment choice as one mixed-integer LP (beyond OServe's heuristic search).

Under the cost model a replica group's capacity grows linearly with its replica count, so choosing the
counts and the dispatch together is a MILP: maximise the demand scale ``lam`` subject to
``sum_c f[t][c] = lam * d[t]``, ``sum_t f[t][c] / cap[c][t] <= n_c``, ``sum_c n_c * gpus_c <= G`` per GPU
type, ``n_c`` integer. With power-of-two replica sizes that divide the node size, any count vector within
the GPU budget also packs onto the nodes, so the MILP's optimum is the optimum over all deployments (what
the exhaustive planner finds by enumeration, in milliseconds). Where packing fails (odd node sizes), the
caller falls back to the search.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from oserve.common.errors import InfeasiblePlanError
from oserve.planner.problem import Counts, PlanningProblem


def solve_milp(problem: PlanningProblem, time_limit_s: float = 60.0) -> Counts | None:
    """Optimal replica counts, or None when the solver gives up or the result does not pack."""
    cap = problem.capacity  # (configs, types)
    d = problem.demand
    num_c, num_t = cap.shape
    pairs = [(t, c) for t in range(num_t) if d[t] > 0 for c in range(num_c) if cap[c, t] > 0]
    nf = len(pairs)
    # variables: flows (nf), counts (num_c), lam (1)
    nv = nf + num_c + 1
    lam = nv - 1
    rows, lo, hi = [], [], []
    for t in range(num_t):
        if d[t] <= 0:
            continue
        row = np.zeros(nv)
        for i, (tt, c) in enumerate(pairs):
            if tt == t:
                row[i] = 1.0
        row[lam] = -d[t]
        rows.append(row), lo.append(0.0), hi.append(0.0)
    for c in range(num_c):
        row = np.zeros(nv)
        for i, (t, cc) in enumerate(pairs):
            if cc == c:
                row[i] = 1.0 / cap[c, t]
        row[nf + c] = -1.0
        rows.append(row), lo.append(-np.inf), hi.append(0.0)
    for gpu_type, budget in problem.gpu_budget.items():
        row = np.zeros(nv)
        for c, cfg in enumerate(problem.configs):
            if cfg.gpu_type == gpu_type:
                row[nf + c] = cfg.num_gpus
        rows.append(row), lo.append(-np.inf), hi.append(float(budget))
    # maximise lam; among optima prefer fewer replicas (a tiny, scale-relative penalty)
    objective = np.zeros(nv)
    objective[lam] = -1.0
    objective[nf:nf + num_c] = 1e-7 * max(1.0, float(d.sum()))
    integrality = np.zeros(nv)
    integrality[nf:nf + num_c] = 1
    res = milp(objective, constraints=LinearConstraint(np.array(rows), lo, hi), integrality=integrality,
               bounds=Bounds(0, np.inf), options={"time_limit": time_limit_s})
    if res.x is None:
        if res.status == 2:
            raise InfeasiblePlanError("no deployment serves every request type")
        return None
    counts = tuple(int(round(v)) for v in res.x[nf:nf + num_c])
    return counts if problem.feasible(counts) else None
