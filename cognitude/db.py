"""Postgres: the pool factory and the migration runner (``cognitude migrate``).

Migrations are the numbered ``migrations/NNN_name.sql`` files, applied in order, each in
its own transaction, under an advisory lock so that replicas starting together apply each
file exactly once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import asyncpg

log = logging.getLogger("cognitude.db")

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# pg_advisory_lock key for the migration runner: an arbitrary constant ("cogmigr" in ASCII).
MIGRATION_LOCK = 0x636F676D696772


def migration_files() -> list[tuple[int, Path]]:
    files = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        version = int(path.name.split("_", 1)[0])
        files.append((version, path))
    return files


async def migrate(conn: asyncpg.Connection) -> list[int]:
    """Apply pending migrations; returns the versions applied now."""
    applied_now = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, path in migration_files():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text(encoding="utf-8"))
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            log.info("applied migration %s", path.name)
            applied_now.append(version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return applied_now


async def create_pool(dsn: str, min_size: int, max_size: int,
                      reset: Any = None) -> asyncpg.Pool:
    return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, reset=reset)


async def no_reset(conn: asyncpg.Connection) -> None:
    """For pools whose queries leave no session state (no LISTEN, locks, SET, cursors)."""
