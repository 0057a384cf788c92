"""Maintenance against the session's real PostgreSQL: partitions ahead, retention, the
leader lock, and the hourly rollup matching a brute-force GROUP BY over raw rows."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from cognitude.ledger import maintenance
from cognitude.ledger.maintenance import ROLLUP_LOCK, Maintenance
from tests.ledger_rows import insert, rec

# A private leader-lock key: a proxy started by other tests runs its own Maintenance with
# the default key, and must not make these rounds skip.
KEY = maintenance.LEADER_LOCK + 1

@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    yield p
    await p.close()


def new_org() -> str:
    return "org-" + uuid.uuid4().hex


# Written independently of maintenance._AGG (UTC hour via AT TIME ZONE, FILTER-free sums).
BRUTE = """
SELECT org_id, date_trunc('hour', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour,
       coalesce(model_used, '') AS m, coalesce(provider, '') AS p, count(*)::bigint,
       sum(prompt_tokens)::bigint, sum(completion_tokens)::bigint,
       sum(coalesce(cost_micros, 0))::bigint,
       sum(CASE WHEN cost_micros IS NOT NULL AND baseline_cost_micros IS NOT NULL
                THEN baseline_cost_micros ELSE coalesce(cost_micros, 0) END)::bigint,
       sum((coalesce(cache_status, '') = 'HIT')::int)::bigint
FROM usage_log WHERE org_id = $1 GROUP BY 1, 2, 3, 4 ORDER BY 2, 3, 4
"""
ROLLUP = """
SELECT org_id, hour, model_used, provider, requests, prompt_tokens, completion_tokens,
       cost_micros, baseline_cost_micros, cache_hits
FROM usage_hourly WHERE org_id = $1 ORDER BY 2, 3, 4
"""


async def rows(pool: asyncpg.Pool, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in await pool.fetch(sql, *args)]


def part_name(d: date) -> str:
    return f"usage_log_p{d:%Y%m%d}"


async def create_partition(pool: asyncpg.Pool, name: str, d: date) -> None:
    lo = datetime(d.year, d.month, d.day, tzinfo=UTC)
    hi = lo + timedelta(days=1)
    await pool.execute(f'CREATE TABLE "{name}" PARTITION OF usage_log'
                       f" FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')")


async def exists(pool: asyncpg.Pool, name: str) -> bool:
    return await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", name)


async def test_partitions_created_ahead_and_old_ones_dropped(pool: asyncpg.Pool) -> None:
    today = datetime.now(UTC).date()
    old, recent = today - timedelta(days=400), today - timedelta(days=20)
    await create_partition(pool, part_name(old), old)
    await create_partition(pool, part_name(recent), recent)
    # Attached under another name: not ours to drop, however old.
    await create_partition(pool, "usage_log_archive_t", today - timedelta(days=600))
    org = new_org()
    # No partition for this day: the row sits in the default partition.
    await insert(pool, [rec(org, datetime.now(UTC) - timedelta(days=500))])
    try:
        res = await Maintenance(pool, days_ahead=10, retention_days=30, lock_key=KEY).run_once()
        assert res is not None and not res.errors, res
        assert part_name(old) in res.partitions_dropped
        assert not await exists(pool, part_name(old))
        assert await exists(pool, part_name(recent))
        assert await exists(pool, "usage_log_archive_t")
        assert await exists(pool, part_name(today + timedelta(days=10)))
        assert await exists(pool, "usage_log_default")
        assert await pool.fetchval(
            "SELECT count(*) FROM usage_log_default WHERE org_id = $1", org) == 1
        # Idempotent: nothing left to create or drop.
        again = await Maintenance(pool, days_ahead=10, retention_days=30,
                                  lock_key=KEY).run_once()
        assert again is not None and again.partitions_created == 0
        assert again.partitions_dropped == []
    finally:
        await pool.execute("DELETE FROM usage_log WHERE org_id = $1", org)
        for name in (part_name(recent), "usage_log_archive_t"):
            await pool.execute(f'DROP TABLE IF EXISTS "{name}"')


async def advisory_held(pool: asyncpg.Pool, key: int) -> bool:
    return await pool.fetchval(
        "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND objsubid = 1 AND (classid::bigint << 32 | objid::bigint) = $1", key)


async def test_only_the_lock_holder_works(pool: asyncpg.Pool, pg_dsn: str) -> None:
    a, b = Maintenance(pool, lock_key=KEY), Maintenance(pool, lock_key=KEY)
    other = await asyncpg.connect(pg_dsn)
    try:
        # Another replica holds the leader lock: this one skips the round entirely.
        await other.execute("SELECT pg_advisory_lock($1)", KEY)
        assert await a.run_once() is None
        await other.execute("SELECT pg_advisory_unlock($1)", KEY)

        # A leads and stalls inside its rollup (we hold the rollup lock); B, running at
        # the same moment, must see A's leader lock and do nothing.
        tr = other.transaction()
        await tr.start()
        await other.execute("SELECT pg_advisory_xact_lock($1)", ROLLUP_LOCK)
        rounds0 = await pool.fetchval("SELECT rounds FROM usage_rollup_state")
        task = asyncio.create_task(a.run_once())
        for _ in range(200):
            if await advisory_held(pool, KEY):
                break
            await asyncio.sleep(0.01)
        assert await b.run_once() is None
        assert await pool.fetchval("SELECT rounds FROM usage_rollup_state") == rounds0
        await tr.rollback()
        res = await task
        assert res is not None and res.rollup is not None and not res.errors
        assert (a.rounds, a.skipped, b.rounds, b.skipped) == (1, 1, 0, 1)
        assert await pool.fetchval("SELECT rounds FROM usage_rollup_state") >= rounds0 + 1
        assert not await advisory_held(pool, KEY)  # released after the round
    finally:
        await other.close()


async def test_rollup_matches_raw_rows_and_rerun_is_a_no_op(pool: asyncpg.Pool) -> None:
    org, now = new_org(), datetime.now(UTC)
    batch = [
        rec(org, now - timedelta(seconds=5)),
        rec(org, now - timedelta(seconds=4), cache="HIT", cost=0, baseline=300),
        rec(org, now - timedelta(seconds=3), model="claude-3-haiku", provider="anthropic",
            prompt=7, completion=70, cost=900, baseline=2000),
        rec(org, now - timedelta(seconds=2), model=None, provider=None, prompt=0,
            completion=0, cost=0, baseline=0, cache=None, status=429),
        rec(org, now - timedelta(seconds=1), model="mystery", cost=None, baseline=500),
        rec(org, now - timedelta(minutes=50), prompt=1, completion=2),
        rec(org, now - timedelta(hours=3), baseline=None),
        rec(org, now - timedelta(hours=26), model="gpt-4o", cost=5000, baseline=5000),
    ]
    await insert(pool, batch)
    m = Maintenance(pool, lock_key=KEY)
    assert (await m.run_once()) is not None
    expected = await rows(pool, BRUTE, org)
    assert await rows(pool, ROLLUP, org) == expected
    assert sum(r[4] for r in expected) == len(batch)
    xmins = await pool.fetch("SELECT xmin::text FROM usage_hourly WHERE org_id = $1", org)

    res = await m.run_once()
    assert res is not None and not res.errors
    assert await rows(pool, ROLLUP, org) == expected
    # Settled groups are not rewritten (no dead tuples per round).
    assert await pool.fetch("SELECT xmin::text FROM usage_hourly WHERE org_id = $1",
                            org) == xmins


async def test_late_rows_in_old_hours_are_picked_up(pool: asyncpg.Pool) -> None:
    org, m = new_org(), Maintenance(pool, lock_key=KEY)
    now = datetime.now(UTC)
    await insert(pool, [rec(org, now - timedelta(hours=5)), rec(org, now)])
    await m.run_once()
    assert await rows(pool, ROLLUP, org) == await rows(pool, BRUTE, org)

    # A spill replay after a long outage: rows for hours far behind the watermark window.
    await insert(pool, [rec(org, now - timedelta(hours=5), prompt=1000),
                        rec(org, now - timedelta(hours=50), completion=77)])
    assert await pool.fetchval("SELECT count(*) FROM usage_rollup_dirty") >= 2
    res = await m.run_once()
    assert res is not None and res.rollup is not None and res.rollup.dirty_hours >= 2
    expected = await rows(pool, BRUTE, org)
    assert await rows(pool, ROLLUP, org) == expected
    assert [r[4] for r in expected if r[1] == maintenance.floor_hour(now - timedelta(hours=5))] \
        == [2]
    assert await pool.fetchval("SELECT count(*) FROM usage_rollup_dirty") == 0

    # Recompute replaces: a group whose raw rows are gone disappears from the rollup.
    hour = maintenance.floor_hour(now - timedelta(hours=50))
    await pool.execute("DELETE FROM usage_log WHERE org_id = $1 AND ts >= $2 AND ts < $3",
                       org, hour, hour + timedelta(hours=1))
    await pool.execute("INSERT INTO usage_rollup_dirty (hour) VALUES ($1)", hour)
    await m.run_once()
    assert await rows(pool, ROLLUP, org) == await rows(pool, BRUTE, org)
    assert hour not in [r[1] for r in await rows(pool, ROLLUP, org)]


async def test_rollups_outlive_raw_retention(pool: asyncpg.Pool) -> None:
    org, day = new_org(), datetime.now(UTC).date() - timedelta(days=45)
    await create_partition(pool, part_name(day), day)
    ts = datetime(day.year, day.month, day.day, 10, 30, tzinfo=UTC)
    await insert(pool, [rec(org, ts), rec(org, ts, cache="HIT", cost=0)])
    try:
        await Maintenance(pool, lock_key=KEY).run_once()  # keep forever: rolled up
        rolled = await rows(pool, ROLLUP, org)
        assert [r[4] for r in rolled] == [2]

        m30 = Maintenance(pool, retention_days=30, lock_key=KEY)
        res = await m30.run_once()
        assert res is not None and part_name(day) in res.partitions_dropped
        assert await pool.fetchval("SELECT count(*) FROM usage_log WHERE org_id = $1", org) == 0
        assert await rows(pool, ROLLUP, org) == rolled

        # A row replayed for a day past retention lands in the default partition; its hour
        # is not recomputed from what little raw data is left.
        await insert(pool, [rec(org, ts)])
        res = await m30.run_once()
        assert res is not None and res.rollup is not None and res.rollup.skipped_hours >= 1
        assert await rows(pool, ROLLUP, org) == rolled
    finally:
        await pool.execute("DELETE FROM usage_log WHERE org_id = $1", org)
        await pool.execute(f'DROP TABLE IF EXISTS "{part_name(day)}"')


async def test_a_failing_step_does_not_stop_the_others(pool: asyncpg.Pool,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(maintenance, "_REFRESH_ALL", "SELECT no_such_function()")
    m = Maintenance(pool, days_ahead=12, lock_key=KEY)
    res = await m.run_once()
    assert res is not None and res.rollup is None
    assert [e.split(":")[0] for e in res.errors] == ["rollup"]
    assert await exists(pool, part_name(datetime.now(UTC).date() + timedelta(days=12)))
    assert m.failures == 1
    assert not await advisory_held(pool, KEY)


async def test_background_loop_survives_errors(pool: asyncpg.Pool,
                                               monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    m = Maintenance(pool, interval_s=0.01, lock_key=KEY)
    calls = 0
    real_round = m._round

    async def flaky(conn: asyncpg.Connection) -> maintenance.RoundResult:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("bug in round 1")
        return await real_round(conn)

    monkeypatch.setattr(m, "_round", flaky)
    with caplog.at_level(logging.ERROR, "cognitude.maintenance"):
        m.start()
        for _ in range(500):
            if m.rounds >= 2:
                break
            await asyncio.sleep(0.01)
        await m.close()
    assert calls >= 3 and m.rounds >= 2
    assert "maintenance round failed" in caplog.text
    assert not await advisory_held(pool, KEY)
