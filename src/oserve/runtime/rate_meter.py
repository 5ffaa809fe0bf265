"""Per-type arrival rates over a sliding window, on an injected clock."""

from __future__ import annotations

from collections import deque


class RateMeter:
    """Counts arrivals per request type; ``rates_rps(now_s)`` is each type's rate over the last window."""

    def __init__(self, num_types: int, window_s: float = 60.0) -> None:
        self.num_types = num_types
        self.window_s = window_s
        self._arrivals: deque[tuple[float, int]] = deque()
        self.first_arrival_s: float | None = None

    def record(self, type_index: int, now_s: float) -> None:
        if self.first_arrival_s is None:
            self.first_arrival_s = now_s
        self._arrivals.append((now_s, type_index))

    def _expire(self, now_s: float) -> None:
        while self._arrivals and self._arrivals[0][0] < now_s - self.window_s:
            self._arrivals.popleft()

    def rates_rps(self, now_s: float) -> tuple[float, ...]:
        self._expire(now_s)
        counts = [0] * self.num_types
        for _, t in self._arrivals:
            if 0 <= t < self.num_types:
                counts[t] += 1
        return tuple(c / self.window_s for c in counts)

    def observed_s(self, now_s: float) -> float:
        """How long the meter has seen traffic, capped at one window."""
        if self.first_arrival_s is None:
            return 0.0
        return min(self.window_s, now_s - self.first_arrival_s)


__all__ = ["RateMeter"]
