"""Running the gateway under uvicorn: in the foreground (``oserve serve``) or in a background thread.

``ServerThread`` binds 127.0.0.1 on an ephemeral port chosen by the OS and runs the server's event loop
in a thread; tests and benchmarks use it as a context manager and talk to ``base_url``.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Coroutine
from typing import Any

import uvicorn

from oserve.runtime.errors import EngineStartError

LOOPBACK = "127.0.0.1"


def _config(app: Any, host: str, port: int, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                          lifespan="on", timeout_graceful_shutdown=10, proxy_headers=False)


def bind_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class ServerThread:
    """A uvicorn server on 127.0.0.1:<ephemeral> in a background thread, for tests and benchmarks."""

    def __init__(self, app: Any, log_level: str = "warning", start_timeout_s: float = 60.0) -> None:
        self.sock = bind_socket(LOOPBACK, 0)
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(_config(app, LOOPBACK, self.port, log_level))
        self.start_timeout_s = start_timeout_s
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="oserve-gateway", daemon=True)
        self._error: BaseException | None = None

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.serve(sockets=[self.sock]))
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            self._error = exc
        finally:
            self.loop.close()

    def call(self, coro: Coroutine, timeout_s: float = 60.0) -> Any:
        """Run a coroutine on the server's event loop (e.g. a plan switch) and wait for its result."""
        if self.loop is None:
            raise RuntimeError("server not started")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        waited_s = 0.0
        while not self.server.started:
            if not self._thread.is_alive() or waited_s > self.start_timeout_s:
                raise EngineStartError(f"gateway did not start: {self._error!r}")
            time.sleep(0.02)
            waited_s += 0.02
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)
        self.sock.close()


def serve_sockets(app: Any, sock: socket.socket, log_level: str = "info") -> None:
    """Run the gateway on a bound socket in the foreground until interrupted (``oserve serve``)."""
    host, port = sock.getsockname()[:2]
    uvicorn.Server(_config(app, host, port, log_level)).run(sockets=[sock])


__all__ = ["LOOPBACK", "ServerThread", "bind_socket", "serve_sockets"]
