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

``slo-spill`` is least-outstanding within the plan followed by the SLO spill rule
(``planner.spill_rule.spill_choice``): the request leaves its primary replica only when its predicted
TTFT there misses the type's TTFT SLO and another replica's predicted TTFT and TPOT meet the SLO. It
needs the rule (per-type SLOs, per-replica step times) and the replicas' prefill backlog and decode
counts (``SpillInput``).

Everything in ``choose_replica`` is pure: the caller owns the state (``DispatchState``) and passes it in
and gets the new state back, and the random generator, when a policy needs one, is injected. The
simulator routes millions of requests over up to thousands of replicas, so it uses ``Dispatcher``, the
same decisions with the state kept in place: per-type allowed replicas and weights computed once, credits
and the callers' load counts in numpy arrays, the tie-break an argmin instead of a sort (tested equal to
``choose_replica``, choice by choice).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from oserve.common.errors import ConfigError
from oserve.planner.spill_rule import SpillRule, spill_choice

DISPATCH_POLICIES = ("least-outstanding", "spillover", "slo-spill", "weighted-random", "round-robin")
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
        return self._allowed_and_weights[type_id][0]

    def shares(self, type_id: int) -> tuple[float, ...]:
        """The type's weights over ``allowed(type_id)``, normalised to sum 1 (equal when all are ~0)."""
        return self._allowed_and_weights[type_id][1]

    @cached_property
    def _allowed_and_weights(self) -> tuple[tuple[tuple[int, ...], tuple[float, ...]], ...]:
        out = []
        for row in self.weights:
            allowed = tuple(r for r, w in enumerate(row) if w > MIN_WEIGHT) or tuple(range(len(row)))
            ws = [row[r] for r in allowed]
            total = sum(ws)
            shares = [w / total for w in ws] if total > MIN_WEIGHT else [1.0 / len(allowed)] * len(allowed)
            out.append((allowed, tuple(shares)))
        return tuple(out)

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


@dataclass(frozen=True)
class SpillInput:
    """What ``slo-spill`` reads besides the load counts: the rule, the request's prompt length, and per
    replica the prompt tokens without a first token yet, the decoding requests and whether it is open."""

    rule: SpillRule
    prompt_tokens: int
    prefill_tokens: Sequence[int]
    num_decoding: Sequence[int]
    is_open: Sequence[bool] | None = None

    def choice(self, type_id: int, primary: int) -> int:
        return spill_choice(self.rule, type_id, self.prompt_tokens, primary, self.prefill_tokens,
                            self.num_decoding, self.is_open)


def choose_replica(table: DispatchTable, state: DispatchState, type_id: int,
                   outstanding: Sequence[int], policy: str = "least-outstanding",
                   rng: np.random.Generator | None = None,
                   queued: Sequence[int] | None = None,
                   spill: SpillInput | None = None) -> tuple[int, DispatchState]:
    """The replica for one request of ``type_id``, and the dispatch state after it.

    ``outstanding[r]`` is the number of requests replica r holds (queued or running); ``queued[r]`` the
    number waiting for admission (needed by ``spillover`` only); ``spill`` what ``slo-spill`` needs.
    """
    if not 0 <= type_id < table.num_types:
        raise ConfigError(f"request type {type_id} is not in the plan ({table.num_types} types)")
    allowed, weights = table.allowed(type_id), table.shares(type_id)
    if policy == "weighted-random":
        if rng is None:
            raise ConfigError("the weighted-random dispatch policy needs a random generator")
        return allowed[int(rng.choice(len(allowed), p=weights))], state
    if policy not in DISPATCH_POLICIES:
        raise ConfigError(f"unknown dispatch policy '{policy}', expected one of {DISPATCH_POLICIES}")
    if policy == "spillover" and queued is None:
        raise ConfigError("the spillover dispatch policy needs the replicas' queue lengths")
    if policy == "slo-spill" and spill is None:
        raise ConfigError("the slo-spill dispatch policy needs the spill rule and the replicas' state")
    credits = list(state.credits[type_id])  # one round of smooth weighted round-robin
    for r, w in zip(allowed, weights):
        credits[r] += w
    if policy == "round-robin":  # the highest credit, the lower index on ties
        choice = min(allowed, key=lambda r: (-credits[r], r))
    else:  # least (outstanding + 1) / weight, ties to the highest credit, then the lower index
        choice = min(zip(allowed, weights),
                     key=lambda rw: ((outstanding[rw[0]] + 1) / rw[1], -credits[rw[0]], rw[0]))[0]
        if queued is not None and policy == "spillover" and queued[choice] > 0:
            free = [r for r in range(len(queued)) if queued[r] == 0]
            if free:
                choice = min(free, key=lambda r: (outstanding[r], r))
        if spill is not None and policy == "slo-spill":
            choice = spill.choice(type_id, choice)
    credits[choice] -= 1.0
    rows = list(state.credits)
    rows[type_id] = tuple(credits)
    return choice, DispatchState(tuple(rows))


