"""The event queue: engine-step ends of the replicas, totally ordered by (time, sequence number).

Arrivals are not queued: they are read in order from the trace's sorted arrays and, at equal times, come
before step ends. A step end carries the replica's version at scheduling time; when the replica re-times
its step (a decode run cut by an arrival) the version moves on and the old event is skipped as stale.
"""

from __future__ import annotations

import heapq


class EventQueue:
    """A heap of (time_s, sequence, replica_id, version) step-end events, sequence numbers per queue."""

    __slots__ = ("_heap", "_next_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int, int]] = []
        self._next_seq = 0

    def push_step_end(self, time_s: float, replica_id: int, version: int) -> None:
        self._next_seq += 1
        heapq.heappush(self._heap, (time_s, self._next_seq, replica_id, version))

    def next_time_s(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop(self) -> tuple[float, int, int, int]:
        return heapq.heappop(self._heap)

    def __len__(self) -> int:
        return len(self._heap)
