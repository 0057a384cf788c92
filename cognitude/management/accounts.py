"""Accounts: self-service registration and login, an org's own API keys, and operator org
administration.

    POST   /auth/register                       name, email, password → org + first key
    POST   /auth/login                          email, password → a new key for the org
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

Registration and login need no key, so they are throttled per client address (and login
also per email) in Redis, before any password KDF runs (``throttle``). Login answers an
unknown email, a wrong password and an account without a password (created by the
operator) with the same 401 after the same one KDF run, so neither the answer nor its
timing tells which emails are registered.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cognitude.config.secrets import sha256_hex
from cognitude.db import DB_UNREACHABLE
from cognitude.errors import (
    AuthenticationError,
    NotFound,
    OrganizationDisabled,
    PermissionDenied,
    ProxyError,
)
from cognitude.gate import keys
from cognitude.identity.apikeys import hash_key, new_key
from cognitude.identity.invalidation import publish
from cognitude.identity.keycache import DISABLED_MESSAGE
from cognitude.identity.passwords import check_password, hash_password, verify_password
from cognitude.management import throttle
from cognitude.management.account_fields import (
    email_field,
    expiry_field,
    opt_int_field,
    password_field,
    path_id,
    text_field,
)
from cognitude.management.accounts_openapi import (
    KEY_NAME_MAX,
    LIMIT_FIELDS,
    LIMIT_MAX,
    NAME_MAX,
    OPENAPI_PATHS,
    PASSWORD_MAX,
)
from cognitude.management.common import (
    field,
    json_body,
    json_response,
    pool,
    reject_unknown,
    state,
    with_db_errors,
)
from cognitude.management.guards import require_admin, require_key
from cognitude.management.limits import check_nested
from cognitude.state import AppState

__all__ = ["ROUTES", "OPENAPI_PATHS", "Conflict", "hash_password", "verify_password"]


class Conflict(ProxyError):
    """409: the resource already exists (an email already registered)."""

    status = 409
    type = "invalid_request_error"
    code = "conflict"


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


async def _throttle(st: AppState, key: str, limit: int, what: str) -> None:
    await throttle.take(st.redis, key, limit, what, fail_open=st.cfg.redis.fail_open)


# ---------------------------------------------------------------- self-service

@with_db_errors
async def register(request: Request) -> Response:
    st = state(request)
    if not st.cfg.auth.allow_registration:
        raise PermissionDenied("Registration is disabled on this deployment; ask the operator "
                               "for an API key.", code="registration_disabled")
    # Counted before the body is read: malformed and duplicate attempts use up a try too,
    # and once an address is over its limit none of its requests reaches the KDF.
    await _throttle(st, keys.register_throttle_key(throttle.client_address(request)),
                    st.cfg.auth.register_per_hour, "registration attempts from this address")
    doc = await json_body(request)
    reject_unknown(doc, {"name", "email", "password"})
    name = text_field(doc, "name", NAME_MAX)
    email = email_field(doc, required=True)
    password = password_field(doc)
    db = pool(st)
    # Cheap early answer for the common duplicate, before paying for the KDF; the unique
    # index below still settles a race between two registrations.
    if await db.fetchval("SELECT 1 FROM organizations WHERE lower(email) = $1", email):
        raise _duplicate_email()
    pw_hash = await hash_password(password)
    key = new_key()
    async with db.acquire() as conn, conn.transaction():
        try:
            org_id = await conn.fetchval(
                "INSERT INTO organizations (name, email, password_hash) VALUES ($1, $2, $3)"
                " RETURNING id", name, email, pw_hash)
        except asyncpg.UniqueViolationError:
            raise _duplicate_email() from None
        await _insert_key(conn, org_id, key, "default")
    return json_response({"organization_id": org_id, "api_key": key}, 201)


_BAD_LOGIN = "Invalid email or password."


@with_db_errors
async def login(request: Request) -> Response:
    """A new key for the org whose email and password these are (allowed even when
    registration is off: the account exists already)."""
    st = state(request)
    limit = st.cfg.auth.login_per_hour
    await _throttle(st, keys.login_throttle_key(throttle.client_address(request)), limit,
                    "login attempts from this address")
    doc = await json_body(request)
    reject_unknown(doc, {"email", "password", "key_name"})
    email = email_field(doc, required=True)
    assert email is not None  # required=True
    # No minimum length here: a password is checked against what was stored, and a later
    # stricter registration rule must not lock out older accounts.
    password: str = field(doc, "password", str, max_len=PASSWORD_MAX)
    key_name = text_field(doc, "key_name", KEY_NAME_MAX, required=False) or "login"
    # Each attempt takes one of the email's failures before the KDF and a right password
    # gives it back, so even concurrent guesses never get more than `limit` wrong tries.
    failures = keys.login_failures_key(sha256_hex(email))
    await _throttle(st, failures, limit, "failed logins for this email")
    db = pool(st)
    try:
        org = await db.fetchrow("SELECT id, password_hash, disabled FROM organizations"
                                  " WHERE lower(email) = $1", email)
    except DB_UNREACHABLE:
        await throttle.refund(st.redis, failures)  # nothing was guessed
        raise
    if not await check_password(org["password_hash"] if org is not None else None, password):
        raise AuthenticationError(_BAD_LOGIN, code="invalid_credentials")
    await throttle.refund(st.redis, failures)
    if org["disabled"]:
        raise OrganizationDisabled(DISABLED_MESSAGE)
    key = new_key()
    async with db.acquire() as conn:
        try:
            row = await _insert_key(conn, org["id"], key, key_name)
        except asyncpg.ForeignKeyViolationError:
            # The org was deleted between the lookup and the insert.
            raise AuthenticationError(_BAD_LOGIN, code="invalid_credentials") from None
    return json_response({"organization_id": org["id"], "api_key": key, "key_id": row["id"]},
                         201)


@with_db_errors
async def create_key(request: Request) -> Response:
    info = await require_key(request)
    doc = await json_body(request)
    reject_unknown(doc, {"name", "expires_at", "expires_in_days", *LIMIT_FIELDS})
    name = text_field(doc, "name", KEY_NAME_MAX, required=False)
    expires_at = expiry_field(doc)
    rpm, rph, rpd = (opt_int_field(doc, f, LIMIT_MAX) for f in LIMIT_FIELDS)
    check_nested(dict(zip(LIMIT_FIELDS, (rpm, rph, rpd), strict=True)), LIMIT_FIELDS)
    key = new_key()
    async with pool(state(request)).acquire() as conn:
        try:
            row = await _insert_key(conn, info.org_id, key, name, expires_at,
                                    (rpm, rph, rpd))
        except asyncpg.ForeignKeyViolationError:
            # A static (config) key whose org row is gone: nothing to attach the key to.
            raise NotFound("The caller's organization does not exist.") from None
    return json_response({**_key_view(row), "api_key": key}, 201)


@with_db_errors
async def list_keys(request: Request) -> Response:
    info = await require_key(request)
    rows = await pool(state(request)).fetch(
        f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE org_id = $1 ORDER BY created_at, id",
        info.org_id)
    return json_response({"object": "list", "data": [_key_view(r) for r in rows]})


@with_db_errors
async def revoke_key(request: Request) -> Response:
    info = await require_key(request)
    key_id = path_id(request, "key_id", "API key")
    st = state(request)
    # The org filter is the isolation: another org's id matches no row, so it is a 404
    # exactly like an id that never existed. COALESCE keeps the first revocation time.
    key_hash = await pool(st).fetchval(
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


@with_db_errors
async def admin_create_org(request: Request) -> Response:
    require_admin(request)
    doc = await json_body(request)
    reject_unknown(doc, {"name", "email"})
    name = text_field(doc, "name", NAME_MAX)
    email = email_field(doc, required=False)
    key = new_key()
    async with pool(state(request)).acquire() as conn, conn.transaction():
        try:
            org_id = await conn.fetchval(
                "INSERT INTO organizations (name, email) VALUES ($1, $2) RETURNING id",
                name, email)
        except asyncpg.UniqueViolationError:
            raise _duplicate_email() from None
        await _insert_key(conn, org_id, key, "default")
    return json_response({"organization_id": org_id, "api_key": key}, 201)


@with_db_errors
async def admin_list_orgs(request: Request) -> Response:
    require_admin(request)
    rows = await pool(state(request)).fetch(
        f"SELECT {_ORG_COLUMNS} FROM organizations o ORDER BY o.created_at, o.id")
    return json_response({"object": "list", "data": [_org_view(r) for r in rows]})


async def _set_disabled(request: Request, disabled: bool) -> Response:
    require_admin(request)
    org_id = path_id(request, "org_id", "organization")
    st = state(request)
    row = await pool(st).fetchrow(
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


@with_db_errors
async def admin_disable_org(request: Request) -> Response:
    return await _set_disabled(request, True)


@with_db_errors
async def admin_enable_org(request: Request) -> Response:
    return await _set_disabled(request, False)


ROUTES: list[Route] = [
    Route("/auth/register", register, methods=["POST"]),
    Route("/auth/login", login, methods=["POST"]),
    Route("/auth/keys", create_key, methods=["POST"]),
    Route("/auth/keys", list_keys, methods=["GET"]),
    Route("/auth/keys/{key_id}", revoke_key, methods=["DELETE"]),
    Route("/admin/organizations", admin_create_org, methods=["POST"]),
    Route("/admin/organizations", admin_list_orgs, methods=["GET"]),
    Route("/admin/organizations/{org_id}/disable", admin_disable_org, methods=["POST"]),
    Route("/admin/organizations/{org_id}/enable", admin_enable_org, methods=["POST"]),
]
