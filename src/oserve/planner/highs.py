"""The planner's one way to the HiGHS solver: the dispatch LPs (``dispatch_lp``) and MILPs (``milp``).

When ``highspy`` is installed it is called directly: it imports in milliseconds, where
``scipy.optimize`` (which bundles the same solver) costs ~0.4 s of every planning command's start-up.
Otherwise scipy's ``linprog(method="highs")`` and ``milp`` are called, as before. The highspy path hands
HiGHS exactly the model scipy would (rows in compressed-column form, infinite bounds as scipy passes
them, the options scipy sets), so with the same HiGHS version (highspy is pinned to the one scipy
bundles, pyproject.toml) both give bit-for-bit the same solutions; ``tests/planner/test_highs.py``
checks that on the planner's own LPs and MILPs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

try:
    import highspy as _highspy
except ImportError:  # scipy.optimize is the fallback
    _highspy = None

BACKENDS = ("highspy", "scipy")


def default_backend() -> str:
    return "highspy" if _highspy is not None else "scipy"


@dataclass(frozen=True)
class LpResult:
    """``x`` is None when HiGHS found no (optimal, for an LP) solution; ``status`` is scipy's code."""

    status: int
    x: np.ndarray | None
    ineq_marginals: np.ndarray | None = None


def linprog_min(cost: np.ndarray, a_ub: np.ndarray, b_ub: np.ndarray, a_eq: np.ndarray,
                b_eq: np.ndarray, backend: str | None = None) -> LpResult:
    """min cost @ x s.t. a_ub @ x <= b_ub, a_eq @ x = b_eq, x >= 0 (dense matrices); the duals of the
    inequality rows are ``ineq_marginals``."""
    if (backend or default_backend()) == "scipy":
        from scipy.optimize import linprog  # 0.4 s to import

        res = linprog(cost, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq,
                      bounds=[(0, None)] * len(cost), method="highs")
        marg = None if res.status != 0 else np.asarray(res.ineqlin.marginals)
        return LpResult(res.status, res.x if res.status == 0 else None, marg)
    h = _require()
    b_ub, b_eq = np.asarray(b_ub, dtype=float), np.asarray(b_eq, dtype=float)
    rows = np.vstack((np.asarray(a_ub, dtype=float), np.asarray(a_eq, dtype=float)))
    lhs = _finite(np.concatenate((np.full(len(b_ub), -np.inf), b_eq)), h)
    rhs = _finite(np.concatenate((b_ub, b_eq)), h)
    n = len(cost)
    options = {"presolve": "on", "highs_debug_level": h.HighsDebugLevel.kHighsDebugLevelNone,
               "log_to_console": False, "output_flag": False,
               "simplex_strategy": h.simplex_constants.SimplexStrategy.kSimplexStrategyDual}
    status, x, row_dual = _solve(np.asarray(cost, dtype=float), rows, lhs, rhs, np.zeros(n),
                                 _finite(np.full(n, np.inf), h), None, options)
    if x is None or row_dual is None:
        return LpResult(status, None)
    return LpResult(status, x, row_dual[:len(b_ub)])


def milp_min(cost: np.ndarray, rows: np.ndarray, row_lo: np.ndarray, row_hi: np.ndarray,
             integrality: np.ndarray, col_lo: float | np.ndarray, col_hi: float | np.ndarray,
             time_limit_s: float, mip_rel_gap: float | None = None, presolve: bool = True,
             backend: str | None = None) -> LpResult:
    """min cost @ x s.t. row_lo <= rows @ x <= row_hi, col_lo <= x <= col_hi, x integer where
    ``integrality`` is 1."""
    extra = {} if mip_rel_gap is None else {"mip_rel_gap": mip_rel_gap}
    if not presolve:
        extra["presolve"] = False
    if (backend or default_backend()) == "scipy":
        from scipy.optimize import Bounds, LinearConstraint, milp  # 0.4 s to import

        res = milp(cost, constraints=LinearConstraint(rows, row_lo, row_hi), integrality=integrality,
                   bounds=Bounds(col_lo, col_hi), options={"time_limit": time_limit_s, **extra})
        return LpResult(res.status, res.x)
    _require()
    cost = np.asarray(cost, dtype=np.float64)
    options: dict[str, Any] = {"log_to_console": False, "time_limit": time_limit_s, **extra}
    if "presolve" in options:
        options["presolve"] = "on" if options["presolve"] else "off"
    status, x, _ = _solve(cost, np.asarray(rows, dtype=np.float64),
                          np.atleast_1d(np.asarray(row_lo, dtype=np.float64)),
                          np.atleast_1d(np.asarray(row_hi, dtype=np.float64)),
                          np.broadcast_to(col_lo, cost.shape).astype(np.float64),
                          np.broadcast_to(col_hi, cost.shape).astype(np.float64),
                          np.broadcast_to(integrality, cost.shape).astype(np.uint8), options)
    return LpResult(status, x)


