"""Injected time: the runtime runs on wall time, tests on a clock they advance themselves.

A clock gives the time (``now_s``), sleeps (``sleep``) and bounds a block of code in time
(``timeout``, an async context manager that raises ``TimeoutError``), so that every wait of the runtime
(the controller's checks, drains and restart back-off; the router's first-token and stall timeouts)
runs on the same injected time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from contextlib import AbstractAsyncContextManager
from typing import Protocol


class Clock(Protocol):
    def now_s(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[object]: ...


class WallClock:
    """Monotonic wall time, asyncio sleep and asyncio timeouts."""

    def now_s(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[object]:
        return asyncio.timeout(seconds)


class ScaledClock:
    """Wall time run ``speed`` times faster (``speed`` > 1 compresses time): ``now_s`` is the
    monotonic time since the clock was made, times ``speed``; sleeps and timeouts last ``1/speed`` of
    what they ask for. Lets a harness replay a trace of many minutes through the real gateway in
    seconds, with every wait of the runtime, its engines and the load generator compressed alike (the
    time a computation takes is not: a 0.5 s control step costs ``0.5 x speed`` seconds of this clock).
    It reads only ``time.monotonic``, so one instance may serve several event loops and threads."""

    def __init__(self, speed: float) -> None:
        if not speed > 0 or speed == float("inf"):
            raise ValueError(f"clock speed must be positive and finite, got {speed}")
        self.speed = float(speed)
        self._origin_s = time.monotonic()

    def now_s(self) -> float:
        return (time.monotonic() - self._origin_s) * self.speed

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[object]:
        return asyncio.timeout(seconds / self.speed)


class ManualClock:
    """A fake timer (test double of ``WallClock``): time moves only on ``advance``.

    ``sleep(s)`` returns once the clock has been advanced to ``now + s`` (``sleep(0)`` just yields);
    a ``timeout(s)`` block is cancelled with ``TimeoutError`` once the clock passes ``now + s``. Call
    ``advance`` from the event loop that runs the sleepers.
    """

    def __init__(self, t_s: float = 0.0) -> None:
        self.t_s = t_s
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._timeouts: list[_ManualTimeout] = []
        self._seq = itertools.count()

    def now_s(self) -> float:
        return self.t_s

    def advance(self, seconds: float) -> None:
        self.t_s += max(0.0, seconds)
        while self._sleepers and self._sleepers[0][0] <= self.t_s:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)
        for block in [b for b in self._timeouts if b.deadline_s <= self.t_s]:
            block.expire()

    @property
    def num_sleepers(self) -> int:
        """Sleeps not yet woken (lets a test wait until the code under test is waiting on time)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.t_s + seconds, next(self._seq), future))
        await future

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[object]:
        return _ManualTimeout(self, self.t_s + seconds)


class _ManualTimeout:
    """``asyncio.timeout`` driven by a ``ManualClock``: asyncio's own cancellation, our deadline."""

    def __init__(self, clock: ManualClock, deadline_s: float) -> None:
        self.clock = clock
        self.deadline_s = deadline_s
        self._inner = asyncio.timeout(None)
        self._is_expired = False

    async def __aenter__(self) -> _ManualTimeout:
        await self._inner.__aenter__()
        self.clock._timeouts.append(self)
        if self.deadline_s <= self.clock.t_s:
            self.expire()
        return self

    def expire(self) -> None:
        if not self._is_expired:  # asyncio refuses to reschedule a timeout that has fired
            self._is_expired = True
            self._inner.reschedule(asyncio.get_running_loop().time())

    async def __aexit__(self, *exc) -> None:
        self.clock._timeouts.remove(self)
        await self._inner.__aexit__(*exc)  # turns its own cancellation into TimeoutError


__all__ = ["Clock", "ManualClock", "ScaledClock", "WallClock"]
