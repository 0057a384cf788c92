"""Postgres: the pool factory and the migration runner (``cognitude migrate``).

Migrations are the numbered ``migrations/NNN_name.sql`` files, applied in order, each in
its own transaction, under an advisory lock so that replicas starting together apply each
file exactly once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

log = logging.getLogger("cognitude.db")

_T = TypeVar("_T")

# Any failure of a query: refused by the server, the connection broken, timed out.
DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
# Postgres unreachable (as opposed to a query it refused): a retryable 503, not a 500 or 400.
DB_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError)

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


async def create_pool(dsn: str, min_size: int, max_size: int, reset: Any = None,
                      command_timeout: float | None = None) -> asyncpg.Pool:
    """``command_timeout`` (seconds) cancels any query of the pool that runs longer."""
    return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, reset=reset,
                                     command_timeout=command_timeout)


async def no_reset(conn: asyncpg.Connection) -> None:
    """For pools whose queries leave no session state (no LISTEN, locks, SET, cursors)."""


async def bounded(pool: asyncpg.Pool, timeout_s: float,
                  work: Callable[[asyncpg.Connection], Awaitable[_T]]) -> _T:
    """``work(conn)`` on a pooled connection, all of it (the wait for a connection included)
    cut off after ``timeout_s`` with ``TimeoutError``.

    asyncpg's own timeouts are not enough on a stalled server: after a timeout it sends the
    server a cancel request and, when the connection goes back to the pool, waits for the
    server to confirm it - forever, if the server is the thing that stalled. A connection
    whose work did not finish is terminated instead (the pool opens a fresh one later).
    """
    conn: asyncpg.Connection | None = None
    try:
        async with asyncio.timeout(timeout_s):
            conn = await pool.acquire()
            return await work(conn)
    except BaseException:
        if conn is not None:
            conn.terminate()
        raise
    finally:
        if conn is not None:
            await pool.release(conn)