def _require() -> Any:
    if _highspy is None:
        raise ImportError("the highspy backend needs the highspy package (pip install highspy)")
    return _highspy._core  # the compiled module, as scipy's wrapper uses it


def _finite(x: np.ndarray, h: Any) -> np.ndarray:
    """As scipy's linprog passes infinite bounds: +-kHighsInf."""
    infs = np.isinf(x)
    x[infs] = np.sign(x[infs]) * h.kHighsInf
    return x


def _csc(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indptr, indices, data) of a dense matrix's non-zeros, column by column, rows ascending (as
    scipy's ``csc_array``)."""
    cols, idx = np.nonzero(rows.T)
    indptr = np.zeros(rows.shape[1] + 1, dtype=np.int32)
    np.cumsum(np.bincount(cols, minlength=rows.shape[1]), out=indptr[1:])
    return indptr, idx.astype(np.int32), rows.T[cols, idx]


# scipy's status codes (``_highs_to_scipy_status_message``) for the HiGHS model statuses that matter
_SCIPY_STATUS = {"kOptimal": 0, "kTimeLimit": 1, "kIterationLimit": 1, "kInfeasible": 2,
                 "kModelError": 2, "kUnbounded": 3}  # any other: 4


def _solve(cost: np.ndarray, rows: np.ndarray, lhs: np.ndarray, rhs: np.ndarray, lb: np.ndarray,
           ub: np.ndarray, integrality: np.ndarray | None, options: dict[str, Any]
           ) -> tuple[int, np.ndarray | None, np.ndarray | None]:
    """What scipy's ``_highs_wrapper`` does: (scipy status, x or None, row duals or None)."""
    h = _highspy._core
    lp = h.HighsLp()
    lp.num_col_, lp.num_row_ = len(cost), len(rhs)
    lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = len(cost), len(rhs)
    lp.a_matrix_.format_ = h.MatrixFormat.kColwise
    lp.col_cost_, lp.col_lower_, lp.col_upper_ = cost, lb, ub
    lp.row_lower_, lp.row_upper_ = lhs, rhs
    lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = _csc(rows)
    is_mip = integrality is not None and integrality.sum() > 0
    if integrality is not None and integrality.size:
        lp.integrality_ = [h.HighsVarType(int(i)) for i in integrality]
    solver = h._Highs()  # the bare solver, as scipy uses it (``Highs`` adds Python callbacks)
    highs_options = h.HighsOptions()
    for key, value in options.items():
        setattr(highs_options, key, value)
    solver.passOptions(highs_options)
    solver.passModel(lp)
    solver.run()
    model_status = solver.getModelStatus()
    name = model_status.name
    status = _SCIPY_STATUS.get(name, 4)
    info = solver.getInfo()
    ok = name == "kOptimal" or (is_mip and name in ("kTimeLimit", "kIterationLimit", "kSolutionLimit")
                                and info.objective_function_value != h.kHighsInf)
    if not ok:
        return status, None, None
    solution = solver.getSolution()
    return status, np.array(solution.col_value), np.array(solution.row_dual)


__all__ = ["BACKENDS", "LpResult", "default_backend", "linprog_min", "milp_min"]
