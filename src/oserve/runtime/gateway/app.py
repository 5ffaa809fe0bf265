"""FastAPI routes of the gateway. Handlers live in ``handler``; errors are mapped in ``error_map``.

Around the routes sits ``GatewayApp`` (ASGI): the API-key check, the two completion endpoints' hot path,
and the shutdown gate. Request bodies are read as a stream, counted against the size limit as they
arrive and bounded in time; a non-streamed request whose client hangs up is cancelled in the engine.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from oserve.common.errors import OServeError
from oserve.runtime.errors import RequestTimeoutError, UnauthorizedError
from oserve.runtime.gateway.error_map import http_error_body, retry_headers, to_status_and_body
from oserve.runtime.gateway.handler import CompletionHandler, check_body_size
from oserve.runtime.gateway.openapi import openapi_schema
from oserve.runtime.gateway.schemas import ChatCompletionRequest, CompletionRequest, parse_body
from oserve.runtime.gateway.shutdown import ShutdownGate
from oserve.runtime.metrics import Metrics
from oserve.runtime.serving import ServingRuntime

PUBLIC_PATHS = frozenset({"/health"})  # reachable without the API key


class ClientGone(Exception):
    """The client hung up before its answer was ready; nothing is sent."""


def create_app(runtime: ServingRuntime, manage_runtime: bool = True, fast_path: bool = True):
    """The gateway ASGI app. With ``manage_runtime`` its lifespan starts and stops the runtime."""

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        if manage_runtime:
            async with runtime:
                yield
        else:
            yield

    app = FastAPI(title="oserve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    gate = ShutdownGate(runtime.config.shutdown_grace_s)
    _add_error_handlers(app, runtime.metrics)
    hot_paths = _add_completion_routes(app, runtime, gate)
    _add_info_routes(app, runtime)
    return GatewayApp(app, runtime, gate, hot_paths if fast_path else {})


def error_response(exc: BaseException, metrics: Metrics) -> JSONResponse:
    """The OpenAI-style error response for ``exc``, counted in ``oserve_http_errors_total``."""
    if isinstance(exc, StarletteHTTPException):
        status, body = exc.status_code, http_error_body(exc.status_code, str(exc.detail))
        headers = dict(exc.headers or {})  # e.g. Allow on a 405
    else:
        status, body = to_status_and_body(exc)
        headers = retry_headers(status) or {}
    if status in (408, 413):
        headers["Connection"] = "close"  # the rest of the body is never read
    metrics.inc("oserve_http_errors_total", (("status", str(status)),
                                             ("code", str(body["error"]["code"]))))
    return JSONResponse(body, status_code=status, headers=headers or None)


def _add_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    async def handle(_: Request, exc: Exception) -> JSONResponse:
        return error_response(exc, metrics)

    async def gone(_: Request, exc: Exception) -> Response:
        return Response(status_code=499)  # never seen: the client is gone

    for exc_class in (OServeError, StarletteHTTPException, Exception):
        app.add_exception_handler(exc_class, handle)
    app.add_exception_handler(ClientGone, gone)


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The request body, refused as soon as it passes ``max_bytes`` (never buffered past the limit)
    or when it has not arrived in full within ``timeout_s``."""
    declared = request.headers.get("content-length", "")
    check_body_size(int(declared) if declared.isdigit() else 0, max_bytes)
    parts, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for part in request.stream():
                size += len(part)
                check_body_size(size, max_bytes)
                parts.append(part)
    except TimeoutError:
        raise RequestTimeoutError(timeout_s) from None
    except ClientDisconnect:
        raise ClientGone() from None  # hung up half-way through its body: not a server fault
    return b"".join(parts)


