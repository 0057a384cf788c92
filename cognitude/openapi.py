"""``GET /openapi.json``: the management API described as OpenAPI 3.1.

Each routes module exports ``OPENAPI_PATHS`` next to its ``ROUTES`` (the description lives
beside the code it describes); this module merges them, adds the service endpoints and the
shared components, and serves the result. The OpenAI-compatible endpoints (``/v1/...``) are
OpenAI's own API and are not re-described here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from . import __version__

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
            413: "Body too large", 429: "Rate limited", 503: "Dependency unavailable"}

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


def build(*path_sets: dict[str, Any]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for ps in (SERVICE_PATHS, *path_sets):
        for path, ops in ps.items():
            paths.setdefault(path, {}).update(ops)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Cognitude management API", "version": __version__,
                 "description": "Organizations, keys, provider credentials, limits, cache "
                                "settings and analytics. Errors use the OpenAI envelope."},
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
