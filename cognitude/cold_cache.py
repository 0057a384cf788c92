"""The cold cache tier (DESIGN §7): the same entries as Redis, kept in Postgres.

Read on a Redis miss when ``cache.cold_tier = true`` (a Redis restart, eviction or a new
replica's empty Redis does not throw away paid-for answers) and back-filled into Redis.
Written off the response path in batches: ``put`` appends to a bounded in-memory queue
and a background task upserts every ``flush_interval_ms``. Unlike the usage ledger, cache
entries are not precious: when the queue is full or Postgres is down they are dropped and
counted, never spilled. Expired rows are purged by the same task.

Stored values are the exact bytes Redis holds (flag byte + body, see ``cache_key``), keyed by
the full org-namespaced Redis key, so isolation between orgs is the same as in Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from datetime import UTC, datetime, timedelta

import asyncpg

log = logging.getLogger("cognitude.cold_cache")

_UPSERT_SQL = """
INSERT INTO response_cache (cache_key, org_id, value, expires_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::timestamptz[])
ON CONFLICT (cache_key) DO UPDATE
SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at, created_at = now()
"""
_GET_SQL = ("SELECT value, expires_at FROM response_cache"
            " WHERE cache_key = $1 AND expires_at > now()")
# Purge in bounded slices so one purge never holds locks on a large table for long.
_PURGE_SQL = """
DELETE FROM response_cache WHERE cache_key IN (
    SELECT cache_key FROM response_cache WHERE expires_at < now() LIMIT 5000)
"""
_PURGE_EVERY_S = 60.0
_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class ColdCache:
    """Batched write-through and bounded-latency reads of ``response_cache``."""

    def __init__(self, pool: asyncpg.Pool, *, flush_interval_ms: int, queue_max: int,
                 read_timeout_ms: int) -> None:
        self._pool = pool
        self._interval = flush_interval_ms / 1000
        self._queue_max = queue_max
        self._read_timeout = read_timeout_ms / 1000
        self._queue: deque[tuple[str, str, bytes, datetime]] = deque()
        self._task: asyncio.Task[None] | None = None
        self.entries_written = 0
        self.entries_dropped = 0
        self.read_errors = 0

    def put(self, key: str, org_id: str, value: bytes, ttl_s: int) -> None:
        """Queue an entry (synchronous, never blocks: called right after a response)."""
        if len(self._queue) >= self._queue_max:
            self.entries_dropped += 1
            return
        self._queue.append((key, org_id, value, datetime.now(UTC) + timedelta(seconds=ttl_s)))

    async def get(self, key: str) -> tuple[bytes, int] | None:
        """(value, remaining TTL in seconds) or None. A slow or absent Postgres is a miss:
        the upstream answers instead, so this read never costs more than its timeout."""
        try:
            row = await self._pool.fetchrow(_GET_SQL, key, timeout=self._read_timeout)
        except _DB_ERRORS:
            self.read_errors += 1
            return None
        if row is None:
            return None
        ttl = int((row["expires_at"] - datetime.now(UTC)).total_seconds())
        return (bytes(row["value"]), ttl) if ttl >= 1 else None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cognitude-cold-cache")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(*_DB_ERRORS):
            await asyncio.wait_for(self._flush(), 5)

    async def _run(self) -> None:
        next_purge = time.monotonic() + _PURGE_EVERY_S
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._flush()
                if time.monotonic() >= next_purge:
                    next_purge = time.monotonic() + _PURGE_EVERY_S
                    await self._pool.execute(_PURGE_SQL)
            except _DB_ERRORS as exc:
                log.warning("cold cache write failed (%s); entries dropped", type(exc).__name__)
            except Exception:  # noqa: BLE001
                # A background loop must outlive a bug in one round; the trace is logged.
                log.exception("cold cache round failed")

    async def _flush(self) -> None:
        if not self._queue:
            return
        batch = list(self._queue)
        self._queue.clear()
        latest: dict[str, tuple[str, str, bytes, datetime]] = {e[0]: e for e in batch}
        cols = list(zip(*latest.values(), strict=True))
        try:
            await self._pool.execute(_UPSERT_SQL, *cols)
        except _DB_ERRORS:
            self.entries_dropped += len(latest)
            raise
        self.entries_written += len(latest)
