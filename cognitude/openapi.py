"""``GET /openapi.json``: the management API described as OpenAPI 3.1.

Each routes module exports ``OPENAPI_PATHS`` next to its ``ROUTES`` (the description lives
beside the code it describes); this module merges them, adds the service endpoints, the
OpenAI-compatible ``/v1`` endpoints and the shared components, and serves the result. The
``/v1`` request bodies are OpenAI's own: only what the proxy itself checks is described
(every other field is passed to the provider untouched), plus Cognitude's own headers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from cognitude import __version__

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def error_responses(*statuses: int) -> dict[str, Any]:
    """Response entries for the given statuses, all in the OpenAI error shape."""
    ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {str(s): {"description": _REASONS.get(s, "Error"), **ref} for s in statuses}


_REASONS = {400: "Invalid request", 401: "Missing or invalid key", 403: "Forbidden",
            404: "Not found", 405: "Method not allowed", 409: "Conflict",
            413: "Body too large", 429: "Rate limited", 502: "Upstream error",
            503: "Dependency unavailable", 504: "Upstream timeout"}

_JSON_OBJECT = {"content": {"application/json": {"schema": {"type": "object"}}}}

SERVICE_PATHS: dict[str, Any] = {
    "/health": {"get": {"summary": "Liveness", "security": [],
                        "responses": {"200": {"description": "Alive", **_JSON_OBJECT}}}},
    "/ready": {"get": {"summary": "Redis and Postgres reachable", "security": [],
                       "responses": {"200": {"description": "Ready", **_JSON_OBJECT},
                                     **error_responses(503)}}},
    "/metrics": {"get": {"summary": "Prometheus metrics", "security": [], "responses": {
        "200": {"description": "Text exposition format",
                "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
    "/analytics/usage": {"get": {
        "summary": "The caller's organization's usage, cost and savings (from the rollup)",
        "parameters": [
            {"name": "start", "in": "query", "schema": {"type": "string", "format": "date"}},
            {"name": "end", "in": "query", "schema": {"type": "string", "format": "date"}},
            {"name": "group_by", "in": "query",
             "schema": {"type": "string", "enum": ["day", "model", "provider"]}},
        ],
        "responses": {"200": {"description": "Usage report", **_JSON_OBJECT},
                      **error_responses(400, 401, 503)},
    }},
}


_CACHE_HEADERS = [
    {"name": "Cache-Control", "in": "header", "required": False,
     "description": "`no-cache`: skip the cache read (still write); `no-store`: don't write.",
     "schema": {"type": "string"}},
    {"name": "X-Cognitude-Cache-TTL", "in": "header", "required": False,
     "description": "Seconds to keep this response cached (0: don't store).",
     "schema": {"type": "string", "pattern": "^[0-9]+$"}},
]
_HOT_ERRORS = (400, 401, 403, 404, 413, 429, 502, 503, 504)
_MESSAGES = {"type": "array", "minItems": 1, "items": {
    "type": "object", "required": ["role"], "properties": {"role": {"type": "string"}}}}


def _proxied(summary: str, op_id: str, body: dict[str, Any], sse: bool) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": {"type": "object"}}}
    if sse:
        content["text/event-stream"] = {"schema": {"type": "string"}}
    return {"post": {
        "summary": summary, "operationId": op_id, "parameters": _CACHE_HEADERS,
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {"200": {"description": "The provider's answer (or the cached one); "
                                             "`X-Cognitude-Cache` says which", "content": content},
                      **error_responses(*_HOT_ERRORS)}}}


V1_PATHS: dict[str, Any] = {
    "/v1/chat/completions": _proxied(
        "OpenAI chat completions (JSON or SSE), through limits, cache and the ledger",
        "createChatCompletion",
        {"type": "object", "required": ["model", "messages"],
         "properties": {"model": {"type": "string", "minLength": 1}, "messages": _MESSAGES,
                        "stream": {"type": "boolean"}}},
        sse=True),
    "/v1/embeddings": _proxied(
        "OpenAI embeddings, through limits, cache and the ledger", "createEmbedding",
        {"type": "object", "required": ["model", "input"],
         "properties": {"model": {"type": "string", "minLength": 1}}},
        sse=False),
    "/v1/models": {"get": {
        "summary": "The models this organization can reach", "operationId": "listModels",
        "responses": {"200": {"description": "Model list", **_JSON_OBJECT},
                      **error_responses(401, 403)}}},
    "/v1/models/{model_id}": {"get": {
        "summary": "One model this organization can reach", "operationId": "retrieveModel",
        "parameters": [{"name": "model_id", "in": "path", "required": True,
                        "schema": {"type": "string"}}],
        "responses": {"200": {"description": "The model", **_JSON_OBJECT},
                      **error_responses(401, 403, 404)}}},
}


def build(*path_sets: dict[str, Any]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for ps in (SERVICE_PATHS, V1_PATHS, *path_sets):
        for path, ops in ps.items():
            paths.setdefault(path, {}).update(ops)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Cognitude", "version": __version__,
                 "description": "The OpenAI-compatible endpoints (/v1) and the management "
                                "API: organizations, keys, provider credentials, limits, "
                                "cache settings and analytics. Errors use the OpenAI "
                                "envelope."},
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR_SCHEMA},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "An organization's API key (cog-...), or the "
                                          "operator key on /admin endpoints"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
        "security": [{"bearer": []}, {"apiKey": []}],
    }


def endpoint(doc: dict[str, Any]) -> Callable[[Request], Awaitable[Response]]:
    """A route function serving ``doc``, serialised once at app construction."""
    body = orjson.dumps(doc)

    async def openapi_json(request: Request) -> Response:
        return Response(body, media_type="application/json")

    return openapi_json
