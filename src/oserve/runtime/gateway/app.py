"""FastAPI routes of the gateway. Handlers live in ``handler``; errors are mapped in ``error_map``."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from oserve.common.errors import OServeError
from oserve.runtime.gateway.error_map import http_error_body, to_status_and_body
from oserve.runtime.gateway.handler import CompletionHandler, check_body_size
from oserve.runtime.gateway.schemas import ChatCompletionRequest, CompletionRequest, parse_body
from oserve.runtime.metrics import Metrics
from oserve.runtime.serving import ServingRuntime


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
    _add_error_handlers(app, runtime.metrics)
    _add_completion_routes(app, runtime)
    _add_info_routes(app, runtime)
    return HotPathApp(app, runtime.metrics) if fast_path else app


def error_response(exc: BaseException, metrics: Metrics) -> JSONResponse:
    """The OpenAI-style error response for ``exc``, counted in ``oserve_http_errors_total``."""
    if isinstance(exc, StarletteHTTPException):
        status, body = exc.status_code, http_error_body(exc.status_code, str(exc.detail))
    else:
        status, body = to_status_and_body(exc)
    metrics.inc("oserve_http_errors_total", (("status", str(status)),
                                             ("code", str(body["error"]["code"]))))
    return JSONResponse(body, status_code=status)


def _add_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    async def handle(_: Request, exc: Exception) -> JSONResponse:
        return error_response(exc, metrics)

    for exc_class in (OServeError, StarletteHTTPException, Exception):
        app.add_exception_handler(exc_class, handle)


def _add_completion_routes(app: FastAPI, runtime: ServingRuntime) -> None:
    handler = CompletionHandler(runtime)

    async def serve(request: Request, schema: type) -> Response:
        declared = request.headers.get("content-length", "")
        check_body_size(int(declared) if declared.isdigit() else 0, runtime.config.max_body_bytes)
        raw = await request.body()
        check_body_size(len(raw), runtime.config.max_body_bytes)
        body = parse_body(schema, raw)
        stream = await handler.open(body)
        if body.stream:
            return StreamingResponse(handler.events(body, stream), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return JSONResponse(await handler.complete(body, stream))

    async def chat_completions(request: Request) -> Response:
        return await serve(request, ChatCompletionRequest)

    async def completions(request: Request) -> Response:
        return await serve(request, CompletionRequest)

    app.router.add_route("/v1/chat/completions", chat_completions, methods=["POST"])
    app.router.add_route("/v1/completions", completions, methods=["POST"])
    app.state.hot_paths = {("POST", "/v1/chat/completions"): chat_completions,
                           ("POST", "/v1/completions"): completions}


def _add_info_routes(app: FastAPI, runtime: ServingRuntime) -> None:
    started_at = int(time.time())

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


class HotPathApp:
    """ASGI wrapper: the two completion endpoints go straight to their handlers, everything else
    (other routes, lifespan) to the FastAPI app. The completion handlers map their errors themselves
    through ``error_map``, so the answer is the same either way; skipping FastAPI's middleware and
    routing layers roughly halves the gateway's CPU per request (see docs/runtime.md)."""

    def __init__(self, app: FastAPI, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self.hot_paths = app.state.hot_paths

    async def __call__(self, scope, receive, send) -> None:
        endpoint = None
        if scope["type"] == "http":
            endpoint = self.hot_paths.get((scope["method"], scope["path"]))
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await endpoint(request)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an OpenAI-style error body
            response = error_response(exc, self.metrics)
        await response(scope, receive, send)


__all__ = ["HotPathApp", "create_app", "error_response"]
