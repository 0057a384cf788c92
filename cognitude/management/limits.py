"""An org's rate limits: ``GET|PUT /rate-limits/config``, ``GET /rate-limits/usage`` and the
operator's ``POST /rate-limits/reset``; plus the small helpers the management modules share.

Decisions:
- The org always comes from the caller's key; only the operator names an org (reset).
- ``PUT`` takes any subset of the three limits; ``null`` returns one to the config default.
  The row is upserted, then ``org:<id>`` is published, so the next request on every replica
  resolves the key again and the gate sees the new limits.
- Usage is read from the gate's own Redis hashes by ``lua/limits_usage.lua`` (read-only), so
  ``used`` is the very count the gate compares with the limit, not a second bookkeeping that
  could drift. ``limit`` is the org's effective limit (override, else config default).
- Reset deletes the org's three limiter hashes: the next request starts from zero.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import asyncpg
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import keys
from ..api import field, json_body, json_response, reject_unknown
from ..auth import require_admin, require_key
from ..config import Config
from ..errors import InvalidRequest, NotFound, ServiceUnavailable
from ..invalidation import publish
from ..state import AppState

MAX_LIMIT = 10**9
MAX_ORG_ID_LEN = 200
WINDOWS = (("minute", "requests_per_minute"), ("hour", "requests_per_hour"),
           ("day", "requests_per_day"))
_LIMIT_FIELDS = frozenset(col for _, col in WINDOWS)

# ---- shared by the management modules ----------------------------------------------------


def pool(st: AppState) -> asyncpg.Pool:
    if st.pg is None:
        raise ServiceUnavailable("This endpoint needs Postgres, which is not configured.")
    return st.pg


@contextlib.contextmanager
def db_errors() -> Iterator[None]:
    """Postgres unreachable → 503 (retryable), not an opaque 500."""
    try:
        yield
    except (OSError, TimeoutError, asyncpg.InterfaceError,
            asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError):
        raise ServiceUnavailable("The database is unavailable; retry shortly.") from None


@contextlib.contextmanager
def redis_errors() -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError):
        raise ServiceUnavailable("Redis is unavailable; retry shortly.") from None


_ERROR_TEXT = {400: "Invalid request", 401: "Missing or invalid API key",
               403: "Forbidden", 404: "Not found", 413: "Request body too large",
               503: "A backing service is unavailable"}


def error_responses(*statuses: int) -> dict[str, Any]:
    """OpenAPI responses for our error statuses, all the OpenAI error envelope."""
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {str(s): {"description": _ERROR_TEXT[s], "content": ref} for s in statuses}


def _state(request: Request) -> AppState:
    return request.app.state.cognitude


# ---- routes ------------------------------------------------------------------------------


def _effective(cfg: Config, row: Any) -> dict[str, int]:
    rl = cfg.rate_limits
    defaults = {"requests_per_minute": rl.requests_per_minute,
                "requests_per_hour": rl.requests_per_hour,
                "requests_per_day": rl.requests_per_day}
    return {col: (row[col] if row is not None and row[col] is not None else default)
            for col, default in defaults.items()}


_SELECT = ("SELECT requests_per_minute, requests_per_hour, requests_per_day "
           "FROM rate_limit_configs WHERE org_id = $1")
# $5..$7: whether the field was given; a field left out keeps its stored value.
_UPSERT = """
INSERT INTO rate_limit_configs (org_id, requests_per_minute, requests_per_hour,
                                requests_per_day)
VALUES ($1, $2, $3, $4)
ON CONFLICT (org_id) DO UPDATE SET
  requests_per_minute = CASE WHEN $5 THEN EXCLUDED.requests_per_minute
                             ELSE rate_limit_configs.requests_per_minute END,
  requests_per_hour = CASE WHEN $6 THEN EXCLUDED.requests_per_hour
                           ELSE rate_limit_configs.requests_per_hour END,
  requests_per_day = CASE WHEN $7 THEN EXCLUDED.requests_per_day
                          ELSE rate_limit_configs.requests_per_day END,
  updated_at = now()
