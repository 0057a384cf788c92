"""An org's response-cache settings: ``GET|PUT /cache/config``.

Decisions:
- Three settings (``enabled``, ``ttl_s``, ``only_deterministic``); each falls back to the
  config's ``[cache]`` value while the org has not set it, and ``null`` returns it there.
- ``ttl_s`` is bounded by ``cache.max_ttl_s``, the same bound as a client's
  ``X-Cognitude-Cache-TTL``.
- A change publishes ``org:<id>``: the key cache holds these settings, so every replica
  re-reads them on the org's next request.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cognitude.config import CacheConfig, Config
from cognitude.errors import InvalidRequest
from cognitude.identity.invalidation import publish
from cognitude.management.common import field, json_body, json_response, reject_unknown, state
from cognitude.management.guards import require_key
from cognitude.management.limits import db_errors, error_responses, pool

_FIELDS = ("enabled", "ttl_s", "only_deterministic")

_SELECT = "SELECT enabled, ttl_s, only_deterministic FROM cache_configs WHERE org_id = $1"
# $5..$7: whether the field was given; a field left out keeps its stored value.
_UPSERT = """
INSERT INTO cache_configs (org_id, enabled, ttl_s, only_deterministic)
VALUES ($1, $2, $3, $4)
ON CONFLICT (org_id) DO UPDATE SET
  enabled = CASE WHEN $5 THEN EXCLUDED.enabled ELSE cache_configs.enabled END,
  ttl_s = CASE WHEN $6 THEN EXCLUDED.ttl_s ELSE cache_configs.ttl_s END,
  only_deterministic = CASE WHEN $7 THEN EXCLUDED.only_deterministic
                            ELSE cache_configs.only_deterministic END,
  updated_at = now()
RETURNING enabled, ttl_s, only_deterministic
"""


async def org_cache_settings(pg: asyncpg.Pool, org_id: str
                             ) -> tuple[bool | None, int | None, bool | None] | None:
    """(enabled, ttl_s, only_deterministic) the org set, ``None`` per unset setting; ``None``
    when it set nothing. For the key-cache lookup; ``effective`` applies the defaults."""
    row = await pg.fetchrow(_SELECT, org_id)
    if row is None:
        return None
    return row["enabled"], row["ttl_s"], row["only_deterministic"]


def effective(defaults: CacheConfig,
              row: tuple[bool | None, int | None, bool | None] | None) -> dict[str, Any]:
    enabled, ttl_s, only_det = row if row is not None else (None, None, None)
    return {
        "enabled": defaults.enabled if enabled is None else enabled,
        "ttl_s": defaults.ttl_s if ttl_s is None else ttl_s,
        "only_deterministic": defaults.only_deterministic if only_det is None else only_det,
    }



async def get_cache_config(request: Request) -> Response:
    info = await require_key(request)
    st = state(request)
    with db_errors():
        row = await org_cache_settings(pool(st), info.org_id)
    return json_response(effective(st.cfg.cache, row))


async def put_cache_config(request: Request) -> Response:
    info = await require_key(request)
    st = state(request)
    doc = await json_body(request)
    reject_unknown(doc, frozenset(_FIELDS))
    if not doc:
        raise InvalidRequest("Give at least one of: " + ", ".join(_FIELDS) + ".")
    enabled = field(doc, "enabled", bool, required=False, nullable=True)
    ttl_s = field(doc, "ttl_s", int, required=False, min_value=1,
                  max_value=st.cfg.cache.max_ttl_s, nullable=True)
    only_det = field(doc, "only_deterministic", bool, required=False, nullable=True)
    given = [name in doc for name in _FIELDS]
    with db_errors():
        row = await pool(st).fetchrow(_UPSERT, info.org_id, enabled, ttl_s, only_det, *given)
    await publish(st.redis, st.keys, f"org:{info.org_id}")
    return json_response(effective(st.cfg.cache, tuple(row)))


ROUTES: list[Route] = [
    Route("/cache/config", get_cache_config, methods=["GET"]),
    Route("/cache/config", put_cache_config, methods=["PUT"]),
]


def openapi_paths(cfg: Config | None = None) -> dict[str, Any]:
    """OpenAPI 3.1 paths; ``ttl_s``'s maximum is ``cache.max_ttl_s`` of ``cfg`` (default
    config when omitted), the bound the handler enforces."""
    max_ttl = (cfg.cache if cfg is not None else CacheConfig()).max_ttl_s
    settings = {"type": "object", "additionalProperties": False, "required": list(_FIELDS),
                "properties": {"enabled": {"type": "boolean"},
                               "ttl_s": {"type": "integer", "minimum": 1, "maximum": max_ttl},
                               "only_deterministic": {"type": "boolean"}}}
    body = {"type": "object", "additionalProperties": False, "minProperties": 1,
            "properties": {"enabled": {"type": ["boolean", "null"]},
                           "ttl_s": {"type": ["integer", "null"], "minimum": 1,
                                     "maximum": max_ttl},
                           "only_deterministic": {"type": ["boolean", "null"]}}}
    ok = {"content": {"application/json": {"schema": settings}}}
    return {"/cache/config": {
        "get": {"summary": "This organization's effective cache settings",
                "operationId": "getCacheConfig",
                "responses": {"200": {"description": "Effective settings", **ok},
                              **error_responses(401, 503)}},
        "put": {"summary": "Change any of this organization's cache settings (null: default)",
                "operationId": "putCacheConfig",
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": body}}},
                "responses": {"200": {"description": "The new effective settings", **ok},
                              **error_responses(400, 401, 413, 503)}},
    }}


OPENAPI_PATHS: dict[str, Any] = openapi_paths()
