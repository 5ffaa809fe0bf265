"""The dispatch policy: which replica serves a request of a given type. Pure: views in, decision out.

The plan says what fraction of each type goes to each replica. The policy samples two candidates by
those fractions and takes the one with fewer requests in flight (power of two choices), so that it
follows the plan on average and steers around a replica that has fallen behind. A type the plan gives no
fraction to any open replica (a replica died, or the type had no traffic when planned) spills to the
least-loaded open replica. A replica whose queue is full is never chosen.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True)
class ReplicaView:
    """What the policy sees of one replica."""

    index: int
    is_accepting: bool
    num_inflight: int
    max_inflight: int

    @property
    def is_open(self) -> bool:
        return self.is_accepting and self.num_inflight < self.max_inflight


class Outcome(Enum):
    CHOSEN = "chosen"
    OVERLOADED = "overloaded"  # replicas exist but every queue is full
    NO_REPLICA = "no_replica"  # no replica accepts requests


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    index: int = -1


def choose_replica(fractions: Sequence[float], views: Sequence[ReplicaView], rng: random.Random,
                   excluded: frozenset[int] = frozenset()) -> Decision:
    """Pick a replica index for a request whose type has the given per-replica fractions."""
    accepting = [v for v in views if v.is_accepting and v.index not in excluded]
    if not accepting:
        return Decision(Outcome.NO_REPLICA)
    open_views = [v for v in accepting if v.is_open]
    if not open_views:
        return Decision(Outcome.OVERLOADED)
    weights = [fractions[v.index] if v.index < len(fractions) else 0.0 for v in open_views]
    if sum(weights) <= 0.0:
        best = min(open_views, key=lambda v: (v.num_inflight / v.max_inflight, v.index))
        return Decision(Outcome.CHOSEN, best.index)
    first, second = rng.choices(open_views, weights=weights, k=2)
    best = first if first.num_inflight <= second.num_inflight else second
    return Decision(Outcome.CHOSEN, best.index)


__all__ = ["Decision", "Outcome", "ReplicaView", "choose_replica"]
