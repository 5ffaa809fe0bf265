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
    _add_error_handlers(app)
    _add_completion_routes(app, runtime)
    _add_info_routes(app, runtime)
    return HotPathApp(app) if fast_path else app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OServeError)
    async def _oserve_error(_: Request, exc: OServeError) -> JSONResponse:
        status, body = to_status_and_body(exc)
        return JSONResponse(body, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(http_error_body(exc.status_code, str(exc.detail)),
                            status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        status, body = to_status_and_body(exc)
        return JSONResponse(body, status_code=status)


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

    def __init__(self, app: FastAPI) -> None:
        self.app = app
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
            status, body = to_status_and_body(exc)
            response = JSONResponse(body, status_code=status)
        await response(scope, receive, send)


__all__ = ["HotPathApp", "create_app"]
