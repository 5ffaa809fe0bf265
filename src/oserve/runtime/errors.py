"""Runtime errors, part of the one oserve error hierarchy.

Client faults (``ClientRequestError`` and subclasses) become 4xx responses; server-side conditions
(overload, no replica, dead engine) become 429/503. The mapping to HTTP lives in one place:
``oserve.runtime.gateway.error_map``.
"""

from __future__ import annotations

from oserve.common.errors import OServeError


class RuntimeServeError(OServeError):
    """Base of the errors the serving runtime raises on purpose."""


class ClientRequestError(RuntimeServeError):
    """The request is malformed or asks for something this server cannot give (HTTP 400)."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class ModelNotFoundError(ClientRequestError):
    """The request names a model this server does not serve (HTTP 400, code ``model_not_found``)."""

    def __init__(self, model: str, served: list[str]) -> None:
        super().__init__(f"model '{model}' is not served here; served models: {served}", "model",
                         "model_not_found")


class PromptTooLongError(ClientRequestError):
    """Prompt plus requested output exceed the model's context window (HTTP 400)."""

    def __init__(self, prompt_tokens: int, max_tokens: int, context_tokens: int,
                 param: str = "messages") -> None:
        super().__init__(
            f"prompt of {prompt_tokens} tokens plus max_tokens={max_tokens} exceeds the model's "
            f"context of {context_tokens} tokens", param, "context_length_exceeded")


class RequestTooLargeError(ClientRequestError):
    """The request body exceeds the gateway's size limit (HTTP 413)."""

    def __init__(self, size_bytes: int, max_bytes: int) -> None:
        super().__init__(f"request body of {size_bytes} bytes exceeds the limit of {max_bytes} bytes",
                         None, "request_too_large")


class RequestTimeoutError(ClientRequestError):
    """The client did not send its request body in time (HTTP 408)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"request body not received within {timeout_s:g} s", None, "request_timeout")


class UnauthorizedError(ClientRequestError):
    """Missing or wrong API key (HTTP 401, code ``invalid_api_key``)."""

    def __init__(self) -> None:
        super().__init__("missing or invalid API key: send 'Authorization: Bearer <key>'", None,
                         "invalid_api_key")


class OverloadedError(RuntimeServeError):
    """Every replica that may serve the request has a full queue (HTTP 429)."""


class NoReplicaError(RuntimeServeError):
    """No live replica can serve the request (HTTP 503)."""


class ShuttingDownError(RuntimeServeError):
    """The server is shutting down and the request could not finish within the grace period (503)."""


class EngineDeadError(RuntimeServeError):
    """An engine died or stopped answering. Before the first token the router retries elsewhere."""


class EngineBusyError(EngineDeadError):
    """An engine is alive but refuses work for now (upstream 429/503): retried elsewhere, not retired."""


class ReplicaDrainingError(EngineDeadError):
    """The replica a request waited on began draining before the request's first token: the router
    dispatches it again (the replica is not retired, and it is not a failed attempt)."""


class KvHandoffError(RuntimeServeError):
    """A disaggregated request's KV hand-off failed: the prefill replica returned no (or malformed) KV
    transfer parameters (HTTP 500)."""


class EngineStartError(RuntimeServeError):
    """An engine could not be started (missing dependency, process exited, health check timed out)."""


__all__ = ["ClientRequestError", "EngineBusyError", "EngineDeadError", "EngineStartError",
           "KvHandoffError", "ModelNotFoundError", "NoReplicaError", "OverloadedError", "PromptTooLongError",
           "ReplicaDrainingError", "RequestTimeoutError", "RequestTooLargeError", "RuntimeServeError",
           "ShuttingDownError", "UnauthorizedError"]
