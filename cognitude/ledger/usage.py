"""Usage ledger writer (DESIGN §8): every request's record reaches ``usage_log`` exactly once.

Path of a record: ``submit`` (synchronous, hot path) appends it to a bounded deque → the
flush task COPYs batches of ``flush_rows`` (or whatever is queued every ``flush_interval_ms``)
with ``copy_records_to_table`` fed by a generator that hands the event loop back every 100
rows → ``usage_log``.

Nothing is dropped on the way:
- queue full → the record is appended to a local spill file instead (``cognitude.spill``);
- COPY fails → retried with capped exponential backoff; retries go through the idempotent
  staging-table path, because a failed COPY may still have committed (the connection can die
  after COMMIT, before the reply); still failing → the batch is spilled and fsynced;
- spill files are replayed (at ``start``, then periodically) through a temp staging table and
  ``INSERT ... SELECT ... WHERE NOT EXISTS ... ON CONFLICT DO NOTHING``, so replaying a file
  twice (crash between COMMIT and unlink) inserts nothing the second time; a file is deleted
  only after its rows are committed;
- ``close(deadline_s)`` drains within the deadline, then spills whatever is left.
Rows are dropped only when the spill directory reaches ``spill_max_bytes`` (a bound that
protects the host's disk); that is logged at ERROR and counted in ``rows_dropped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import asyncpg

from cognitude.db import DB_ERRORS
from cognitude.ledger.spill import SpillLog, decode_rows

log = logging.getLogger("cognitude.usage")


class UsageRecord(NamedTuple):
    """One request's ledger row. Field order IS the ``usage_log`` column order: a record goes
    to COPY as-is (a NamedTuple is a tuple, so no per-row conversion on the write path)."""

    request_id: str
    ts: datetime  # timezone-aware (UTC)
    org_id: str | None
    key_id: str | None
    endpoint: str
    model_requested: str | None
    model_used: str | None
    provider: str | None
    route: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int | None
    baseline_cost_micros: int | None
    cache_status: str | None
    status_code: int
    error_type: str | None
    stream: bool
    latency_ms: float
    upstream_ms: float | None
    overhead_ms: float | None
    end_user: str | None
    attempts: int | None = None  # upstream calls (retries, fallbacks); 0: none (a hit)
    complexity: str | None = None  # simple | medium | complex (chat requests)
    prompt_hash: str | None = None  # ledger.prompt_facts: the request's cache digest
    prefix_hash: str | None = None  # ... of everything before the latest user message
    prefix_tokens: int | None = None
    max_tokens: int | None = None


COLUMNS: tuple[str, ...] = UsageRecord._fields
_COLS = ", ".join(COLUMNS)
# Handing the loop back every 100 rows keeps one COPY's encoding slices well under 1 ms
# (a plain 10k-row list stalls the loop 17-31 ms, DESIGN §8).
_PACE_ROWS = 100
_STAGING_SQL = ("CREATE TEMP TABLE usage_staging (LIKE usage_log INCLUDING DEFAULTS)"
                " ON COMMIT DROP")
# NOT EXISTS: skip rows already in the ledger (any ts). ON CONFLICT: a concurrent replayer
# of the same row commits first → wait and skip instead of failing. DISTINCT ON: a row
# present twice in one staging load (two spill files) is inserted once.
_MERGE_SQL = (
    f"INSERT INTO usage_log ({_COLS}) SELECT DISTINCT ON (s.request_id) "
    + ", ".join(f"s.{c}" for c in COLUMNS)
    + " FROM usage_staging s WHERE NOT EXISTS"
    " (SELECT 1 FROM usage_log u WHERE u.request_id = s.request_id)"
    " ORDER BY s.request_id, s.ts ON CONFLICT (request_id, ts) DO NOTHING"
)
# Errors that mean "this data will never go in" (bad value, constraint): retrying cannot
# help, so replay isolates the refused rows and sets them aside as *.rejected for a human.
# asyncpg's client-side encoders raise plain TypeError/ValueError/OverflowError from COPY.
_DATA_ERRORS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError,
                TypeError, ValueError, OverflowError)
# Everything a COPY can fail with while Postgres is down, restarting or slow.


async def _paced(rows: Iterable[tuple[object, ...]]) -> AsyncIterator[tuple[object, ...]]:
    for i, row in enumerate(rows, 1):
        # A plain tuple, not the UsageRecord: asyncpg's encoder indexes exact tuples
        # directly, but a tuple subclass's items one by one through __getitem__ (measured:
        # 34k -> 18k instructions per 21-column row).
        yield tuple(row)
        if i % _PACE_ROWS == 0:
            await asyncio.sleep(0)


class UsageWriter:
    """Batches usage records into Postgres; see the module docstring for the guarantees."""

    def __init__(self, pool: asyncpg.Pool, *, flush_rows: int = 500,
                 flush_interval_ms: int = 200, queue_max: int = 100_000,
                 spill_dir: str | os.PathLike[str], spill_file_bytes: int = 4 << 20,
                 spill_max_bytes: int = 1 << 30, retry_attempts: int = 4,
                 retry_base_s: float = 0.05, retry_max_s: float = 2.0,
                 op_timeout_s: float = 30.0, replay_interval_s: float = 5.0) -> None:
        self._pool = pool
        self._flush_rows = flush_rows
        self._interval_s = flush_interval_ms / 1000
        self._queue_max = queue_max
        self._spill = SpillLog(Path(spill_dir), spill_file_bytes, spill_max_bytes, COLUMNS)
        self._retry_attempts = retry_attempts
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._op_timeout_s = op_timeout_s
        self._replay_interval_s = replay_interval_s
        self._queue: deque[UsageRecord] = deque()
        self._wakeup = asyncio.Event()
        self._inflight: list[UsageRecord] | None = None
        self._task: asyncio.Task[None] | None = None
        self._replay_task: asyncio.Task[None] | None = None
        self._replay_lock = asyncio.Lock()
        self._closing = False
        self._db_ok = True  # for one log line per outage, not one per batch
        self.rows_written = 0
        self.flush_errors = 0
        self.rows_spilled = 0
        self.rows_replayed = 0
        self.rows_rejected = 0  # set aside in *.rejected files (whole file counts 1)

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def rows_dropped(self) -> int:
        return self._spill.rows_dropped

    def submit(self, record: UsageRecord) -> None:
        """Hot path: never awaits, never blocks on Postgres. After ``close`` (or when the
        queue is full) the record goes to the spill file; the next ``start`` replays it."""
        if len(self._queue) >= self._queue_max or self._closing:
            # Full (or shutting down): durable on disk instead of unbounded memory.
            self.rows_spilled += self._spill.append((record,))
            return
        self._queue.append(record)
        if len(self._queue) >= self._flush_rows and not self._wakeup.is_set():
            self._wakeup.set()

    async def start(self, replay_timeout_s: float = 5.0) -> None:
        """Replays leftover spill files (bounded wait), then starts the background tasks."""
        try:
            async with asyncio.timeout(replay_timeout_s):
                await self.replay()
        except TimeoutError:
            log.warning("usage spill replay did not finish within %.1fs at start;"
                        " continuing in the background", replay_timeout_s)
        self._task = asyncio.create_task(self._run(), name="usage-writer")
        self._replay_task = asyncio.create_task(self._replay_loop(), name="usage-replay")

    async def close(self, deadline_s: float = 5.0) -> None:
        """Drains the queue within ``deadline_s``, then spills (and fsyncs) what is left."""
        self._closing = True
        self._wakeup.set()
        if self._replay_task is not None:
            self._replay_task.cancel()
            await asyncio.wait({self._replay_task})
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=deadline_s)
            if not done:
                self._task.cancel()
                await asyncio.wait({self._task})
        if self._inflight:  # cancelled mid-write: it may or may not have committed; replay dedups
            self.rows_spilled += self._spill.append(self._inflight)
            self._inflight = None
        if self._queue:
            rest = list(self._queue)
            self._queue.clear()
            self.rows_spilled += self._spill.append(rest)
            log.warning("usage writer closed with %d rows unwritten: spilled to %s",
                        len(rest), self._spill.dir)
        self._spill.rotate()
        await self._spill.sync()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + self._interval_s  # when everything queued must be flushed
        while not (self._closing and not self._queue):
            if len(self._queue) < self._flush_rows and not self._closing:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(due):
                        await self._wakeup.wait()
            self._wakeup.clear()
            # Woken by size: write full batches only (the remainder waits for its batch or
            # its interval). Interval due or closing: write everything.
            drain_all = self._closing or loop.time() >= due
            try:
                while len(self._queue) >= self._flush_rows or (drain_all and self._queue):
                    n = min(self._flush_rows, len(self._queue))
                    await self._write_batch([self._queue.popleft() for _ in range(n)])
                await self._spill.sync()  # overflow rows appended by submit since last tick
            except Exception:  # outermost loop boundary: a bug must not stop the ledger
                log.exception("usage writer loop error")
                if self._inflight:
                    self.rows_spilled += self._spill.append(self._inflight)
                    self._inflight = None
                await asyncio.sleep(self._interval_s)
            if drain_all:
                due = loop.time() + self._interval_s

    async def _write_batch(self, batch: list[UsageRecord]) -> None:
        self._inflight = batch
        delay = self._retry_base_s
        for attempt in range(self._retry_attempts):
            try:
                # Attempt 0: plain COPY (fast). Later attempts: idempotent staging merge,
                # since the failed attempt may have committed after all.
                await self._copy(batch, dedup=attempt > 0)
            except asyncpg.UniqueViolationError:
                # Some of these rows are already in (an earlier, "failed" COPY did commit):
                # the dedup merge, right away, is exactly the fix.
                continue
            except _DATA_ERRORS as exc:
                # A record Postgres refuses (a bug upstream of the writer): retrying cannot
                # help; spill now, and replay isolates the bad row from its neighbours.
                self.flush_errors += 1
                log.error("usage batch of %d refused (%s: %s); spilled for replay",
                          len(batch), type(exc).__name__, exc)
                break
            except DB_ERRORS as exc:
                self.flush_errors += 1
                if self._db_ok:
                    self._db_ok = False
                    log.warning("usage flush failed (%s: %s); retrying, then spilling",
                                type(exc).__name__, exc)
                if attempt + 1 < self._retry_attempts:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._retry_max_s)
                continue
            if not self._db_ok:
                self._db_ok = True
                log.info("usage flush recovered")
            self.rows_written += len(batch)
            self._inflight = None
            return
        self.rows_spilled += self._spill.append(batch)
        self._inflight = None
        await self._spill.sync()

    async def _copy(self, rows: Iterable[tuple[object, ...]], *, dedup: bool) -> int:
        """COPY ``rows``; with ``dedup``, via the staging table (returns rows inserted)."""
        t = self._op_timeout_s
        async with self._pool.acquire(timeout=t) as conn:
            if not dedup:
                status = await conn.copy_records_to_table(
                    "usage_log", records=_paced(rows), columns=COLUMNS, timeout=t)
                return int(status.rsplit(" ", 1)[-1])
            async with conn.transaction():
                await conn.execute(_STAGING_SQL, timeout=t)
                await conn.copy_records_to_table(
                    "usage_staging", records=_paced(rows), columns=COLUMNS, timeout=t)
                status = await conn.execute(_MERGE_SQL, timeout=t)
        return int(status.rsplit(" ", 1)[-1])

    async def _replay_loop(self) -> None:
        while True:
            await asyncio.sleep(self._replay_interval_s)
            try:
                await self.replay()
            except Exception:  # outermost loop boundary: keep replaying after a bug
                log.exception("usage spill replay error")

    async def replay(self) -> int:
        """Loads every replayable spill file into ``usage_log`` exactly once; returns rows
        inserted. Stops early (files kept) while Postgres is unreachable."""
        async with self._replay_lock:
            inserted, ok = await self._replay_closed()
            # Only now roll the file being appended to: while Postgres is down this would
            # just cut the spill into many small files.
            if ok and self._spill.has_open_data:
                self._spill.rotate()
                await self._spill.sync()
                more, ok = await self._replay_closed()
                inserted += more
            return inserted

    async def _replay_closed(self) -> tuple[int, bool]:
        inserted = 0
        for path in self._spill.closed_files():
            n = await self._replay_file(path)
            if n is None:
                return inserted, False
            inserted += n
        return inserted, True

    async def _replay_file(self, path: Path) -> int | None:
        async with self._spill.claim(path) as claimed:
            if claimed is None:
                return 0  # gone, or locked by its writer (or another replayer)
            size, lines = claimed
            bad = [0]
            try:
                rows = [row async for row in _paced(decode_rows(lines, bad, COLUMNS))]
            except (KeyError, TypeError, ValueError, IndexError) as exc:  # incl. JSONDecodeError
                return self._reject(path, size, [], f"unreadable header: {exc}")
            try:
                n, rejected = await self._load(rows)
            except DB_ERRORS as exc:
                if self._db_ok:  # once per outage; the flusher resets it on recovery
                    self._db_ok = False
                    log.warning("usage spill replay postponed (%s: %s); %s kept",
                                type(exc).__name__, exc, path.name)
                return None
            if rejected:
                self._reject(path, 0, rejected, "rows Postgres refuses")
            # Committed: only now may the file go. A crash before this unlink means the
            # file is replayed again later, and the merge then inserts nothing.
            self._spill.remove(path, size)
            self.rows_replayed += n
            if bad[0]:
                log.warning("usage spill %s: %d unreadable lines skipped", path.name, bad[0])
            log.info("usage spill %s replayed: %d rows inserted", path.name, n)
            return n

    async def _load(self, rows: list[tuple[object, ...]]) -> tuple[int, list[tuple[object, ...]]]:
        """Merges ``rows``; returns (inserted, rows Postgres refuses). A bad value fails the
        whole COPY, so the load is bisected down to the offending rows: one poison record
        costs O(log n) extra round trips, and its good neighbours still go in. Halves commit
        separately, which is safe because the merge is idempotent."""
        try:
            return await self._copy(rows, dedup=True), []
        except _DATA_ERRORS:
            if len(rows) <= 1:
                return 0, rows
        mid = len(rows) // 2
        n1, bad1 = await self._load(rows[:mid])
        n2, bad2 = await self._load(rows[mid:])
        return n1 + n2, bad1 + bad2

    def _reject(self, path: Path, size: int, rows: list[tuple[object, ...]], why: str) -> int:
        """Sets aside a file that cannot be loaded (``rows`` empty: the whole file, renamed)
        or just its refused ``rows``, as ``*.rejected`` for a human; never replayed."""
        target = self._spill.set_aside(path, size, rows)
        self.rows_rejected += len(rows) or 1
        log.error("usage spill %s: %s; %s rows set aside in %s for inspection",
                  path.name, why, len(rows) or "all", target.name)
        return 0
