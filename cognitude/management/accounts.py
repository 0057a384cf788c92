"""Accounts: self-service registration, an org's own API keys, and operator org administration.

    POST   /auth/register                       name, email, password → org + first key
    POST   /auth/keys                           (org key) new key, shown once
    GET    /auth/keys                           (org key) metadata only, never key or hash
    DELETE /auth/keys/{key_id}                  (org key) revoke; 404 for another org's key
    POST   /admin/organizations                 (operator) create org + first key
    GET    /admin/organizations                 (operator) list orgs
    POST   /admin/organizations/{org_id}/disable|enable   (operator)

The org always comes from the caller's key, never from a parameter, and a key id of another
org answers 404 exactly like a missing one, so ids leak nothing across orgs. Every change
that the hot path caches (revocation, disabling) is published through ``invalidation`` so
every replica applies it within a second. Revoking the key that authenticates the request
is allowed: it is the only way to retire a leaked last key.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import wraps
from typing import Any

import asyncpg
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..api import field, json_body, json_response, reject_unknown
from ..auth import hash_key, new_key, require_admin, require_key
from ..errors import (
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ProxyError,
    ServiceUnavailable,
)
from ..invalidation import publish
from ..state import AppState
from .accounts_openapi import (
    EMAIL_MAX,
    EMAIL_PATTERN,
    EXPIRES_AT_MAX_LEN,
    EXPIRES_DAYS_MAX,
    KEY_NAME_MAX,
    LIMIT_FIELDS,
    LIMIT_MAX,
    NAME_MAX,
    OPENAPI_PATHS,
    PASSWORD_MAX,
    PASSWORD_MIN,
)
from .passwords import hash_password, verify_password

__all__ = ["ROUTES", "OPENAPI_PATHS", "Conflict", "hash_password", "verify_password"]


class Conflict(ProxyError):
    """409: the resource already exists (an email already registered)."""

    status = 409
    type = "invalid_request_error"
    code = "conflict"


# ---------------------------------------------------------------- validation helpers

# Deliberately simple (one @, no whitespace or control characters, a dot in the domain):
# deliverability is the mail server's business, this only catches typos and junk. The same
# pattern is published in the OpenAPI schema.
_EMAIL_RE = re.compile(EMAIL_PATTERN)


def _text(doc: dict[str, Any], name: str, max_len: int, *, required: bool = True,
          default: str = "") -> str:
    value = field(doc, name, str, required=required, max_len=max_len, nullable=not required)
    if value is None:
        return default
    return str(value).strip()


def _email(doc: dict[str, Any], *, required: bool) -> str | None:
    value = field(doc, "email", str, required=required, max_len=EMAIL_MAX,
                  nullable=not required)
    if value is None:
        return None
    email = str(value).strip().lower()
    if not _EMAIL_RE.match(email):
        raise InvalidRequest("`email` must be an email address like name@example.com.",
                             param="email")
    return email


def _password(doc: dict[str, Any]) -> str:
    value: str = field(doc, "password", str, max_len=PASSWORD_MAX)
    if len(value) < PASSWORD_MIN:
        raise InvalidRequest(f"`password` must be at least {PASSWORD_MIN} characters.",
                             param="password")
    return value


def _opt_int(doc: dict[str, Any], name: str, max_value: int) -> int | None:
    """An optional positive integer. JSON Schema counts 3.0 as an integer (and the published
    schema says "integer"), so an integral float is accepted as that integer."""
    value = doc.get(name)
    if isinstance(value, float) and value.is_integer():
        doc = {name: int(value)}
    result: int | None = field(doc, name, int, required=False, nullable=True, min_value=1,
                               max_value=max_value)
    return result


def _expiry(doc: dict[str, Any]) -> datetime | None:
    at = field(doc, "expires_at", str, required=False, max_len=EXPIRES_AT_MAX_LEN,
               nullable=True)
    days = _opt_int(doc, "expires_in_days", EXPIRES_DAYS_MAX)
    now = datetime.now(UTC)
    if at is not None and days is not None:
        raise InvalidRequest("Give either `expires_at` or `expires_in_days`, not both.",
                             param="expires_in_days")
    if days is not None:
        return now + timedelta(days=days)
    if at is None:
        return None
    try:
        parsed = datetime.fromisoformat(at)
        # A datetime without an offset is taken as UTC; converting here (not in the driver)
        # turns an out-of-range result into a 400 rather than a 500.
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        parsed = parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidRequest(
            "`expires_at` must be an ISO-8601 datetime such as 2030-01-31T00:00:00Z.",
            param="expires_at") from None
    if parsed <= now:
        raise InvalidRequest("`expires_at` must be in the future.", param="expires_at")
    return parsed


def _path_id(request: Request, name: str, what: str) -> str:
    value: str = request.path_params[name]
    # Ids are uuid text (or short config names); anything else cannot exist, and NUL would
    # make Postgres raise instead of answer "no row".
    if not value or len(value) > 200 or "\x00" in value:
        raise NotFound(f"No {what} with id {value[:200]!r}.")
    return value


# ---------------------------------------------------------------- plumbing

def _state(request: Request) -> AppState:
    return request.app.state.cognitude


def _pool(st: AppState) -> asyncpg.Pool:
    if st.pg is None:
        raise ServiceUnavailable("The management API needs Postgres, which is not configured.")
    return st.pg


Handler = Callable[[Request], Awaitable[Response]]


def _db_errors(handler: Handler) -> Handler:
    """Postgres unreachable → 503 (retryable) instead of the catch-all 500."""

    @wraps(handler)
    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except (OSError, TimeoutError, asyncpg.InterfaceError,
                asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError) as exc:
            raise ServiceUnavailable(
                f"Database unavailable ({type(exc).__name__}); retry shortly.") from None

    return wrapper


_KEY_COLUMNS = ("id, name, prefix, created_at, expires_at, revoked_at, "
                "requests_per_minute, requests_per_hour, requests_per_day")
# Enough of the key to recognise it in a list ("cog-" + 8 characters = 48 of 256 bits).
_PREFIX_LEN = 12


async def _insert_key(conn: asyncpg.Connection, org_id: str, key: str, name: str,
                      expires_at: datetime | None = None,
                      limits: tuple[int | None, int | None, int | None] = (None, None, None),
                      ) -> asyncpg.Record:
    """Store a key's SHA-256 (never the key itself) and return its metadata row."""
    return await conn.fetchrow(
        "INSERT INTO api_keys (org_id, key_hash, prefix, name, expires_at,"
        " requests_per_minute, requests_per_hour, requests_per_day)"
        f" VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {_KEY_COLUMNS}",
        org_id, hash_key(key), key[:_PREFIX_LEN], name, expires_at, *limits)


