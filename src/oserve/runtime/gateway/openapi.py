"""The OpenAPI 3.1 description of the public endpoints, built from the request schemas themselves.

Served at ``/openapi.json`` (as vLLM does) so that schema-based tools (schemathesis, client generators)
run against oserve unchanged. Request bodies come from the pydantic models in ``schemas``; every
endpoint declares the OpenAI error shape for its 4xx/5xx answers.
"""

from __future__ import annotations

from pydantic.json_schema import models_json_schema

from oserve.runtime.gateway.schemas import ChatCompletionRequest, CompletionRequest

ERROR_SCHEMA = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}},
}


def _errors(*statuses: int) -> dict:
    return {str(s): {"description": "OpenAI-style error",
                     "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            for s in statuses}


def _completion_path(name: str, summary: str) -> dict:
    return {"post": {
        "summary": summary, "operationId": name.lower(),
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{name}"}}}},
        "responses": {"200": {"description": "the completion (JSON), or server-sent events when "
                                             "stream is true",
                              "content": {"application/json": {"schema": {"type": "object"}},
                                          "text/event-stream": {"schema": {"type": "string"}}}},
                      **_errors(400, 401, 408, 413, 429, 503)}}}


def _get_path(name: str, summary: str, *statuses: int) -> dict:
    return {"get": {"summary": summary, "operationId": name,
                    "responses": {"200": {"description": "OK", "content": {
                        "application/json": {"schema": {"type": "object"}}}}, **_errors(*statuses)}}}


def openapi_schema(model_name: str) -> dict:
    _, defs = models_json_schema([(ChatCompletionRequest, "validation"),
                                  (CompletionRequest, "validation")],
                                 ref_template="#/components/schemas/{model}")
    schemas = {**defs.get("$defs", {}), "Error": ERROR_SCHEMA}
    for name in ("ChatCompletionRequest", "CompletionRequest"):  # other names are a 400
        schemas[name]["properties"]["model"] = {"type": "string", "enum": [model_name],
                                                "title": "Model"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "oserve", "version": "1",
                 "description": f"OpenAI-compatible API serving {model_name}"},
        "paths": {
            "/v1/chat/completions": _completion_path("ChatCompletionRequest", "chat completion"),
            "/v1/completions": _completion_path("CompletionRequest", "text completion"),
            "/v1/models": _get_path("models", "served models", 401),
            "/health": _get_path("health", "liveness: 200 while a replica is active", 503),
        },
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


__all__ = ["openapi_schema"]
