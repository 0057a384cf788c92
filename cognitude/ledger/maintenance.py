"""Leader-locked background maintenance (DESIGN §8, §10): daily ``usage_log`` partitions,
retention, and the ``usage_hourly`` rollup that analytics reads instead of raw rows.

One round, every ``interval_s``, on the replica that wins ``pg_try_advisory_lock``:
(a) create day partitions ahead, (b) drop day partitions older than ``retention_days``,
(c) refresh the rollup. Each step fails alone (logged, retried next round).

Rollup guarantee. A refresh recomputes whole hours from raw rows and *replaces* their
rollup rows (groups that vanished are deleted, unchanged rows are not rewritten), so any
re-run is idempotent. The hours it recomputes:
- every hour from ``floor_hour(watermark - lateness)`` on, where ``watermark`` is the start
  of the previous refresh's transaction;
- every hour marked in ``usage_rollup_dirty`` by the statement trigger of migration 003,
  which marks the hour of any inserted row whose ``ts`` is more than 5 minutes older than
  its inserting transaction's start (spill replays, lagging proxy clocks, manual inserts).
A row is therefore in the rollup after the first refresh that starts after its transaction
committed, provided that transaction stayed open less than ``lateness`` - 5 min (10 min by
default; the usage writer's COPYs time out after 30 s): a row the trigger did not mark has
``ts >= tx_start - 5 min``, and any refresh that could miss it started after ``tx_start``
minus that bound. Dirty marks are deleted in the refresh's transaction, so a crash loses
none. Exceptions: hours before the retention horizon are never recomputed (their raw rows
are gone, so a recompute would replace the aggregate with the few late rows left; rollups
outlive raw retention); deleting raw rows is not tracked (recompute such hours by hand).

Refreshers serialize on ``ROLLUP_LOCK`` (global refresh exclusive, the analytics
endpoint's per-org refresh shared + a per-org lock), so a refresh never overwrites a newer
result with one computed from an older snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import asyncpg

from cognitude.db import DB_ERRORS

log = logging.getLogger("cognitude.maintenance")

# pg advisory lock keys: arbitrary constants ("cogmaint" / "cogrollu" in ASCII).
LEADER_LOCK = 0x636F676D61696E74
ROLLUP_LOCK = 0x636F67726F6C6C75
# Class id of the (int4, int4) per-org rollup lock: a separate key space from the above.
ORG_LOCK_CLASS = 0x636F6772
_HOUR = timedelta(hours=1)
_FOREVER = datetime.max.replace(tzinfo=UTC)  # asyncpg encodes this as 'infinity'

# Per-row savings are baseline - cost; when either is unknown (unpriced model) the row counts
# as no saving (baseline := cost), so an unpriced model never shows up as a 100% saving.
_AGG = """
SELECT org_id, date_trunc('hour', ts, 'UTC') AS hour,
       coalesce(model_used, '') AS model_used, coalesce(provider, '') AS provider,
       coalesce(complexity, '') AS complexity, coalesce(route, '') AS route,
       count(*) AS requests,
       coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
       coalesce(sum(completion_tokens), 0) AS completion_tokens,
       coalesce(sum(cost_micros), 0) AS cost_micros,
       coalesce(sum(CASE WHEN cost_micros IS NULL OR baseline_cost_micros IS NULL
                         THEN coalesce(cost_micros, 0) ELSE baseline_cost_micros END), 0)
           AS baseline_cost_micros,
       count(*) FILTER (WHERE cache_status = 'HIT') AS cache_hits
FROM usage_log
WHERE ts >= $1 AND ts < $2 AND org_id IS NOT NULL {org_filter}
GROUP BY 1, 2, 3, 4, 5, 6
"""
_METRICS = ("requests", "prompt_tokens", "completion_tokens", "cost_micros",
            "baseline_cost_micros", "cache_hits")
_KEY = ("org_id", "hour", "model_used", "provider", "complexity", "route")
# Recompute-replace of the hours in [$1, $2) (optionally one org): upsert every group, but
# skip rows whose numbers did not change (no dead tuples for settled hours), and delete
# rollup rows whose group no longer exists in the raw rows.
_REFRESH = f"""
WITH agg AS ({_AGG}),
up AS (
    INSERT INTO usage_hourly AS h ({", ".join(_KEY + _METRICS)})
    SELECT {", ".join(_KEY + _METRICS)} FROM agg
    ON CONFLICT ({", ".join(_KEY)}) DO UPDATE SET
        {", ".join(f"{m} = EXCLUDED.{m}" for m in _METRICS)}
    WHERE ({", ".join(f"h.{m}" for m in _METRICS)})
          IS DISTINCT FROM ({", ".join(f"EXCLUDED.{m}" for m in _METRICS)})
    RETURNING 1
),
gone AS (
    DELETE FROM usage_hourly h
    WHERE h.hour >= $1 AND h.hour < $2 {{org_filter_h}}
      AND NOT EXISTS (SELECT 1 FROM agg a WHERE {" AND ".join(f"a.{k} = h.{k}" for k in _KEY)})
    RETURNING 1
)
SELECT (SELECT count(*) FROM agg) AS groups, (SELECT count(*) FROM up) AS changed,
       (SELECT count(*) FROM gone) AS removed
