"""The one place where oserve errors become HTTP status codes and OpenAI-style error bodies."""

from __future__ import annotations

import json
import logging

from oserve.common.errors import OServeError
from oserve.runtime.errors import (
    ClientRequestError,
    EngineDeadError,
    EngineStartError,
    ModelNotFoundError,
    NoReplicaError,
    OverloadedError,
    RequestTimeoutError,
    RequestTooLargeError,
    ShuttingDownError,
    UnauthorizedError,
)

log = logging.getLogger("oserve.runtime.gateway")

# (exception class, HTTP status, OpenAI error type); the first matching row wins.
ERROR_TABLE: tuple[tuple[type[BaseException], int, str], ...] = (
    (RequestTooLargeError, 413, "invalid_request_error"),
    (RequestTimeoutError, 408, "invalid_request_error"),
    (UnauthorizedError, 401, "invalid_request_error"),
    (ModelNotFoundError, 400, "invalid_request_error"),
    (ClientRequestError, 400, "invalid_request_error"),
    (OverloadedError, 429, "overloaded_error"),
    (NoReplicaError, 503, "service_unavailable_error"),
    (ShuttingDownError, 503, "service_unavailable_error"),
    (EngineDeadError, 503, "service_unavailable_error"),
    (EngineStartError, 503, "service_unavailable_error"),
    (OServeError, 500, "server_error"),
)

RETRY_AFTER_S = 1  # sent with 429 and 503: queues turn over within about a second



def error_body(message: str, error_type: str, param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def to_status_and_body(exc: BaseException) -> tuple[int, dict]:
    """Status code and OpenAI-style body for any exception (unexpected ones become a logged 500)."""
    for cls, status, error_type in ERROR_TABLE:
        if isinstance(exc, cls):
            param = getattr(exc, "param", None)
            code = getattr(exc, "code", None) or error_type.removesuffix("_error")
            if status == 500:  # a server fault raised on purpose still needs its traceback
                log.error("server error while serving a request", exc_info=exc)
            return status, error_body(str(exc), error_type, param, code)
    log.error("unexpected error while serving a request", exc_info=exc)
    return 500, error_body(f"internal error: {type(exc).__name__}", "server_error", None,
                           "internal_error")


def http_error_body(status: int, detail: str) -> dict:
    """Body for errors raised by the HTTP layer itself (unknown route, wrong method)."""
    error_type = "invalid_request_error" if status < 500 else "server_error"
    return error_body(detail, error_type, None, str(status))


def sse_error_event(exc: BaseException) -> bytes:
    """An error in the middle of a stream: the status line is gone, so it travels as an SSE event."""
    _, body = to_status_and_body(exc)
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def retry_headers(status: int) -> dict[str, str] | None:
    """``Retry-After`` for the statuses a client should retry (429 overload, 503 unavailable)."""
    return {"Retry-After": str(RETRY_AFTER_S)} if status in (429, 503) else None


__all__ = ["ERROR_TABLE", "RETRY_AFTER_S", "error_body", "http_error_body", "retry_headers",
           "sse_error_event", "to_status_and_body"]
