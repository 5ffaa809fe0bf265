"""The event queue: replicas' step ends and a controller's events, totally ordered by (time, kind, sequence).

Arrivals are not queued: they are read in order from the trace's sorted arrays and, at equal times, come
before queued events. Step ends (kind ``STEP``) carry the replica's version at scheduling time; when the
replica re-times its step (a decode run cut by an arrival) the version moves on and the old event is
skipped as stale. A controller (the adaptive run's switching) queues its own kinds, numbered above
``STEP``: at equal times step ends come first, then its kinds in their numeric order, each in the order
queued. A KV hand-off's end (kind ``TRANSFER``, disaggregated plans) comes before the step ends of its
time: a = the sequence, b = the decode replica's id.
"""

from __future__ import annotations

import heapq
import itertools

STEP = 0
TRANSFER = -1


class EventQueue:
    """A heap of (time_s, kind, sequence, a, b) events; for a step end a = replica id, b = its version."""

    __slots__ = ("heap", "next_seq")

    def __init__(self) -> None:
        self.heap: list[tuple] = []
        # the sequence numbers 1, 2, ...: a bound C method, so the event loop can push inline
        self.next_seq = itertools.count(1).__next__

    def push(self, time_s: float, kind: int, a: object, b: object) -> None:
        heapq.heappush(self.heap, (time_s, kind, self.next_seq(), a, b))

    def push_step_end(self, time_s: float, replica_id: int, version: int) -> None:
        heapq.heappush(self.heap, (time_s, STEP, self.next_seq(), replica_id, version))

    def pop(self) -> tuple:
        return heapq.heappop(self.heap)

    def __len__(self) -> int:
        return len(self.heap)