def _key_view(row: asyncpg.Record) -> dict[str, Any]:
    now = datetime.now(UTC)
    expires = row["expires_at"]
    return {
        "object": "api_key",
        "id": row["id"], "name": row["name"], "prefix": row["prefix"],
        "created_at": row["created_at"], "expires_at": expires,
        "revoked_at": row["revoked_at"],
        "active": row["revoked_at"] is None and (expires is None or expires > now),
        **{f: row[f] for f in LIMIT_FIELDS},
    }


def _duplicate_email() -> Conflict:
    return Conflict("An organization with this email already exists.", param="email")


# ---------------------------------------------------------------- self-service

@_db_errors
async def register(request: Request) -> Response:
    st = _state(request)
    if not st.cfg.auth.allow_registration:
        raise PermissionDenied("Registration is disabled on this deployment; ask the operator "
                               "for an API key.", code="registration_disabled")
    doc = await json_body(request)
    reject_unknown(doc, {"name", "email", "password"})
    name = _text(doc, "name", NAME_MAX)
    email = _email(doc, required=True)
    password = _password(doc)
    pool = _pool(st)
    # Cheap early answer for the common duplicate, before paying for the KDF; the unique
    # index below still settles a race between two registrations.
    if await pool.fetchval("SELECT 1 FROM organizations WHERE lower(email) = $1", email):
        raise _duplicate_email()
    pw_hash = await hash_password(password)
    key = new_key()
    async with pool.acquire() as conn, conn.transaction():
        try:
            org_id = await conn.fetchval(
                "INSERT INTO organizations (name, email, password_hash) VALUES ($1, $2, $3)"
                " RETURNING id", name, email, pw_hash)
        except asyncpg.UniqueViolationError:
            raise _duplicate_email() from None
        await _insert_key(conn, org_id, key, "default")
    return json_response({"organization_id": org_id, "api_key": key}, 201)


@_db_errors
async def create_key(request: Request) -> Response:
    info = await require_key(request)
    doc = await json_body(request)
    reject_unknown(doc, {"name", "expires_at", "expires_in_days", *LIMIT_FIELDS})
    name = _text(doc, "name", KEY_NAME_MAX, required=False)
    expires_at = _expiry(doc)
    rpm, rph, rpd = (_opt_int(doc, f, LIMIT_MAX) for f in LIMIT_FIELDS)
    key = new_key()
    async with _pool(_state(request)).acquire() as conn:
        try:
            row = await _insert_key(conn, info.org_id, key, name, expires_at,
                                    (rpm, rph, rpd))
        except asyncpg.ForeignKeyViolationError:
            # A static (config) key whose org row is gone: nothing to attach the key to.
            raise NotFound("The caller's organization does not exist.") from None
    return json_response({**_key_view(row), "api_key": key}, 201)