SMALL_SET = 16  # up to this many allowed replicas a Python loop beats numpy's per-call overhead


class LoadIndex:
    """A caller's load counts grouped by value, with the least one: the columns a least-outstanding
    choice over every replica with equal shares picks among, kept as the counts change (``move``), so
    the choice costs the ties, not a scan of the fleet."""

    __slots__ = ("_load", "_by_load", "least")

    def __init__(self, loads: Sequence[int]) -> None:
        self._load = [int(x) for x in loads]
        self._by_load: dict[int, set[int]] = {}
        for c, x in enumerate(self._load):
            self._by_load.setdefault(x, set()).add(c)
        self.least = min(self._by_load) if self._by_load else 0

    def move(self, column: int, load: int) -> None:
        """Column ``column``'s count is now ``load``."""
        old = self._load[column]
        if old == load:
            return
        self._load[column] = load
        by_load = self._by_load
        bucket = by_load[old]
        bucket.discard(column)
        if not bucket:
            del by_load[old]
        new = by_load.get(load)
        if new is None:
            by_load[load] = {column}
        else:
            new.add(column)
        if load < self.least:
            self.least = load
        elif old == self.least and not bucket:
            self.least = min(by_load)

    def at_least(self) -> set[int]:
        """The columns whose count is the least one."""
        return self._by_load[self.least]


def _highest_credit_at_least(credits: npt.NDArray[np.float64],
                             outstanding: Sequence[int] | npt.NDArray[np.int64], least: LoadIndex) -> int:
    """Among the columns at the least load (their keys are the least, equal shares): the highest
    credit, then the lower index, as the ``where``/``argmax`` over all columns would pick."""
    ties = least.at_least()
    if len(ties) > SMALL_SET:
        return int(np.where(np.asarray(outstanding) == least.least, credits, -np.inf).argmax())
    best, best_credit = -1, 0.0
    for c in ties:
        v = credits.item(c)
        if best < 0 or v > best_credit or (v == best_credit and c < best):
            best, best_credit = c, v
    return best


def _is_power_of_two(share: float) -> bool:
    """``share`` = 2^-k, k <= 20: sums of it and of integers below 2^33 in magnitude are then exact."""
    mantissa, exponent = np.frexp(share)
    return bool(mantissa == 0.5) and -19 <= int(exponent) <= 1


