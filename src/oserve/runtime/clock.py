"""Injected time: the runtime runs on wall time, tests on a clock they advance themselves."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol


class Clock(Protocol):
    def now_s(self) -> float: ...

    def sleep(self, seconds: float) -> Awaitable[None]: ...


class WallClock:
    """Monotonic wall time and asyncio sleep."""

    def now_s(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> Awaitable[None]:
        return asyncio.sleep(seconds)


@dataclass
class ManualClock:
    """A clock that only moves when told to; ``sleep`` advances it and yields to the event loop."""

    t_s: float = 0.0
    on_advance: list[Callable[[float], None]] = field(default_factory=list)

    def now_s(self) -> float:
        return self.t_s

    def advance(self, seconds: float) -> None:
        self.t_s += seconds

    async def sleep(self, seconds: float) -> None:
        self.t_s += max(0.0, seconds)
        await asyncio.sleep(0)


__all__ = ["Clock", "ManualClock", "WallClock"]
