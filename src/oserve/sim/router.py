"""The cluster router: dispatches each arriving request by the plan over the replicas that accept work.

The decision is the shared dispatch policy (``planner.dispatch_policy``, through its in-place
``Dispatcher``). What the policy reads, each replica's outstanding and queued requests, is kept here as
numpy arrays that the simulator updates after every operation on a replica, so routing a request costs
the same whatever the fleet's size: nothing is rebuilt or scanned in Python per request. Over a large
fleet the outstanding counts are also grouped by value (``LoadIndex``), so that a least-outstanding
choice over equal shares looks only at the replicas tied at the least load. With the
``slo-spill`` policy the router also keeps each replica's prefill backlog and decode count, which the
spill rule (``planner.spill_rule``) reads, and the rule over the routed replicas (per-type SLOs given
at construction, each replica's speed with the table).
"""

from __future__ import annotations

import numpy as np

from oserve.common.errors import ConfigError
from oserve.planner.dispatch_policy import SMALL_SET, Dispatcher, DispatchTable, LoadIndex
from oserve.planner.spill_rule import ReplicaSpeed, SpillRule
from oserve.workload.slo import Slo

_UNREACHABLE = np.iinfo(np.int64).max


class Router:
    """Routes over ``replica_ids`` (the table's columns, in order); ids are the simulator's replicas."""

    def __init__(self, policy: str, rng: np.random.Generator,
                 type_slos: tuple[Slo, ...] | None = None, load_index: bool = True) -> None:
        if policy == "slo-spill" and type_slos is None:
            raise ConfigError("the slo-spill dispatch policy needs the request types' SLOs")
        self.policy = policy
        self.rng = rng
        self.type_slos = type_slos
        self.needs_backlog = policy == "slo-spill"
        self.load_index = load_index  # False: every choice scans the counts (equivalence tests)
        self.prefill_tokens: list[int] = []
        self.num_decoding: list[int] = []
        self.replica_ids: list[int] = []
        self._column: list[int] = []
        self._dispatcher: Dispatcher | None = None
        self.is_open = False
        self.outstanding: list[int] | np.ndarray = []
        self.queued: list[int] | np.ndarray = []
        self._outstanding_now: list[int] = []
        self._queued_now: list[int] = []
        self._least: LoadIndex | None = None

    def set_table(self, table: DispatchTable, replica_ids: list[int], kv_tokens: list[int],
                  outstanding: list[int], queued: list[int],
                  speeds: list[ReplicaSpeed | None] | None = None) -> None:
        """Route by ``table`` over these replicas (with their KV capacity, current load and, for
        ``slo-spill``, speeds) from now on; the round-robin credits start afresh (prefill backlogs
        start at 0 until ``update`` reports them)."""
        self.replica_ids = list(replica_ids)
        # replica id -> column (-1: not routed to), a list: indexed once per event
        self._column = [-1] * (max(replica_ids, default=-1) + 1)
        for c, rid in enumerate(replica_ids):
            self._column[rid] = c
        rule = None
        if self.type_slos is not None:
            rule = SpillRule(self.type_slos, tuple(speeds or [None] * len(replica_ids)))
        self._dispatcher = Dispatcher(table, self.policy, self.rng, rule) if replica_ids else None
        self.is_open = self._dispatcher is not None  # False: no replica accepts work
        self.prefill_tokens = [0] * len(replica_ids)
        self.num_decoding = [0] * len(replica_ids)
        self._ids = np.asarray(replica_ids, dtype=np.int64)
        self._kv_tokens = np.asarray(kv_tokens, dtype=np.int64)
        self._kv_list = [int(x) for x in kv_tokens]  # indexed once per request: a list item is cheaper
        self.max_kv_tokens = max(kv_tokens) if kv_tokens else None
        # small fleets: Python lists (cheaper to index one by one); large: numpy arrays (cheap to scan)
        if len(replica_ids) <= SMALL_SET:
            self.outstanding, self.queued = list(outstanding), list(queued)
            self._least = None
        else:
            self.outstanding = np.asarray(outstanding, dtype=np.int64)
            self.queued = np.asarray(queued, dtype=np.int64)
            self._least = LoadIndex(outstanding) if self.load_index else None  # the least, no scan
        # Python mirrors of the counts: most events leave a replica's counts as they were, and
        # comparing a list item is cheaper than writing a numpy one
        self._outstanding_now, self._queued_now = list(outstanding), list(queued)

    def update(self, replica_id: int, num_outstanding: int, num_queued: int, prefill_tokens: int = 0,
               num_decoding: int = 0) -> None:
        """A replica's load changed (no-op for replicas the router does not route to); the prefill
        backlog and decode count matter only when ``needs_backlog``."""
        try:
            c = self._column[replica_id]
        except IndexError:  # a replica added after the table (a switch's, not routed to yet)
            return
        if c < 0:
            return
        if self._outstanding_now[c] != num_outstanding:
            self._outstanding_now[c] = self.outstanding[c] = num_outstanding
            if self._least is not None:
                self._least.move(c, num_outstanding)
        if self._queued_now[c] != num_queued:
            self._queued_now[c] = self.queued[c] = num_queued
        if self.needs_backlog:
            self.prefill_tokens[c] = prefill_tokens
            self.num_decoding[c] = num_decoding

    def route(self, type_id: int, max_tokens: int, prompt_tokens: int = 0) -> int:
        """The replica for a request of ``prompt_tokens`` that may hold up to ``max_tokens`` KV tokens."""
        if self._dispatcher is None:
            raise ConfigError("no replica accepts work: the caller holds requests until one does")
        c = self._dispatcher.choose(type_id, self.outstanding, self.queued, prompt_tokens,
                                    self.prefill_tokens, self.num_decoding, self._least)
        if max_tokens > self._kv_list[c]:  # the plan's choice cannot hold it: least loaded that can
            fits = self._kv_tokens >= max_tokens
            if fits.any():
                load = np.where(fits, np.asarray(self.outstanding), _UNREACHABLE)
                ties = np.flatnonzero(load == load.min())
                c = int(ties[self._ids[ties].argmin()])  # lower replica id on ties
        return self.replica_ids[c]
