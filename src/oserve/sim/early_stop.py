"""Stopping a goodput probe's simulation once the probe must fail (``sim.goodput``).

A goodput probe asks one thing: does every request type reach the attainment target? Type ``t`` with
``n`` requests misses it once more than ``allowed`` of its requests missed their SLO, ``allowed`` the
largest ``m`` with ``(n - m) / n >= target`` (the very float comparison ``Attainment.meets`` makes). A
request is known to miss, whatever happens later, when it is dropped at arrival, when its first token
comes later than its TTFT bound after its arrival, when it is still without a first token at an event
more than its TTFT bound after its arrival (its first token can only come later), or when it completes
with a mean TPOT over its bound. Each test is the one ``metrics.slo_attainment`` applies to the
finished records, on the same float64 values, so a miss counted here is a miss there and the stop is
exact: a probe stopped by the budget fails, and one that is not stopped runs to the end unchanged (the
budget only reads the simulation). Overloaded probes, the slowest to simulate, are the ones it cuts.
"""

from __future__ import annotations

import math

import numpy as np

from oserve.common.errors import ConfigError


class ProbeFailed(Exception):
    """Raised in the event loop when a type's known misses exceed its allowance."""


def allowed_misses(num_requests: int, target: float) -> int:
    """The most misses of ``num_requests`` that still leave the share of hits at or above ``target``."""
    m = int(math.floor(num_requests * (1.0 - target)))
    # the float division decides (as the attainment's mean does): settle rounding at the boundary
    while m > 0 and (num_requests - m) / num_requests < target:
        m -= 1
    while m < num_requests and (num_requests - m - 1) / num_requests >= target:
        m += 1
    return m


class MissBudget:
    """Per-request SLO bounds and the attainment target of one probe; ``bind`` starts a run's count."""

    def __init__(self, type_id: np.ndarray, ttft_bound_s: np.ndarray, tpot_bound_s: np.ndarray,
                 target: float, num_types: int) -> None:
        if not 0 < target <= 1:
            raise ConfigError(f"an early-stop budget needs a target in (0, 1], got {target}")
        self.type_id = np.asarray(type_id, dtype=np.int64)
        if not len(self.type_id) == len(ttft_bound_s) == len(tpot_bound_s):
            raise ConfigError("an early-stop budget needs one TTFT and one TPOT bound per request")
        self._ttft_np = np.asarray(ttft_bound_s, dtype=np.float64)
        self._tpot = np.asarray(tpot_bound_s, dtype=np.float64).tolist()
        self._ttft = self._ttft_np.tolist()
        self._types = self.type_id.tolist()
        counts = np.bincount(self.type_id, minlength=num_types)
        self._allowed = [allowed_misses(int(c), target) for c in counts]
        self.stopped_s: float | None = None
        self.num_missed = 0

    def bind(self, arrival_s: np.ndarray, output_tokens: np.ndarray, first_tok: np.ndarray) -> None:
        """Start counting for a run of these requests (``first_tok``: the records' first-token times)."""
        if len(arrival_s) != len(self._ttft):
            raise ConfigError(f"early-stop budget is for {len(self._ttft)} requests, the run has "
                              f"{len(arrival_s)}")
        arrival = np.asarray(arrival_s, dtype=np.float64)
        self._arr = arrival.tolist()
        self._steps = (np.asarray(output_tokens, dtype=np.int64) - 1).tolist()
        self._first = first_tok
        # requests in order of their TTFT deadline: the sweep for those still without a first token
        self._order = np.argsort(arrival + self._ttft_np, kind="stable").tolist()
        self._next = 0
        self.next_deadline_s = -math.inf
        self._left = list(self._allowed)
        self._missed = bytearray(len(self._arr))
        self.stopped_s = None
        self.num_missed = 0

    def _miss(self, i: int) -> None:
        if self._missed[i]:
            return
        self._missed[i] = 1
        self.num_missed += 1
        t = self._types[i]
        self._left[t] -= 1
        if self._left[t] < 0:
            raise ProbeFailed

    def dropped(self, i: int) -> None:
        self._miss(i)

    def step_end(self, t: float, first: list, finished: list) -> None:
        """After a step end at ``t`` recorded its first tokens and completions."""
        arr, ttft = self._arr, self._ttft
        for seq in first:
            i = seq.req_id
            if t - arr[i] > ttft[i]:
                self._miss(i)
        if finished:
            first_tok, steps, tpot = self._first, self._steps, self._tpot
            for seq in finished:
                i = seq.req_id
                f = first_tok[i]
                # as slo_attainment: no first token is an infinite TTFT; no steps after it, no TPOT
                if f != f or f - arr[i] > ttft[i]:
                    self._miss(i)
                elif steps[i] > 0 and (t - f) / steps[i] > tpot[i]:
                    self._miss(i)
        if t > self.next_deadline_s:
            self._overdue(t)

    def _overdue(self, t: float) -> None:
        """Requests still without a first token more than their TTFT bound after arrival."""
        arr, ttft, order, first_tok = self._arr, self._ttft, self._order, self._first
        k, n = self._next, len(order)
        while k < n:
            i = order[k]
            if not t - arr[i] > ttft[i]:
                break  # sorted by arrival + bound, up to rounding: a late catch only stops later
            k += 1
            f = first_tok[i]
            if f != f:  # its first token can only come later
                self._miss(i)
        self._next = k
        # the next sweep when the clock passes the next deadline (a hint: the test above decides)
        self.next_deadline_s = arr[order[k]] + ttft[order[k]] if k < n else math.inf


__all__ = ["MissBudget", "ProbeFailed", "allowed_misses"]
