"""The runtime's dispatch decision: the planner's shared policy, restricted to replicas that can take work.

The per-request choice itself is ``oserve.planner.dispatch_policy.choose_replica`` (weighted least
outstanding with smooth round-robin ties), the same code the simulator calls. The runtime adds what only
a live fleet has: replicas that are starting, draining or dead take nothing, a replica whose queue is
full is skipped, and a type whose planned replicas are all unavailable spills to the open ones. With
``slo-spill`` the planner's SLO spill rule (``planner.spill_rule``) reads each view's prefill backlog
(prompt tokens of its requests without a first token) and decode count, and never spills onto a closed
replica. Pure: views and state in, decision and state out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from oserve.planner.dispatch_policy import MIN_WEIGHT, DispatchState, DispatchTable, SpillInput
from oserve.planner.dispatch_policy import choose_replica as planner_choose
from oserve.planner.spill_rule import SpillRule


@dataclass(frozen=True)
class ReplicaView:
    """What the policy sees of one replica."""

    index: int
    is_accepting: bool
    num_inflight: int
    max_inflight: int
    num_queued: int = 0  # waiting inside the engine, not yet running (used by ``spillover``)
    prefill_tokens: int = 0  # prompt tokens of its requests without a first token (``slo-spill``)
    num_decoding: int = 0  # its requests past their first token (``slo-spill``)
    num_downstream: int = 0  # a prefill replica's requests decoding on its group (outstanding, not open)

    @property
    def is_open(self) -> bool:
        return self.is_accepting and self.num_inflight < self.max_inflight


CLOSED_QUEUE = 1 << 30


class Outcome(Enum):
    CHOSEN = "chosen"
    OVERLOADED = "overloaded"  # replicas accept work but every queue is full
    NO_REPLICA = "no_replica"  # no replica accepts work


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    index: int = -1


def choose(table: DispatchTable, state: DispatchState, type_index: int, views: Sequence[ReplicaView],
           policy: str = "least-outstanding", rng: np.random.Generator | None = None,
           spill_rule: SpillRule | None = None, prompt_tokens: int = 0) -> tuple[Decision, DispatchState]:
    """The replica for one request of ``type_index`` (``prompt_tokens`` long) among ``views`` (aligned
    with the table).

    ``policy`` is one of the planner's ``DISPATCH_POLICIES``; a closed replica is shown to ``spillover``
    as infinitely queued, so it never spills onto one; ``slo-spill`` needs ``spill_rule``."""
    if not any(v.is_accepting for v in views):
        return Decision(Outcome.NO_REPLICA), state
    is_open = [v.is_open for v in views]
    if not any(is_open):
        return Decision(Outcome.OVERLOADED), state
    outstanding = [v.num_inflight + v.num_downstream for v in views]
    queued = [v.num_queued if o else CLOSED_QUEUE for v, o in zip(views, is_open)]
    spill = None
    if spill_rule is not None:
        spill = SpillInput(spill_rule, prompt_tokens, [v.prefill_tokens for v in views],
                           [v.num_decoding for v in views], is_open)
    if all(is_open) and 0 <= type_index < table.num_types and len(views) == table.num_replicas:
        index, state = planner_choose(table, state, type_index, outstanding, policy, rng, queued, spill)
        return Decision(Outcome.CHOSEN, index), state
    row = table.weights[type_index] if 0 <= type_index < table.num_types else ()
    masked = [row[i] if i < len(row) and is_open[i] else 0.0 for i in range(len(views))]
    if sum(masked) <= MIN_WEIGHT:  # the planned replicas are unavailable: spill to any open one
        masked = [1.0 if o else 0.0 for o in is_open]
    rows = list(table.weights) or [()]
    type_index = min(max(type_index, 0), len(rows) - 1)
    rows[type_index] = tuple(masked)
    index, state = planner_choose(DispatchTable(tuple(rows)), state, type_index, outstanding, policy, rng,
                                  queued, spill)
    return Decision(Outcome.CHOSEN, index), state


__all__ = ["Decision", "Outcome", "ReplicaView", "choose"]
