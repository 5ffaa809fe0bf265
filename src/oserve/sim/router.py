"""The cluster router: types each arriving request online and dispatches it by the plan."""

from __future__ import annotations

import numpy as np

from oserve.planner.dispatch_policy import DispatchState, DispatchTable, choose_replica


class Router:
    """Holds the dispatch state of one simulation; the decision itself is the shared pure policy."""

    def __init__(self, table: DispatchTable, policy: str, rng: np.random.Generator) -> None:
        self.table = table
        self.policy = policy
        self.rng = rng
        self.state = DispatchState.initial(table)

    def route(self, type_id: int, outstanding: list[int], queued: list[int] | None = None) -> int:
        replica, self.state = choose_replica(self.table, self.state, type_id, outstanding, self.policy,
                                             self.rng, queued)
        return replica
