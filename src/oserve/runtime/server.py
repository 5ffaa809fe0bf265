"""Running the gateway under uvicorn: in the foreground (``oserve serve``) or in a background thread.

``ServerThread`` binds 127.0.0.1 on an ephemeral port chosen by the OS and runs the server's event loop
in a thread; tests and benchmarks use it as a context manager and talk to ``base_url``.

Two things uvicorn does not do on its own are added here: a connection whose request headers are not
complete within ``header_timeout_s`` of their first byte is closed (uvicorn only times out idle
keep-alive connections, so a client trickling header bytes held a connection forever); and when the
server starts to shut down it tells the app (``begin_shutdown``) before it waits for connections, so
the gateway's grace period runs first and in-flight requests end explicitly (see
``oserve.runtime.gateway.shutdown``). uvicorn's own forced shutdown stays as a backstop.
"""

from __future__ import annotations

import asyncio
import math
import socket
import threading
import time
from typing import Any

import uvicorn

from oserve.runtime.errors import EngineStartError

LOOPBACK = "127.0.0.1"
HEADER_TIMEOUT_S = 10.0
FORCED_SHUTDOWN_MARGIN_S = 5.0  # after the app's grace period, uvicorn cancels what is left


def _header_timeout_protocol(base: type, timeout_s: float) -> type:
    """``base`` (uvicorn's h11 or httptools protocol) with a deadline for complete request headers."""

    class HeaderTimeoutProtocol(base):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            cycle = getattr(self, "cycle", None)
            if cycle is not None and not cycle.response_complete:
                self._cancel_header_timer()  # headers complete: the app has the request
            elif not self.transport.is_closing():
                self._arm_header_timer()  # waiting for (the rest of) the next request's headers

        def connection_lost(self, exc) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(timeout_s, self._on_header_timeout)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _on_header_timeout(self) -> None:
            self._header_timer = None
            cycle = getattr(self, "cycle", None)
            if cycle is None or cycle.response_complete:
                self.transport.close()

    return HeaderTimeoutProtocol


def _protocol_class(header_timeout_s: float) -> type:
    base: type
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        base = HttpToolsProtocol
    except ImportError:  # uvicorn without [standard]
        from uvicorn.protocols.http.h11_impl import H11Protocol

        base = H11Protocol
    return _header_timeout_protocol(base, header_timeout_s)


def _config(app: Any, host: str, port: int, log_level: str,
            header_timeout_s: float = HEADER_TIMEOUT_S) -> uvicorn.Config:
    grace_s = float(getattr(app, "shutdown_grace_s", 10.0))
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                          lifespan="on",
                          timeout_graceful_shutdown=math.ceil(grace_s + FORCED_SHUTDOWN_MARGIN_S),
                          proxy_headers=False, http=_protocol_class(header_timeout_s))


class GracefulServer(uvicorn.Server):
    """uvicorn's server, telling the app that shutdown has begun before waiting on connections."""

    async def shutdown(self, sockets=None) -> None:
        begin = getattr(self.config.app, "begin_shutdown", None)
        if begin is not None:
            begin()
        await super().shutdown(sockets)


def bind_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class ServerThread:
    """A uvicorn server on 127.0.0.1:<ephemeral> in a background thread, for tests and benchmarks."""

    def __init__(self, app: Any, log_level: str = "warning", start_timeout_s: float = 60.0,
                 header_timeout_s: float = HEADER_TIMEOUT_S) -> None:
        self.sock = bind_socket(LOOPBACK, 0)
        self.port = self.sock.getsockname()[1]
        self.server = GracefulServer(_config(app, LOOPBACK, self.port, log_level, header_timeout_s))
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

    def __enter__(self) -> ServerThread:
        self._thread.start()
        waited_s = 0.0
        while not self.server.started:
            if not self._thread.is_alive() or waited_s > self.start_timeout_s:
                raise EngineStartError(f"gateway did not start: {self._error!r}")
            time.sleep(0.02)
            waited_s += 0.02
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Shut down as on SIGTERM (grace period included) and wait for the server thread."""
        self.server.should_exit = True
        self._thread.join(timeout=timeout_s)
        self.sock.close()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_sockets(app: Any, sock: socket.socket, log_level: str = "info",
                  header_timeout_s: float = HEADER_TIMEOUT_S) -> None:
    """Run the gateway on a bound socket in the foreground until interrupted (``oserve serve``)."""
    host, port = sock.getsockname()[:2]
    GracefulServer(_config(app, host, port, log_level, header_timeout_s)).run(sockets=[sock])


__all__ = ["HEADER_TIMEOUT_S", "GracefulServer", "LOOPBACK", "ServerThread", "bind_socket",
           "serve_sockets"]