RETURNING requests_per_minute, requests_per_hour, requests_per_day
"""


async def get_limits(request: Request) -> Response:
    info = await require_key(request)
    st = _state(request)
    with db_errors():
        row = await pool(st).fetchrow(_SELECT, info.org_id)
    return json_response(_effective(st.cfg, row))


async def put_limits(request: Request) -> Response:
    info = await require_key(request)
    st = _state(request)
    doc = await json_body(request)
    reject_unknown(doc, _LIMIT_FIELDS)
    if not doc:
        raise InvalidRequest("Give at least one of: " + ", ".join(c for _, c in WINDOWS) + ".")
    values = {col: field(doc, col, int, required=False, min_value=1, max_value=MAX_LIMIT,
                         nullable=True) for _, col in WINDOWS}
    given = [col in doc for _, col in WINDOWS]
    with db_errors():
        row = await pool(st).fetchrow(_UPSERT, info.org_id, *values.values(), *given)
    await publish(st.redis, st.keys, f"org:{info.org_id}")
    return json_response(_effective(st.cfg, row))


async def get_usage(request: Request) -> Response:
    info = await require_key(request)
    st = _state(request)
    limits: tuple[int, ...]
    if info.key_id.startswith("static:"):
        # Keys declared in config.toml carry their own limits and never read Postgres.
        limits = (info.limits.minute, info.limits.hour, info.limits.day)
    else:
        # The org's limits as stored, not the key's: the hashes read are the org's windows
        # (a key may be narrowed further by limits of its own).
        with db_errors():
            row = await pool(st).fetchrow(_SELECT, info.org_id)
        eff = _effective(st.cfg, row)
        limits = tuple(eff[col] for _, col in WINDOWS)
    with redis_errors():
        windows = await st.limits_usage.read(info.org_id)
    out = {}
    for (name, _), w, limit in zip(WINDOWS, windows, limits, strict=True):
        out[name] = {"used": w.used, "limit": limit, "remaining": max(0, limit - w.used),
                     "reset": -(-w.reset_ms // 1000)}
    return json_response(out)


async def reset_limits(request: Request) -> Response:
    require_admin(request)
    st = _state(request)
    doc = await json_body(request)
    reject_unknown(doc, {"organization_id"})
    org_id = field(doc, "organization_id", str, max_len=MAX_ORG_ID_LEN)
    with db_errors():
        exists = await pool(st).fetchval("SELECT 1 FROM organizations WHERE id = $1", org_id)
    if exists is None:
        raise NotFound("No such organization.", param="organization_id")
    with redis_errors():
        await st.redis.delete(*keys.limiter_keys(org_id))
    return json_response({"organization_id": org_id, "reset": True})


ROUTES: list[Route] = [
    Route("/rate-limits/config", get_limits, methods=["GET"]),
    Route("/rate-limits/config", put_limits, methods=["PUT"]),
    Route("/rate-limits/usage", get_usage, methods=["GET"]),
    Route("/rate-limits/reset", reset_limits, methods=["POST"]),
]

_LIMIT = {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}
_CONFIG = {"type": "object", "additionalProperties": False,
           "required": [c for _, c in WINDOWS],
           "properties": {c: _LIMIT for _, c in WINDOWS}}
_WINDOW = {"type": "object", "additionalProperties": False,
           "required": ["used", "limit", "remaining", "reset"],
           "properties": {"used": {"type": "integer", "minimum": 0},
                          "limit": {"type": "integer", "minimum": 0},
                          "remaining": {"type": "integer", "minimum": 0},
                          "reset": {"type": "integer", "minimum": 0,
                                    "description": "Seconds until `used` next decreases."}}}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


OPENAPI_PATHS: dict[str, Any] = {
    "/rate-limits/config": {
        "get": {"summary": "This organization's effective rate limits",
                "operationId": "getRateLimits",
                "responses": {"200": _json(_CONFIG, "Effective limits"),
                              **error_responses(401, 503)}},
        "put": {"summary": "Change any of this organization's rate limits (null: default)",
                "operationId": "putRateLimits",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": False, "minProperties": 1,
                    "properties": {c: {"type": ["integer", "null"], "minimum": 1,
                                       "maximum": MAX_LIMIT} for _, c in WINDOWS}}}}},
                "responses": {"200": _json(_CONFIG, "The new effective limits"),
                              **error_responses(400, 401, 413, 503)}},
    },
    "/rate-limits/usage": {"get": {
        "summary": "Requests counted in each window right now (the gate's own state)",
        "operationId": "getRateLimitUsage",
        "responses": {"200": _json({"type": "object", "additionalProperties": False,
                                    "required": ["minute", "hour", "day"],
                                    "properties": {"minute": _WINDOW, "hour": _WINDOW,
                                                   "day": _WINDOW}}, "Usage per window"),
                      **error_responses(401, 503)}}},
    "/rate-limits/reset": {"post": {
        "summary": "Operator: clear an organization's rate-limit counters",
        "operationId": "resetRateLimits",
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "additionalProperties": False, "required": ["organization_id"],
            "properties": {"organization_id": {"type": "string", "minLength": 1,
                                               "maxLength": MAX_ORG_ID_LEN}}}}}},
        "responses": {"200": _json({"type": "object", "additionalProperties": False,
                                    "required": ["organization_id", "reset"],
                                    "properties": {"organization_id": {"type": "string"},
                                                   "reset": {"const": True}}}, "Reset"),
                      **error_responses(400, 401, 404, 413, 503)}}},
}