async def until_disconnect(request: Request, coro):
    """Run ``coro`` (its body already read) but cancel it if the client disconnects first."""
    work = asyncio.ensure_future(coro)
    watch = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait((work, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not work.done():
            work.cancel()  # the engine stops the generation and frees the slot
            await asyncio.gather(work, return_exceptions=True)
    if work.cancelled():
        raise ClientGone()
    return work.result()


async def _wait_disconnect(request: Request) -> None:
    receive = request.receive
    while (await receive())["type"] != "http.disconnect":
        pass


def _add_completion_routes(app: FastAPI, runtime: ServingRuntime, gate: ShutdownGate) -> dict:
    handler = CompletionHandler(runtime, gate)
    config = runtime.config

    async def serve(request: Request,
                    schema: type[ChatCompletionRequest] | type[CompletionRequest]) -> Response:
        gate.check_open()
        raw = await read_body(request, config.max_body_bytes, config.body_read_timeout_s)
        body = parse_body(schema, raw)
        if body.stream:
            stream = await until_disconnect(request, handler.open(body))
            return StreamingResponse(handler.events(body, stream), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})

        async def whole() -> dict:
            return await handler.complete(body, await handler.open(body))

        return JSONResponse(await until_disconnect(request, whole()))

    async def chat_completions(request: Request) -> Response:
        return await serve(request, ChatCompletionRequest)

    async def completions(request: Request) -> Response:
        return await serve(request, CompletionRequest)

    app.router.add_route("/v1/chat/completions", chat_completions, methods=["POST"])
    app.router.add_route("/v1/completions", completions, methods=["POST"])
    return {("POST", "/v1/chat/completions"): chat_completions,
            ("POST", "/v1/completions"): completions}


def _add_info_routes(app: FastAPI, runtime: ServingRuntime) -> None:
    started_at = int(time.time())
    schema = openapi_schema(runtime.model_name)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": runtime.model_name, "object": "model",
                                            "created": started_at, "owned_by": "oserve"}]}

    @app.get("/health")
    async def health() -> JSONResponse:
        ok = runtime.is_healthy()
        return JSONResponse({"status": "ok" if ok else "no live replica",
                             "plan_version": runtime.router.table.version},
                            status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(runtime.metrics.render(),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/admin/plan")
    async def admin_plan() -> dict:
        return runtime.admin_state()

    @app.get("/openapi.json")
    async def openapi() -> dict:
        return schema


class GatewayApp:
    """ASGI wrapper around the FastAPI app: the API-key check (every path but ``/health``), then the
    completion endpoints straight to their handlers (``hot_paths``), everything else (other routes,
    lifespan) to FastAPI. The handlers map their errors themselves through ``error_map``, so the answer
    is the same either way; skipping FastAPI's middleware and routing layers roughly halves the
    gateway's CPU per request (see docs/runtime.md)."""

    def __init__(self, app: FastAPI, runtime: ServingRuntime, gate: ShutdownGate,
                 hot_paths: dict) -> None:
        self.app = app
        self.metrics = runtime.metrics
        self.gate = gate
        self.hot_paths = hot_paths
        key = runtime.config.api_key
        self._expected = f"Bearer {key}".encode() if key else None

    @property
    def shutdown_grace_s(self) -> float:
        return self.gate.grace_s

    def begin_shutdown(self) -> None:
        """Called by the server when it starts to shut down (see ``oserve.runtime.server``)."""
        self.gate.begin()

    def _authorized(self, scope) -> bool:
        if self._expected is None or scope["path"] in PUBLIC_PATHS:
            return True
        given = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), b"")
        return hmac.compare_digest(given, self._expected)  # constant time in the key's content

    async def __call__(self, scope, receive, send) -> None:
        endpoint = None
        if scope["type"] == "http":
            if not self._authorized(scope):
                await error_response(UnauthorizedError(), self.metrics)(scope, receive, send)
                return
            endpoint = self.hot_paths.get((scope["method"], scope["path"]))
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        try:
            response = await endpoint(Request(scope, receive))
        except ClientGone:
            return  # nobody to answer; the request is counted 'cancelled'
        except Exception as exc:  # noqa: BLE001 - every failure becomes an OpenAI-style error body
            response = error_response(exc, self.metrics)
        await response(scope, receive, send)


__all__ = ["GatewayApp", "create_app", "error_response", "read_body", "until_disconnect"]