@_db_errors
async def list_keys(request: Request) -> Response:
    info = await require_key(request)
    rows = await _pool(_state(request)).fetch(
        f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE org_id = $1 ORDER BY created_at, id",
        info.org_id)
    return json_response({"object": "list", "data": [_key_view(r) for r in rows]})


@_db_errors
async def revoke_key(request: Request) -> Response:
    info = await require_key(request)
    key_id = _path_id(request, "key_id", "API key")
    st = _state(request)
    # The org filter is the isolation: another org's id matches no row, so it is a 404
    # exactly like an id that never existed. COALESCE keeps the first revocation time.
    key_hash = await _pool(st).fetchval(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now())"
        " WHERE id = $1 AND org_id = $2 RETURNING key_hash", key_id, info.org_id)
    if key_hash is None:
        raise NotFound(f"No API key with id {key_id!r}.")
    await publish(st.redis, st.keys, f"key:{key_hash}")
    return json_response({"id": key_id, "object": "api_key", "revoked": True})


# ---------------------------------------------------------------- operator

# key_count: keys that would authenticate now (neither revoked nor expired).
_ORG_COLUMNS = """
o.id, o.name, o.email, o.disabled, o.created_at,
(SELECT count(*) FROM api_keys k WHERE k.org_id = o.id AND k.revoked_at IS NULL
   AND (k.expires_at IS NULL OR k.expires_at > now())) AS key_count
"""


def _org_view(row: asyncpg.Record) -> dict[str, Any]:
    return {"object": "organization", "id": row["id"], "name": row["name"],
            "email": row["email"], "disabled": row["disabled"],
            "created_at": row["created_at"], "key_count": row["key_count"]}


@_db_errors
async def admin_create_org(request: Request) -> Response:
    require_admin(request)
    doc = await json_body(request)
    reject_unknown(doc, {"name", "email"})
    name = _text(doc, "name", NAME_MAX)
    email = _email(doc, required=False)
    key = new_key()
    async with _pool(_state(request)).acquire() as conn, conn.transaction():
        try:
            org_id = await conn.fetchval(
                "INSERT INTO organizations (name, email) VALUES ($1, $2) RETURNING id",
                name, email)
        except asyncpg.UniqueViolationError:
            raise _duplicate_email() from None
        await _insert_key(conn, org_id, key, "default")
    return json_response({"organization_id": org_id, "api_key": key}, 201)


@_db_errors
async def admin_list_orgs(request: Request) -> Response:
    require_admin(request)
    rows = await _pool(_state(request)).fetch(
        f"SELECT {_ORG_COLUMNS} FROM organizations o ORDER BY o.created_at, o.id")
    return json_response({"object": "list", "data": [_org_view(r) for r in rows]})


async def _set_disabled(request: Request, disabled: bool) -> Response:
    require_admin(request)
    org_id = _path_id(request, "org_id", "organization")
    st = _state(request)
    row = await _pool(st).fetchrow(
        f"UPDATE organizations o SET disabled = $2 WHERE o.id = $1 RETURNING {_ORG_COLUMNS}",
        org_id, disabled)
    if row is None:
        raise NotFound(f"No organization with id {org_id!r}.")
    # Disabling: the org's cached resolutions are dropped everywhere. Enabling: its keys
    # were cached as *unknown* (negative entries carry no org), so only a full flush lets
    # them back in at once; re-enabling is a rare operator action, the flush costs one
    # Postgres lookup per active key per replica.
    await publish(st.redis, st.keys, f"org:{org_id}" if disabled else "all")
    return json_response(_org_view(row))


@_db_errors
async def admin_disable_org(request: Request) -> Response:
    return await _set_disabled(request, True)


@_db_errors
async def admin_enable_org(request: Request) -> Response:
    return await _set_disabled(request, False)


ROUTES: list[Route] = [
    Route("/auth/register", register, methods=["POST"]),
    Route("/auth/keys", create_key, methods=["POST"]),
    Route("/auth/keys", list_keys, methods=["GET"]),
    Route("/auth/keys/{key_id}", revoke_key, methods=["DELETE"]),
    Route("/admin/organizations", admin_create_org, methods=["POST"]),
    Route("/admin/organizations", admin_list_orgs, methods=["GET"]),
    Route("/admin/organizations/{org_id}/disable", admin_disable_org, methods=["POST"]),
    Route("/admin/organizations/{org_id}/enable", admin_enable_org, methods=["POST"]),
]
