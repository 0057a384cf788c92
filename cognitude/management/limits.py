"""An org's rate limits: ``GET|PUT /rate-limits/config``, ``GET /rate-limits/usage`` and the
operator's ``POST /rate-limits/reset``; plus the small helpers the management modules share.

Decisions:
- An org's key sets its own limits, each window at most up to its *ceiling*: what the
  operator granted it, else the config default. Without this, open registration plus a
  shared provider key would give anyone unmetered use of the operator's key. ``null`` from
  an org returns a limit to its ceiling (for an org never granted anything: the default).
- The operator raises (or lowers) an org with the same ``PUT`` and the operator key, naming
  ``organization_id``: each value given becomes the org's limit *and* its ceiling (up to
  ``MAX_LIMIT``); ``null`` returns both to the default. So an org granted 1000 rpm may
  lower itself to 500 and later return to 1000, never above.
- After merging the given fields with the stored ones the windows must nest
  (minute <= hour <= day), else 400: a day limit below the hour limit is a typo, not a plan.
  Read, check and write happen in one transaction on the locked row, so two concurrent
  changes (an org lowering its hour, the operator lowering its ceiling) cannot interleave
  into a state neither would have been allowed to write.
- The row is updated, then ``org:<id>`` is published, so the next request on every replica
  resolves the key again and the gate sees the new limits. ``requests_per_*`` keep their
  meaning (the limit; NULL: the default), so the hot path's key lookup reads them unchanged.
- Usage is read from the gate's own Redis hashes by ``lua/limits_usage.lua`` (read-only), so
  ``used`` is the very count the gate compares with the limit, not a second bookkeeping that
  could drift. ``limit`` is the org's effective limit (override, else config default).
- Reset deletes the org's three limiter hashes and every one of its keys' own windows
  (Postgres keys, revoked ones included, and its static keys from config): the next request
  starts from zero on all of them.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection
from typing import Any

import asyncpg
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cognitude.config import Config
from cognitude.errors import (
    AuthenticationError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
)
from cognitude.gate import keys
from cognitude.identity.invalidation import publish
from cognitude.management.common import (
    db_errors,
    error_responses,
    field,
    json_body,
    json_response,
    pool,
    redis_errors,
    reject_unknown,
    state,
)
from cognitude.management.guards import require_admin, require_key

MAX_LIMIT = 10**9
MAX_ORG_ID_LEN = 200
WINDOWS = (("minute", "requests_per_minute"), ("hour", "requests_per_hour"),
           ("day", "requests_per_day"))
_LIMIT_FIELDS = frozenset(col for _, col in WINDOWS)
# limit column → the column holding its ceiling (migration 007; NULL: the config default)
CEILINGS = {"requests_per_minute": "ceiling_per_minute", "requests_per_hour": "ceiling_per_hour",
            "requests_per_day": "ceiling_per_day"}
# Per-key windows deleted per DEL by reset (a few KiB of command; one slot, the org's tag).
_DEL_BATCH = 1000

# ---- shared by the management modules ----------------------------------------------------


def check_nested(values: dict[str, int | None], given: Collection[str]) -> None:
    """400 unless the windows that are set nest (minute <= hour <= day). The field blamed is
    the smaller window when the request gave it, else the larger one."""
    present = [(col, v) for _, col in WINDOWS if (v := values.get(col)) is not None]
    for (small, low), (large, high) in itertools.pairwise(present):
        if low > high:
            raise InvalidRequest(
                f"Windows must nest: `{small}` ({low}) is above `{large}` ({high}).",
                param=small if small in given else large)



def _is_operator(request: Request) -> bool:
    try:
        require_admin(request)
    except AuthenticationError:
        return False
    return True


# ---- routes ------------------------------------------------------------------------------


def _defaults(cfg: Config) -> dict[str, int]:
    rl = cfg.rate_limits
    return {"requests_per_minute": rl.requests_per_minute,
            "requests_per_hour": rl.requests_per_hour, "requests_per_day": rl.requests_per_day}


def _effective(cfg: Config, row: Any) -> dict[str, int]:
    return {col: (row[col] if row is not None and row[col] is not None else default)
            for col, default in _defaults(cfg).items()}


def _ceilings(cfg: Config, row: Any) -> dict[str, int]:
    return {col: (row[CEILINGS[col]] if row is not None and row[CEILINGS[col]] is not None
                  else default) for col, default in _defaults(cfg).items()}


def _view(cfg: Config, row: Any) -> dict[str, Any]:
    return {**_effective(cfg, row), "ceilings": _ceilings(cfg, row)}


_COLUMN_NAMES = (*(col for _, col in WINDOWS), *CEILINGS.values())
_COLUMNS = ", ".join(_COLUMN_NAMES)
_SELECT = f"SELECT {_COLUMNS} FROM rate_limit_configs WHERE org_id = $1"
_UPDATE = (f"UPDATE rate_limit_configs SET ({_COLUMNS}) = ($2, $3, $4, $5, $6, $7),"
           f" updated_at = now() WHERE org_id = $1 RETURNING {_COLUMNS}")


def _apply(cfg: Config, stored: dict[str, int | None], given: dict[str, int | None], *,
           operator: bool) -> dict[str, int | None]:
    """The row after the change (limit and ceiling columns), or 400/403 naming a field."""
    row = dict(stored)
    defaults = _defaults(cfg)
    for col, value in given.items():
        granted = stored[CEILINGS[col]]
        if operator:
            row[col] = row[CEILINGS[col]] = value
        elif value is None:
            row[col] = granted  # back to the ceiling (NULL: the default)
        elif value > (ceiling := granted if granted is not None else defaults[col]):
            raise PermissionDenied(
                f"`{col}` may be at most {ceiling} (this organization's ceiling); raising it "
                "needs the operator key.", param=col, code="limit_above_ceiling")
        else:
            row[col] = value
    check_nested({col: row[col] if row[col] is not None else defaults[col]
                  for _, col in WINDOWS}, given)
    return row


async def get_limits(request: Request) -> Response:
    info = await require_key(request)
    st = state(request)
    with db_errors():
        row = await pool(st).fetchrow(_SELECT, info.org_id)
    return json_response(_view(st.cfg, row))


async def put_limits(request: Request) -> Response:
    st = state(request)
    # Who is calling decides what is allowed, and is settled before the body is read.
    info = None if _is_operator(request) else await require_key(request)
    doc = await json_body(request)
    reject_unknown(doc, _LIMIT_FIELDS | {"organization_id"})
    if info is None:
        org_id: str = field(doc, "organization_id", str, max_len=MAX_ORG_ID_LEN)
    elif "organization_id" in doc:
        raise PermissionDenied("`organization_id` needs the operator key; an organization's "
                               "key sets its own limits without it.", param="organization_id",
                               code="operator_key_required")
    else:
        org_id = info.org_id
    given = {col: field(doc, col, int, required=False, min_value=1, max_value=MAX_LIMIT,
                        nullable=True) for _, col in WINDOWS if col in doc}
    if not given:
        raise InvalidRequest("Give at least one of: " + ", ".join(c for _, c in WINDOWS) + ".")
    with db_errors():
        async with pool(st).acquire() as conn, conn.transaction():
            try:
                await conn.execute("INSERT INTO rate_limit_configs (org_id) VALUES ($1)"
                                   " ON CONFLICT (org_id) DO NOTHING", org_id)
            except asyncpg.ForeignKeyViolationError:
                raise NotFound("No such organization.", param="organization_id") from None
            stored = dict(await conn.fetchrow(_SELECT + " FOR UPDATE", org_id))
            new = _apply(st.cfg, stored, given, operator=info is None)
            row = await conn.fetchrow(_UPDATE, org_id, *(new[c] for c in _COLUMN_NAMES))
    await publish(st.redis, st.keys, f"org:{org_id}")
    return json_response(_view(st.cfg, row))


async def get_usage(request: Request) -> Response:
    info = await require_key(request)
    st = state(request)
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
    st = state(request)
    doc = await json_body(request)
    reject_unknown(doc, {"organization_id"})
    org_id = field(doc, "organization_id", str, max_len=MAX_ORG_ID_LEN)
    with db_errors():
        exists = await pool(st).fetchval("SELECT 1 FROM organizations WHERE id = $1", org_id)
    if exists is None:
        raise NotFound("No such organization.", param="organization_id")
    with db_errors():
        key_ids = [r["id"] for r in await pool(st).fetch(
            "SELECT id FROM api_keys WHERE org_id = $1", org_id)]
    # Static keys (config.toml) are named as KeyCache names them.
    key_ids += [f"static:{digest[:12]}" for digest, sk in st.secrets.static_key_hashes.items()
                if sk.org == org_id]
    names = [*keys.limiter_keys(org_id),
             *(k for key_id in key_ids for k in keys.key_limiter_keys(org_id, key_id))]
    with redis_errors():
        for i in range(0, len(names), _DEL_BATCH):
            await st.redis.delete(*names[i:i + _DEL_BATCH])
    return json_response({"organization_id": org_id, "reset": True})


ROUTES: list[Route] = [
    Route("/rate-limits/config", get_limits, methods=["GET"]),
    Route("/rate-limits/config", put_limits, methods=["PUT"]),
    Route("/rate-limits/usage", get_usage, methods=["GET"]),
    Route("/rate-limits/reset", reset_limits, methods=["POST"]),
]

_LIMIT = {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}
_LIMITS = {c: _LIMIT for _, c in WINDOWS}
_CONFIG = {"type": "object", "additionalProperties": False,
           "required": [*_LIMITS, "ceilings"],
           "properties": {**_LIMITS, "ceilings": {
               "type": "object", "additionalProperties": False, "required": list(_LIMITS),
               "properties": _LIMITS,
               "description": "How far the organization's own key may raise each limit: "
                              "what the operator granted, else the config default."}}}
_PUT_BODY = {
    "type": "object", "additionalProperties": False,
    # At least one limit; organization_id alone changes nothing.
    "anyOf": [{"required": [c]} for _, c in WINDOWS],
    "properties": {
        **{c: {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_LIMIT}
           for _, c in WINDOWS},
        "organization_id": {"type": "string", "minLength": 1, "maxLength": MAX_ORG_ID_LEN,
                            "description": "Operator key only: the organization to set. "
                                           "An organization's key sets its own (403)."}}}
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
        "put": {"summary": "Change any of this organization's rate limits, up to its ceilings",
                "description": (
                    "With an organization's key: each limit at most its ceiling (403 "
                    "`limit_above_ceiling` above it); null returns a limit to its ceiling. "
                    "With the operator key and `organization_id`: each value given becomes "
                    "that organization's limit and ceiling; null returns both to the default. "
                    "Either way the windows must nest (minute <= hour <= day), else 400."),
                "operationId": "putRateLimits",
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": _PUT_BODY}}},
                "responses": {"200": _json(_CONFIG, "The new effective limits"),
                              **error_responses(400, 401, 403, 404, 413, 503)}},
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