class _ChoiceCounts:
    """One type's credits in count form (see ``Dispatcher``): credit j = routed * share - chosen[j],
    exactly, so the highest credit among the least loaded columns is the fewest choices, then the lower
    index. Each column's key is ``chosen * n + column`` (distinct keys in that order), so the pick is one
    ``min``; over more than ``SMALL_SET * 4`` ties a numpy mirror of the keys is scanned instead."""

    __slots__ = ("n", "keys", "mirror", "routed")

    def __init__(self, n: int) -> None:
        self.n = n
        self.keys = list(range(n))
        self.mirror = np.arange(n, dtype=np.int64) if n > 4 * SMALL_SET else None
        self.routed = 0

    def pick(self, outstanding: Sequence[int] | npt.NDArray[np.int64], least: LoadIndex) -> int:
        """Choose among the least loaded columns and count the choice."""
        ties = least.at_least()
        keys = self.keys
        if self.mirror is None or len(ties) <= 4 * SMALL_SET:
            j = min(ties, key=keys.__getitem__)
        else:
            j = int(np.where(np.asarray(outstanding) == least.least, self.mirror, _NO_KEY).argmin())
        if self.mirror is not None:
            self.mirror[j] += self.n
        keys[j] += self.n
        self.routed += 1
        return j

    def credits(self, share: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        chosen = np.asarray(self.keys, dtype=np.int64) // self.n
        return self.routed * share - chosen.astype(np.float64)


_NO_KEY = np.iinfo(np.int64).max


class Dispatcher:
    """``choose_replica`` for one caller that owns the state: the same choices, the state kept in place.

    Per type, the allowed replicas, their shares and the round-robin credits are built once; ``choose``
    reads the caller's load counts (indexed like the table's replicas, kept up to date by the caller as
    its replicas change) and replaces the sort by an argmin: a Python loop over small allowed sets,
    numpy over large ones (lists or numpy arrays both work as counts; arrays are what make a large
    fleet's spillover scan fast). The float operations are those of ``choose_replica`` (credits +=
    share, then -1 for the choice), so the credits, and therefore every tie-break, are bit-for-bit the
    same.
    """

    def __init__(self, table: DispatchTable, policy: str = "least-outstanding",
                 rng: np.random.Generator | None = None, spill_rule: SpillRule | None = None) -> None:
        if policy not in DISPATCH_POLICIES:
            raise ConfigError(f"unknown dispatch policy '{policy}', expected one of {DISPATCH_POLICIES}")
        if policy == "weighted-random" and rng is None:
            raise ConfigError("the weighted-random dispatch policy needs a random generator")
        if policy == "slo-spill" and spill_rule is None:
            raise ConfigError("the slo-spill dispatch policy needs a spill rule (per-type SLOs, "
                              "per-replica step times)")
        self.table, self.policy, self.spill_rule = table, policy, spill_rule
        self.rng = rng if rng is not None else np.random.default_rng(0)  # used by weighted-random only
        self._allowed = [table.allowed(t) for t in range(table.num_types)]
        self._shares = [table.shares(t) for t in range(table.num_types)]
        self._small = [len(a) <= SMALL_SET for a in self._allowed]
        self._index = [np.asarray(a, dtype=np.intp) for a in self._allowed]
        self._full = [a == tuple(range(table.num_replicas)) for a in self._allowed]
        self._weights = [np.asarray(w, dtype=np.float64) for w in self._shares]
        self._uniform = [len(set(w)) == 1 for w in self._shares]
        self._credits: list[Any] = [[0.0] * len(a) if small else np.zeros(len(a))
                                    for a, small in zip(self._allowed, self._small)]
        self._position = [{r: j for j, r in enumerate(a)} for a in self._allowed]
        # least-outstanding over every replica with equal shares, large: the choice is among the least
        # loaded replicas of a LoadIndex, when the caller keeps one (column j is replica j)
        self._by_ties = [policy == "least-outstanding" and not small and full and uniform
                         for small, full, uniform in zip(self._small, self._full, self._uniform)]
        # Such a type's credits in count form, when its share is a power of two (an equal share over
        # 2^k replicas): every float operation on them (+ share, - 1) is then exact, so credit j is
        # exactly routed * share - chosen[j], and the highest credit is the fewest choices. Kept as
        # Python ints (no numpy call per request) until another path needs the floats (``_floats``).
        self._chosen: list[_ChoiceCounts | None] = [
            _ChoiceCounts(len(a)) if ties and _is_power_of_two(w[0]) else None
            for a, ties, w in zip(self._allowed, self._by_ties, self._shares)]
        self._off_plan: list[dict[int, float]] = [{} for _ in self._allowed]

    def choose(self, type_id: int, outstanding: Sequence[int] | npt.NDArray[np.int64],
               queued: Sequence[int] | npt.NDArray[np.int64] | None = None, prompt_tokens: int = 0,
               prefill_tokens: Sequence[int] | None = None,
               num_decoding: Sequence[int] | None = None, least: LoadIndex | None = None) -> int:
        """The replica for one request; ``outstanding``/``queued`` as in ``choose_replica``, the rest
        (the request's prompt, each replica's prefill backlog and decodes) for ``slo-spill``; ``least``,
        when given, is ``outstanding`` grouped by value (a large fleet's shortcut, same choices)."""
        if not 0 <= type_id < len(self._allowed):
            raise ConfigError(f"request type {type_id} is not in the plan ({len(self._allowed)} types)")
        chosen = self._chosen[type_id]
        if chosen is not None and least is not None:  # the large homogeneous fleet's usual case
            return chosen.pick(outstanding, least)
        credits = self._credits[type_id] if chosen is None else self._floats(type_id)
        if least is not None and self._by_ties[type_id]:
            credits += self._weights[type_id]
            j = _highest_credit_at_least(credits, outstanding, least)
            credits[j] -= 1.0
            return j
        allowed = self._allowed[type_id]
        policy = self.policy
        if policy == "least-outstanding" and not self._small[type_id]:
            j = self._pick_large(credits, type_id, outstanding, least)
            credits[j] -= 1.0
            return allowed[j]
        if policy == "spillover" and queued is None:
            raise ConfigError("the spillover dispatch policy needs the replicas' queue lengths")
        if policy == "weighted-random":
            return allowed[int(self.rng.choice(len(allowed), p=self._shares[type_id]))]
        if self._small[type_id]:
            j = self._pick_small(credits, self._shares[type_id], allowed, outstanding)
        else:
            j = self._pick_large(credits, type_id, outstanding, least)
        choice = allowed[j]
        if queued is not None and policy == "spillover" and queued[choice] > 0:
            spill = _least_outstanding_empty_queue(outstanding, queued)
            if spill >= 0:
                choice = spill
                j = self._position[type_id].get(choice, -1)
        elif policy == "slo-spill" and self.spill_rule is not None:
            if prefill_tokens is None or num_decoding is None:
                raise ConfigError("the slo-spill dispatch policy needs the replicas' prefill backlog "
                                  "and decode counts")
            spilled = spill_choice(self.spill_rule, type_id, prompt_tokens, choice, prefill_tokens,
                                   num_decoding)
            if spilled != choice:
                choice = spilled
                j = self._position[type_id].get(choice, -1)
        if j >= 0:
            credits[j] -= 1.0
        else:  # spilled off the plan: the credit is kept (as choose_replica does) but never compared
            off = self._off_plan[type_id]
            off[choice] = off.get(choice, 0.0) - 1.0
        return choice

    def _pick_small(self, credits: list[float], weights: tuple[float, ...], allowed: tuple[int, ...],
                    outstanding: Sequence[int] | npt.NDArray[np.int64]) -> int:
        for j, w in enumerate(weights):
            credits[j] += w
        best = 0
        if self.policy == "round-robin":  # the highest credit, the lower index on ties
            for j in range(1, len(credits)):
                if credits[j] > credits[best]:
                    best = j
            return best
        best_key = (outstanding[allowed[0]] + 1) / weights[0]
        for j in range(1, len(credits)):  # least key, then highest credit, then lower index
            key = (outstanding[allowed[j]] + 1) / weights[j]
            if key < best_key or (key == best_key and credits[j] > credits[best]):
                best, best_key = j, key
        return best

    def _pick_large(self, credits: npt.NDArray[np.float64], type_id: int,
                    outstanding: Sequence[int] | npt.NDArray[np.int64],
                    least: LoadIndex | None = None) -> int:
        weights = self._weights[type_id]
        credits += weights
        if self.policy == "round-robin":
            return int(credits.argmax())  # the first maximum: the lower index on ties
        if least is not None and self._full[type_id] and self._uniform[type_id]:
            return _highest_credit_at_least(credits, outstanding, least)
        counts = np.asarray(outstanding)
        load = counts if self._full[type_id] else counts[self._index[type_id]]
        # with equal shares (load + 1) / share orders and ties exactly as the integer load does (the
        # quotients of distinct small integers by one share <= 1 are distinct), so the load is the key
        key = load if self._uniform[type_id] else (load + 1) / weights
        # the highest credit among the least keys, then the lower index (argmax: the first maximum)
        return int(np.where(key == key.min(), credits, -np.inf).argmax())

    def _floats(self, type_id: int) -> Any:
        """A type's credits as floats, leaving the count form for good if it was in it (exact: see
        ``_chosen``)."""
        chosen = self._chosen[type_id]
        if chosen is not None:
            self._credits[type_id] = chosen.credits(self._weights[type_id])
            self._chosen[type_id] = None
        return self._credits[type_id]

    def state(self) -> DispatchState:
        """The equivalent ``DispatchState`` (for checks against ``choose_replica``)."""
        rows = []
        for t, allowed in enumerate(self._allowed):
            row = [0.0] * self.table.num_replicas
            chosen = self._chosen[t]
            credits = self._credits[t] if chosen is None else chosen.credits(self._weights[t])
            for r, c in zip(allowed, credits.tolist() if isinstance(credits, np.ndarray) else credits):
                row[r] = c
            for r, c in self._off_plan[t].items():
                row[r] = c
            rows.append(tuple(row))
        return DispatchState(tuple(rows))


def _least_outstanding_empty_queue(outstanding: Sequence[int] | npt.NDArray[np.int64],
                                   queued: Sequence[int] | npt.NDArray[np.int64]) -> int:
    """The replica with an empty queue and the fewest outstanding requests (lower index on ties), -1 if
    every queue is busy."""
    if isinstance(queued, np.ndarray):
        free = queued == 0
        if not free.any():
            return -1
        return int(np.where(free, outstanding, np.iinfo(np.int64).max).argmin())
    best = -1
    for r, q in enumerate(queued):
        if q == 0 and (best < 0 or outstanding[r] < outstanding[best]):
            best = r
    return best


__all__ = ["DISPATCH_POLICIES", "DispatchState", "DispatchTable", "Dispatcher", "SpillInput",
           "choose_replica"]