"""
_REFRESH_ALL = _REFRESH.format(org_filter="", org_filter_h="")
_REFRESH_ORG = _REFRESH.format(org_filter="AND org_id = $3", org_filter_h="AND h.org_id = $3")

# Day partitions as named by cognitude_ensure_usage_partitions (002); anything else
# attached to usage_log (the default partition, a user's own archive table) is left alone.
_DAY_PARTITIONS = r"""
SELECT c.relname, to_date(substr(c.relname, 12), 'YYYYMMDD') AS day
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'usage_log'::regclass
  AND c.relname ~ '^usage_log_p[0-9]{8}$'
  AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
ORDER BY day
"""


def floor_hour(ts: datetime) -> datetime:
    return ts.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _hour_ranges(hours: list[datetime]) -> list[tuple[datetime, datetime]]:
    """Sorted distinct hours → contiguous [lo, hi) ranges (one statement per range)."""
    ranges: list[tuple[datetime, datetime]] = []
    for h in sorted(set(hours)):
        if ranges and ranges[-1][1] == h:
            ranges[-1] = (ranges[-1][0], h + _HOUR)
        else:
            ranges.append((h, h + _HOUR))
    return ranges


@dataclass
class RollupResult:
    hours_from: datetime | None  # start of the open-ended window recomputed
    dirty_hours: int = 0  # late-marked hours recomputed (outside the window)
    skipped_hours: int = 0  # late-marked hours before the retention horizon, ignored
    groups: int = 0
    changed: int = 0
    removed: int = 0

    def add(self, row: asyncpg.Record) -> None:
        self.groups += row["groups"]
        self.changed += row["changed"]
        self.removed += row["removed"]


async def refresh_rollup(conn: asyncpg.Connection, *, lateness_s: float = 900.0,
                         keep_from: datetime | None = None,
                         lock_timeout_s: float = 10.0) -> RollupResult:
    """Global refresh (see the module docstring). ``keep_from``: the retention horizon;
    hours before it are never recomputed. Raises on database errors (rolled back)."""
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_s * 1000)}")
        await conn.execute("SELECT pg_advisory_xact_lock($1)", ROLLUP_LOCK)
        state = await conn.fetchrow(
            "SELECT watermark, now() AS now FROM usage_rollup_state WHERE id FOR UPDATE")
        dirty = [r["hour"] for r in
                 await conn.fetch("DELETE FROM usage_rollup_dirty RETURNING hour")]
        if state["watermark"] is None:
            # First refresh ever: backfill everything (one full scan, once).
            oldest = await conn.fetchval("SELECT min(ts) FROM usage_log WHERE org_id IS NOT NULL")
            lo = floor_hour(oldest if oldest is not None else state["now"])
        else:
            lo = floor_hour(state["watermark"] - timedelta(seconds=lateness_s))
        if keep_from is not None:
            lo = max(lo, keep_from)
        late = [h for h in dirty if h < lo]
        kept = [h for h in late if keep_from is None or h >= keep_from]
        result = RollupResult(lo, dirty_hours=len(set(kept)),
                              skipped_hours=len(set(late) - set(kept)))
        if result.skipped_hours:
            log.warning("usage rollup: %d hour(s) got rows older than the retention horizon;"
                        " their rollup is left as it was", result.skipped_hours)
        for a, b in [*_hour_ranges(kept), (lo, _FOREVER)]:
            result.add(await conn.fetchrow(_REFRESH_ALL, a, b))
        await conn.execute(
            "UPDATE usage_rollup_state SET watermark = $1, refreshed_at = clock_timestamp(),"
            " rounds = rounds + 1 WHERE id", state["now"])
    return result


async def refresh_org(conn: asyncpg.Connection, org_id: str, *, lateness_s: float = 900.0,
                      max_age_s: float = 86_400.0, lock_timeout_s: float = 2.0) -> bool:
    """Recomputes one org's recent hours (those the next global refresh will recompute
    anyway, at most ``max_age_s`` back), so its analytics include rows written seconds
    ago. Cheap: one org's rows of about the last hour, via ``btree(org_id, ts)``.
    Returns False when a global refresh holds the lock longer than ``lock_timeout_s``
    (the caller then serves the rollup as it is)."""
    try:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_s * 1000)}")
            await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", ROLLUP_LOCK)
            await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))",
                               ORG_LOCK_CLASS, org_id)
            state = await conn.fetchrow(
                "SELECT watermark, now() AS now FROM usage_rollup_state WHERE id")
            floor = state["now"] - timedelta(seconds=max_age_s)
            since = max(state["watermark"] or floor, floor)
            lo = floor_hour(since - timedelta(seconds=lateness_s))
            await conn.fetchrow(_REFRESH_ORG, lo, _FOREVER, org_id)
    except asyncpg.LockNotAvailableError:
        return False
    return True


@dataclass
class RoundResult:
    partitions_created: int = 0
    partitions_dropped: list[str] = field(default_factory=list)
    rollup: RollupResult | None = None
    errors: list[str] = field(default_factory=list)


class Maintenance:
    """The background task; ``start()`` in the lifespan, ``await close()`` on shutdown."""

    def __init__(self, pool: asyncpg.Pool, *, interval_s: float = 60.0, days_ahead: int = 7,
                 retention_days: int = 0, lateness_s: float = 900.0,
                 lock_timeout_s: float = 2.0, lock_key: int = LEADER_LOCK) -> None:
        if lateness_s < 600:
            # Below 10 min the trigger's 5-minute threshold leaves inserting transactions
            # less than 5 minutes of slack (see the module docstring).
            raise ValueError("lateness_s must be at least 600")
        self._pool = pool
        self.interval_s = interval_s
        self.days_ahead = days_ahead
        self.retention_days = retention_days
        self.lateness_s = lateness_s
        # DDL on usage_log (drop) needs ACCESS EXCLUSIVE, which queues every ledger COPY
        # behind it: give up quickly (retry next round) rather than stall the writers
        # behind a long user query.
        self.lock_timeout_s = lock_timeout_s
        self._lock_key = lock_key
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0  # rounds this instance led
        self.skipped = 0  # rounds another replica led
        self.failures = 0  # steps that failed

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="maintenance")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:  # outermost loop boundary: a bug or outage must not end the task
                log.exception("maintenance round failed; retrying in %.0fs", self.interval_s)
            await asyncio.sleep(self.interval_s)

    def keep_from(self, now: datetime | None = None) -> datetime | None:
        """Retention horizon: midnight UTC of the oldest day kept (None: keep forever)."""
        if self.retention_days <= 0:
            return None
        today = (now or datetime.now(UTC)).astimezone(UTC).date()
        day = today - timedelta(days=self.retention_days)
        return datetime(day.year, day.month, day.day, tzinfo=UTC)

    async def run_once(self) -> RoundResult | None:
        """One round; None when another replica holds the leader lock."""
        async with self._pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._lock_key):
                self.skipped += 1
                return None
            try:
                return await self._round(conn)
            finally:
                # A broken connection already lost the lock (session lock); and the pool's
                # reset on release runs pg_advisory_unlock_all() anyway.
                with contextlib.suppress(*DB_ERRORS):
                    await conn.execute("SELECT pg_advisory_unlock($1)", self._lock_key)

    async def _round(self, conn: asyncpg.Connection) -> RoundResult:
        self.rounds += 1
        res = RoundResult()
        keep_from = self.keep_from()
        lock_ms = int(self.lock_timeout_s * 1000)
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = {lock_ms}")
                res.partitions_created = await conn.fetchval(
                    "SELECT cognitude_ensure_usage_partitions($1, 1)", self.days_ahead)
        except DB_ERRORS as exc:
            self._failed(res, "partitions", exc)
        if keep_from is not None:
            try:
                await self._drop_old(conn, keep_from.date(), lock_ms, res)
            except DB_ERRORS as exc:
                self._failed(res, "retention", exc)
        try:
            res.rollup = await refresh_rollup(conn, lateness_s=self.lateness_s,
                                              keep_from=keep_from)
        except DB_ERRORS as exc:
            self._failed(res, "rollup", exc)
        if res.partitions_created or res.partitions_dropped:
            log.info("usage partitions: %d created, dropped %s", res.partitions_created,
                     res.partitions_dropped)
        return res

    async def _drop_old(self, conn: asyncpg.Connection, cutoff: date, lock_ms: int,
                        res: RoundResult) -> None:
        for row in await conn.fetch(_DAY_PARTITIONS):
            if row["day"] >= cutoff:
                break
            # Detach + drop in one transaction: a crash between them would otherwise leave
            # an orphan table no later round sees. The default partition is never listed.
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = {lock_ms}")
                await conn.execute(f'ALTER TABLE usage_log DETACH PARTITION "{row["relname"]}"')
                await conn.execute(f'DROP TABLE "{row["relname"]}"')
            res.partitions_dropped.append(row["relname"])

    def _failed(self, res: RoundResult, step: str, exc: BaseException) -> None:
        self.failures += 1
        res.errors.append(f"{step}: {type(exc).__name__}: {exc}")
        log.warning("maintenance %s step failed (%s: %s); retrying next round",
                    step, type(exc).__name__, exc)
