"""API keys: their shape, their hash, where a request carries them, and how they are stored.

Keys are ``cog-`` + 43 URL-safe characters (32 random bytes) and stored only as SHA-256 hex
(``hash_key``, the one implementation: the config's static keys and the operator key are
hashed with it too).
"""

from __future__ import annotations

import secrets

import asyncpg

from cognitude.config.secrets import sha256_hex as hash_key

__all__ = ["KEY_PREFIX", "create_org", "hash_key", "new_key", "store_key", "token_from_headers"]


KEY_PREFIX = "cog-"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def token_from_headers(authorization: bytes | None, x_api_key: bytes | None) -> str | None:
    """The key from ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (raw ASGI values)."""
    if authorization is not None:
        scheme, _, token = authorization.partition(b" ")
        token = token.strip()
        if scheme.lower() == b"bearer" and token:
            return token.decode("latin-1")
    if x_api_key is not None:
        key = x_api_key.strip()
        if key:
            return key.decode("latin-1")
    return None


async def create_org(conn: asyncpg.Connection, name: str, org_id: str | None = None) -> str:
    if org_id is None:
        sql = "INSERT INTO organizations (name) VALUES ($1) RETURNING id"
        return str(await conn.fetchval(sql, name))
    await conn.execute(
        "INSERT INTO organizations (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
        org_id,
        name,
    )
    return org_id


async def store_key(conn: asyncpg.Connection, org_id: str, key: str, name: str = "") -> str:
    """Store a key's hash (never the key); returns the key id."""
    return await conn.fetchval(
        "INSERT INTO api_keys (org_id, key_hash, prefix, name) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (key_hash) DO UPDATE SET name = EXCLUDED.name RETURNING id",
        org_id,
        hash_key(key),
        key[:8],
        name,
    )
