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


def create_app(runtime: ServingRuntime, manage_runtime: bool = True) -> FastAPI:
    """The gateway app. With ``manage_runtime`` the app's lifespan starts and stops the runtime."""

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        if manage_runtime:
            async with runtime:
                yield
        else:
            yield

    app = FastAPI(title="oserve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    handler = CompletionHandler(runtime)
    started_at = int(time.time())

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

    async def serve(request: Request, schema: type) -> Response:
        check_body_size(int(request.headers.get("content-length") or 0), runtime.config.max_body_bytes)
        raw = await request.body()
        check_body_size(len(raw), runtime.config.max_body_bytes)
        body = parse_body(schema, raw)
        stream = await handler.open(body)
        if body.stream:
            return StreamingResponse(handler.events(body, stream), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return JSONResponse(await handler.complete(body, stream))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await serve(request, ChatCompletionRequest)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await serve(request, CompletionRequest)

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

    return app


__all__ = ["create_app"]
