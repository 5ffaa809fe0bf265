"""A lower bound on the duration of any weight transfer, to judge the greedy plan by.

The LP may split every needed chunk over all its holders and storage, in any fractions, and asks for
the least time T in which every link carries its load at capacity: minimise T subject to each
destination receiving each chunk in full and, for every link, load <= capacity x T. Chunks with the
same destination and the same holders are one commodity (the LP cannot tell them apart), which keeps
the LP small. No plan in the same link model can be faster, so T_greedy / T_LP measures the greedy's
loss; the LP's own split, scheduled preemptively, attains T_LP.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from oserve.common.errors import InfeasiblePlanError
from oserve.switching.links import STORAGE, Link, LinkModel
from oserve.switching.transfer import TransferProblem

GB = 1e9


@dataclass(frozen=True)
class TransferBound:
    duration_s: float
    link_bytes: dict  # Link -> bytes in the LP's optimal split
    num_commodities: int
    num_variables: int


def _commodities(problem: TransferProblem) -> dict[tuple[int, tuple[int, ...]], float]:
    out: dict[tuple[int, tuple[int, ...]], float] = {}
    for dst, chunks in problem.needs.items():
        for c in chunks:
            key = (dst, tuple(h for h in problem.holders.get(c, ()) if h != dst))
            out[key] = out.get(key, 0.0) + problem.layout.chunk_bytes(c)
    return out


def transfer_lower_bound(problem: TransferProblem, links: LinkModel) -> TransferBound:
    from scipy.optimize import linprog  # 0.4 s to import: only paid where a switch is planned
    from scipy.sparse import coo_matrix

    comms = _commodities(problem)
    if not comms:
        return TransferBound(0.0, {}, 0, 0)
    link_index: dict[Link, int] = {}
    var_links: list[tuple[Link, Link]] = []
    eq_rows, eq_cols, rhs = [], [], []
    for q, ((dst, holders), size) in enumerate(comms.items()):
        for src in (*holders, STORAGE):
            v = len(var_links)
            var_links.append(links.links(src, dst))
            eq_rows.append(q)
            eq_cols.append(v)
        rhs.append(size / GB)
    for pair in var_links:
        for link in pair:
            link_index.setdefault(link, len(link_index))
    num_vars = len(var_links) + 1  # the last variable is T
    t_col = num_vars - 1
    ub_rows, ub_cols, ub_vals = [], [], []
    for v, pair in enumerate(var_links):
        for link in pair:
            ub_rows.append(link_index[link])
            ub_cols.append(v)
            ub_vals.append(1.0)
    for link, row in link_index.items():
        ub_rows.append(row)
        ub_cols.append(t_col)
        ub_vals.append(-links.capacity_bytes_s(link) / GB)
    a_ub = coo_matrix((ub_vals, (ub_rows, ub_cols)), shape=(len(link_index), num_vars)).tocsr()
    a_eq = coo_matrix((np.ones(len(eq_rows)), (eq_rows, eq_cols)), shape=(len(comms), num_vars)).tocsr()
    cost = np.zeros(num_vars)
    cost[t_col] = 1.0
    res = linprog(cost, A_ub=a_ub, b_ub=np.zeros(len(link_index)), A_eq=a_eq, b_eq=np.array(rhs),
                  bounds=(0, None), method="highs")
    if res.status != 0:
        raise InfeasiblePlanError(f"transfer lower-bound LP failed: {res.message}")
    loads = np.asarray(a_ub[:, :t_col] @ res.x[:t_col]).ravel() * GB
    link_bytes = {link: float(loads[row]) for link, row in link_index.items()}
    return TransferBound(float(res.x[t_col]), link_bytes, len(comms), num_vars)
