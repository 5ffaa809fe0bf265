"""The router's per-request dispatch decision, shared by the simulator and the runtime.

A plan says which fraction of each request type goes to which replica (``Plan.dispatch[t][r]``). Routing
each request independently at random by those fractions leaves bursts piling up on one replica while its
neighbour idles, so the default policy is *weighted least outstanding*: among the replicas the plan allows
for the request's type, pick the one with the fewest outstanding requests relative to its planned share,
``argmin_r (outstanding_r + 1) / weight_r``. Under sustained load outstanding counts settle in proportion
to the weights, so the plan's split is kept; under bursts the less loaded replica absorbs the excess. Ties
(an idle fleet of equally weighted replicas) are broken by a per-type smooth weighted round-robin credit
rather than by replica index, so idle replicas take turns.

``spillover`` is least-outstanding that may leave the plan: when the replica it picks has requests queued
(waiting for admission, not yet running) it sends the request instead to the least loaded replica with an
empty queue, if any. A plan dedicates replicas to types by their *mean* rates; when a bursty type floods
its few replicas while the others have room, spilling keeps the burst from queueing (statistical
multiplexing, which a homogeneous fleet has for free).

Everything here is pure: the caller owns the state (``DispatchState``) and passes it in and gets the new
state back, and the random generator, when a policy needs one, is injected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from oserve.common.errors import ConfigError

DISPATCH_POLICIES = ("least-outstanding", "spillover", "weighted-random", "round-robin")
MIN_WEIGHT = 1e-9


@dataclass(frozen=True)
class DispatchTable:
    """Which replicas serve each type and with which weight: ``weights[type][replica]``."""

    weights: tuple[tuple[float, ...], ...]

    def __post_init__(self) -> None:
        widths = {len(row) for row in self.weights}
        if len(widths) > 1:
            raise ConfigError("dispatch table rows must all have one weight per replica")

    @property
    def num_types(self) -> int:
        return len(self.weights)

    @property
    def num_replicas(self) -> int:
        return len(self.weights[0]) if self.weights else 0

    def allowed(self, type_id: int) -> tuple[int, ...]:
        """Replicas the plan sends this type to; every replica when the plan gives the type none."""
        row = self.weights[type_id]
        chosen = tuple(r for r, w in enumerate(row) if w > MIN_WEIGHT)
        return chosen or tuple(range(len(row)))

    @staticmethod
    def from_fractions(dispatch: Sequence[Sequence[float]]) -> DispatchTable:
        return DispatchTable(tuple(tuple(float(x) for x in row) for row in dispatch))


@dataclass(frozen=True)
class DispatchState:
    """Per-type round-robin credits (``credits[type][replica]``), the only memory the policy keeps."""

    credits: tuple[tuple[float, ...], ...]

    @staticmethod
    def initial(table: DispatchTable) -> DispatchState:
        return DispatchState(tuple((0.0,) * table.num_replicas for _ in range(table.num_types)))


def _weights_of(table: DispatchTable, type_id: int, allowed: tuple[int, ...]) -> list[float]:
    row = table.weights[type_id]
    ws = [row[r] for r in allowed]
    total = sum(ws)
    return [w / total for w in ws] if total > MIN_WEIGHT else [1.0 / len(allowed)] * len(allowed)


def _smooth_wrr(credits: tuple[float, ...], allowed: tuple[int, ...],
                weights: list[float]) -> tuple[list[float], list[int]]:
    """Credits after one round of smooth weighted round-robin, and the allowed replicas by credit."""
    new = list(credits)
    for r, w in zip(allowed, weights):
        new[r] += w
    order = sorted(allowed, key=lambda r: (-new[r], r))
    return new, order


def choose_replica(table: DispatchTable, state: DispatchState, type_id: int,
                   outstanding: Sequence[int], policy: str = "least-outstanding",
                   rng: np.random.Generator | None = None,
                   queued: Sequence[int] | None = None) -> tuple[int, DispatchState]:
    """The replica for one request of ``type_id``, and the dispatch state after it.

    ``outstanding[r]`` is the number of requests replica r holds (queued or running); ``queued[r]`` the
    number waiting for admission (needed by ``spillover`` only).
    """
    if not 0 <= type_id < table.num_types:
        raise ConfigError(f"request type {type_id} is not in the plan ({table.num_types} types)")
    allowed = table.allowed(type_id)
    weights = _weights_of(table, type_id, allowed)
    if policy == "weighted-random":
        if rng is None:
            raise ConfigError("the weighted-random dispatch policy needs a random generator")
        return allowed[int(rng.choice(len(allowed), p=weights))], state
    credits, order = _smooth_wrr(state.credits[type_id], allowed, weights)
    if policy == "round-robin":
        choice = order[0]
    elif policy in ("least-outstanding", "spillover"):
        rank = {r: i for i, r in enumerate(order)}
        weight_of = dict(zip(allowed, weights))
        choice = min(allowed, key=lambda r: ((outstanding[r] + 1) / weight_of[r], rank[r]))
        if policy == "spillover":
            if queued is None:
                raise ConfigError("the spillover dispatch policy needs the replicas' queue lengths")
            if queued[choice] > 0:
                free = [r for r in range(len(queued)) if queued[r] == 0]
                if free:
                    choice = min(free, key=lambda r: (outstanding[r], r))
    else:
        raise ConfigError(f"unknown dispatch policy '{policy}', expected one of {DISPATCH_POLICIES}")
    credits[choice] -= 1.0
    rows = list(state.credits)
    rows[type_id] = tuple(credits)
    return choice, DispatchState(tuple(rows))


__all__ = ["DISPATCH_POLICIES", "DispatchState", "DispatchTable", "choose_replica"]
