"""Test helper: the simulator's router and the runtime's dispatch driven in lockstep over one evolving
replica state, so a test can check that both make the same ``slo-spill`` decision request by request."""

from __future__ import annotations

import numpy as np

from oserve.planner.dispatch_policy import DispatchState, DispatchTable
from oserve.planner.spill_rule import SpillRule
from oserve.runtime.dispatch_policy import ReplicaView, choose
from oserve.sim.router import Router


def spills_in_lockstep(sim_router: Router, rule: SpillRule, table: DispatchTable, *, requests: int,
                       seed: int, prompt_tokens: tuple[int, int], prefill_done_p: float,
                       decode_done_p: float = 0.2) -> int:
    """Route ``requests`` random requests (two types) through both, asserting the same replica each
    time; between requests some prefills finish into decodes and some decodes finish, the state fed to
    both alike. Returns how many requests went to a replica outside their type's table (spilled)."""
    n = len(table.weights[0])
    state = DispatchState.initial(table)
    rng = np.random.default_rng(seed)
    outstanding, backlog, decoding = [0] * n, [0] * n, [0] * n
    spilled = 0
    for _ in range(requests):
        t, prompt = int(rng.integers(2)), int(rng.integers(*prompt_tokens))
        sim_choice = sim_router.route(t, prompt + 100, prompt)
        views = [ReplicaView(i, True, outstanding[i], 10**6, 0, backlog[i], decoding[i]) for i in range(n)]
        decision, state = choose(table, state, t, views, "slo-spill", None, rule, prompt)
        assert decision.index == sim_choice
        spilled += table.weights[t][sim_choice] == 0.0
        outstanding[sim_choice] += 1
        backlog[sim_choice] += prompt
        for r in range(n):
            if rng.random() < prefill_done_p and backlog[r]:
                backlog[r], decoding[r] = 0, decoding[r] + 1
            if rng.random() < decode_done_p and decoding[r]:
                decoding[r] -= 1
            outstanding[r] = decoding[r] + (1 if backlog[r] else 0)
            sim_router.update(r, outstanding[r], 0, backlog[r], decoding[r])
    return spilled
