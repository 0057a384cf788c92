"""The cold cache tier (DESIGN §7): the same entries as Redis, kept in Postgres.

Read on a Redis miss when ``cache.cold_tier = true`` (a Redis restart, eviction or a new
replica's empty Redis does not throw away paid-for answers) and back-filled into Redis.
Written off the response path in batches: ``put`` appends to an in-memory queue bounded in
entries and in bytes (a slow Postgres must not grow the process by the size of every answer
it is sent meanwhile) and a background task upserts every ``flush_interval_ms``. Unlike the
usage ledger, cache entries are not precious: when the queue is full or Postgres is down they
are dropped and counted, never spilled. Expired rows are purged by the same task.

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

from cognitude.db import DB_ERRORS

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
# Does the org have live entries older than its Redis epoch (i.e. ones Redis lost)? Asked once
# per org per epoch, then again this often (pre-epoch entries expire, and reads stop then).
_MAY_HOLD_SQL = """
SELECT EXISTS (SELECT 1 FROM response_cache
               WHERE org_id = $1 AND created_at < $2 AND expires_at > now())
"""
_RECHECK_S = 60.0


class ColdCache:
    """Batched write-through and bounded-latency reads of ``response_cache``."""

    def __init__(self, pool: asyncpg.Pool, *, flush_interval_ms: int, queue_max: int,
                 read_timeout_ms: int, queue_max_bytes: int = 64 << 20) -> None:
        self._pool = pool
        self._interval = flush_interval_ms / 1000
        self._queue_max = queue_max
        self._queue_max_bytes = queue_max_bytes
        self._queue_bytes = 0  # sum of the queued values' lengths
        self._read_timeout = read_timeout_ms / 1000
        self._queue: deque[tuple[str, str, bytes, datetime]] = deque()
        self._task: asyncio.Task[None] | None = None
        # org → (epoch it was checked against, may hold entries Redis lost, checked at)
        self._orgs: dict[str, tuple[int, bool, float]] = {}
        self.entries_written = 0
        self.entries_dropped = 0
        self.read_errors = 0
        self.reads = 0

    def put(self, key: str, org_id: str, value: bytes, ttl_s: int) -> None:
        """Queue an entry (synchronous, never blocks: called right after a response)."""
        if (len(self._queue) >= self._queue_max
                or self._queue_bytes + len(value) > self._queue_max_bytes):
            self.entries_dropped += 1
            return
        self._queue_bytes += len(value)
        self._queue.append((key, org_id, value, datetime.now(UTC) + timedelta(seconds=ttl_s)))

    @property
    def queue_bytes(self) -> int:
        return self._queue_bytes

    async def may_hold(self, org_id: str, epoch: int | None) -> bool:
        """Whether a Redis miss for ``org_id`` is worth a cold read.

        Every entry is written to Redis before the cold tier, so entries written after the
        org's Redis epoch began are in Redis unless they expired (then they are expired here
        too) or were evicted. Only entries older than the epoch - from a Redis dataset that
        was lost (restart without persistence, failover, flush) - can turn a Redis miss into
        a hit. Without an epoch (not asked, Redis down) the read happens as before.
        """
        if epoch is None:
            return True
        now = time.monotonic()
        known = self._orgs.get(org_id)
        if known is not None and known[0] == epoch and now - known[2] < _RECHECK_S:
            return known[1]
        # Redis's clock (the epoch) against Postgres's (created_at): skew between the two only
        # costs efficiency - a few more reads, or a missed chance of a cold hit - never a
        # wrong answer, since every read still checks the entry's own expiry.
        since = datetime.fromtimestamp(epoch / 1000, UTC)
        try:
            holds = bool(await self._pool.fetchval(_MAY_HOLD_SQL, org_id, since,
                                                   timeout=self._read_timeout * 4))
        except DB_ERRORS:
            self.read_errors += 1
            return False
        if len(self._orgs) >= 100_000:
            self._orgs.clear()
        self._orgs[org_id] = (epoch, holds, now)
        return holds

    async def get(self, key: str) -> tuple[bytes, int] | None:
        """(value, remaining TTL in seconds) or None. A slow or absent Postgres is a miss:
        the upstream answers instead, so this read never costs more than its timeout."""
        self.reads += 1
        try:
            row = await self._pool.fetchrow(_GET_SQL, key, timeout=self._read_timeout)
        except DB_ERRORS:
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
        with contextlib.suppress(*DB_ERRORS):
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
            except DB_ERRORS as exc:
                log.warning("cold cache write failed (%s); entries dropped", type(exc).__name__)
            except Exception:  # noqa: BLE001
                # A background loop must outlive a bug in one round; the trace is logged.
                log.exception("cold cache round failed")

    async def _flush(self) -> None:
        if not self._queue:
            return
        batch = list(self._queue)
        self._queue.clear()
        self._queue_bytes = 0
        latest: dict[str, tuple[str, str, bytes, datetime]] = {e[0]: e for e in batch}
        cols = list(zip(*latest.values(), strict=True))
        try:
            await self._pool.execute(_UPSERT_SQL, *cols)
        except DB_ERRORS:
            self.entries_dropped += len(latest)
            raise
        self.entries_written += len(latest)
