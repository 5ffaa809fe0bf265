"""Graceful shutdown of the gateway: a grace period for in-flight requests, then an explicit end.

When the server begins to shut down (``begin``), new requests get a 503 at once, and requests in flight
have ``grace_s`` to finish. Whatever is still running at the deadline is stopped through the timeout
scopes it waits in (``bounded``): a stream ends with an SSE error event, a whole response becomes a 503,
both in the OpenAI error shape. No per-token task is created: each wait is an ``asyncio.timeout`` scope
whose deadline the gate moves.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from oserve.runtime.errors import ShuttingDownError


class ShutdownGate:
    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.deadline: float | None = None  # event-loop time at which in-flight requests are cut
        self._scopes: set[asyncio.Timeout] = set()

    @property
    def is_shutting_down(self) -> bool:
        return self.deadline is not None

    def check_open(self) -> None:
        if self.deadline is not None:
            raise ShuttingDownError("the server is shutting down; send the request to another server")

    def begin(self) -> None:
        """Start the grace period (called on the server's event loop when shutdown starts)."""
        if self.deadline is not None:
            return
        self.deadline = asyncio.get_running_loop().time() + self.grace_s
        for scope in list(self._scopes):
            scope.reschedule(self.deadline)

    @asynccontextmanager
    async def bounded(self):
        """A scope that raises ``ShuttingDownError`` if the grace period ends while it waits."""
        scope = asyncio.timeout_at(self.deadline)
        self._scopes.add(scope)
        try:
            async with scope:
                yield
        except TimeoutError:
            if self.deadline is None or not scope.expired():
                raise
            raise ShuttingDownError(f"the server shut down before this request finished (grace "
                                    f"period {self.grace_s:g} s)") from None
        finally:
            self._scopes.discard(scope)


__all__ = ["ShutdownGate"]
