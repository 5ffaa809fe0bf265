"""Per-type arrival rates over a sliding window: what the controller measures, in the simulator and the
server alike.

The window is half-open, ``[end_s - window_s, end_s)``: an arrival exactly at ``end_s`` belongs to the
next window, so a check at time t counts the same requests whether it runs before or after arrivals
stamped t (the simulator's event order, the server's clock resolution).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

from oserve.common.errors import ConfigError


def window_rates(arrival_s: Sequence[float] | np.ndarray, type_id: Sequence[int] | np.ndarray,
                 num_types: int, end_s: float, window_s: float) -> np.ndarray:
    """Arrival rate (req/s) of each type over ``[end_s - window_s, end_s)``; arrivals sorted by time.

    Type ids outside ``0..num_types-1`` are not counted.
    """
    if window_s <= 0:
        raise ConfigError(f"rate window must be positive, got {window_s} s")
    arr = np.asarray(arrival_s, dtype=np.float64)
    lo, hi = np.searchsorted(arr, [end_s - window_s, end_s], side="left")
    types = np.asarray(type_id, dtype=np.int64)[lo:hi]
    types = types[(types >= 0) & (types < num_types)]
    return np.bincount(types, minlength=num_types)[:num_types] / window_s


class RateWindow:
    """Streaming form of ``window_rates``: ``record`` arrivals as they come (in time order), ask
    ``rates_rps(now_s)`` at any time; arrivals older than the window are forgotten."""

    def __init__(self, num_types: int, window_s: float = 60.0) -> None:
        if window_s <= 0:
            raise ConfigError(f"rate window must be positive, got {window_s} s")
        self.num_types = num_types
        self.window_s = window_s
        self.first_arrival_s: float | None = None
        self._arrivals: deque[tuple[float, int]] = deque()

    def record(self, type_index: int, arrival_s: float) -> None:
        if self.first_arrival_s is None:
            self.first_arrival_s = arrival_s
        self._arrivals.append((arrival_s, type_index))

    def rates_rps(self, now_s: float) -> tuple[float, ...]:
        while self._arrivals and self._arrivals[0][0] < now_s - self.window_s:
            self._arrivals.popleft()
        times = [t for t, _ in self._arrivals]
        types = [k for _, k in self._arrivals]
        return tuple(float(r) for r in window_rates(times, types, self.num_types, now_s, self.window_s))

    def observed_s(self, now_s: float) -> float:
        """How long traffic has been seen, capped at one window (rates are partial before that)."""
        if self.first_arrival_s is None:
            return 0.0
        return min(self.window_s, now_s - self.first_arrival_s)


__all__ = ["RateWindow", "window_rates"]
