"""Lower level: dispatch per-type demand to replica groups by linear programming (HiGHS, ``planner.highs``).

Given replica groups ``c`` (``n_c`` identical replicas, each able to serve ``cap[c][t]`` requests/s of type
``t`` alone) and a demand ``d[t]`` requests/s, a dispatch is a flow ``f[t][c] >= 0`` with
``sum_c f[t][c] = d[t]``. A replica's utilisation is ``u_c = sum_t f[t][c] / (n_c cap[c][t])``: capacity is
shared across types, each type using the fraction of time it would take alone. The LP minimises the
largest utilisation ``u*``; then ``1/u*`` is the largest uniform scale of the demand the deployment can
carry (max concurrent flow) and the groups whose capacity constraint has a non-zero dual are the
bottlenecks. Identical replicas get equal shares, which loses nothing: the LP is convex, so averaging any
optimal dispatch over a group's replicas is optimal too.

The tie-break balances utilisation lexicographically: with the bottleneck groups held at ``u*``, the
largest utilisation of the others is minimised, and so on, so slack is spread instead of piled up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from oserve.common.errors import InfeasiblePlanError
from oserve.planner.highs import linprog_min

_TIGHT = 1e-9


@dataclass(frozen=True)
class DispatchSolution:
    """Per-group flow at the given demand, utilisations and the max uniform demand scale."""

    flow: np.ndarray  # (types, groups), requests/s of each type sent to each group (all its replicas)
    utilisation: np.ndarray  # (groups,), per replica of the group, at the given demand
    demand_scale: float  # 1 / max utilisation
    bottleneck: np.ndarray  # (groups,) bool


def _solve_minmax(demand: np.ndarray, cap_total: np.ndarray,
                  fixed: dict[int, float]) -> tuple[float, np.ndarray, np.ndarray] | None:
    """min t s.t. flow conserves demand, u_c <= t for free groups, u_c <= fixed[c] for fixed ones."""
    num_t, num_c = cap_total.shape[1], cap_total.shape[0]
    pairs = [(t, c) for t in range(num_t) if demand[t] > 0 for c in range(num_c) if cap_total[c, t] > 0]
    index = {p: i for i, p in enumerate(pairs)}
    nv = len(pairs) + 1  # last variable is t
    a_eq = np.zeros((num_t, nv))
    b_eq = np.zeros(num_t)
    for (t, _c), i in index.items():
        a_eq[t, i] = 1.0
    b_eq[:] = demand
    rows_eq = [t for t in range(num_t) if demand[t] > 0]
    a_ub = np.zeros((num_c, nv))
    b_ub = np.zeros(num_c)
    for (t, c), i in index.items():
        a_ub[c, i] = 1.0 / cap_total[c, t]
    for c in range(num_c):
        if c in fixed:
            b_ub[c] = fixed[c]
        else:
            a_ub[c, -1] = -1.0
    cost = np.zeros(nv)
    cost[-1] = 1.0
    res = linprog_min(cost, a_ub, b_ub, a_eq[rows_eq], b_eq[rows_eq])
    if res.x is None or res.ineq_marginals is None:
        return None
    flow = np.zeros((num_t, num_c))
    for (t, c), i in index.items():
        flow[t, c] = res.x[i]
    return float(res.x[-1]), flow, res.ineq_marginals


def solve_dispatch(demand_rps: np.ndarray, capacity_rps: np.ndarray, counts: np.ndarray,
                   balance: bool = True, type_names: list[str] | None = None) -> DispatchSolution:
    """Optimal dispatch of ``demand_rps[t]`` to groups with per-replica ``capacity_rps[c][t]``."""
    demand = np.asarray(demand_rps, dtype=float)
    demand = np.where(demand < 1e-9, 0.0, demand)  # sub-nano rates are noise and break scaling
    counts = np.asarray(counts, dtype=float)
    cap_total = np.asarray(capacity_rps, dtype=float) * counts[:, None]
    for t in np.flatnonzero(demand > 0):
        if not np.any(cap_total[:, t] > 0):
            name = type_names[t] if type_names else f"type {t}"
            raise InfeasiblePlanError(f"no replica in the deployment can serve request type {name}")
    num_c = cap_total.shape[0]
    if demand.sum() <= 0:
        return DispatchSolution(np.zeros((len(demand), num_c)), np.zeros(num_c), float("inf"),
                                np.zeros(num_c, bool))
    solved = _solve_minmax(demand, cap_total, {})
    if solved is None:
        raise InfeasiblePlanError("dispatch LP failed to solve")
    t_star, flow, marg = solved
    bottleneck = marg < -_TIGHT
    if balance:
        fixed = {int(c): t_star * (1 + 1e-9) for c in np.flatnonzero(bottleneck)}
        for _ in range(4):
            if len(fixed) >= num_c:
                break
            step = _solve_minmax(demand, cap_total, fixed)
            if step is None:
                break
            t_next, flow_next, marg_next = step
            flow = flow_next
            newly = [c for c in range(num_c) if c not in fixed and marg_next[c] < -_TIGHT]
            if not newly:
                break
            for c in newly:
                fixed[c] = t_next * (1 + 1e-9)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_group = np.where(cap_total.T > 0, flow / cap_total.T, 0.0)
    utilisation = per_group.sum(axis=0)
    return DispatchSolution(flow, utilisation, 1.0 / t_star if t_star > 0 else float("inf"), bottleneck)
