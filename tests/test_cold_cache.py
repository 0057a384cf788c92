"""The cold cache tier: Postgres keeps what Redis forgets, per org, and back-fills Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx

from cognitude.cache import cache_key
from cognitude.gate import keys
from tests.conftest import chat


async def cold_row(dsn: str, key: str) -> asyncpg.Record | None:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchrow("SELECT * FROM response_cache WHERE cache_key = $1", key)
    finally:
        await conn.close()


async def wait_cold_row(dsn: str, key: str) -> asyncpg.Record | None:
    for _ in range(50):
        row = await cold_row(dsn, key)
        if row is not None:
            return row
        await asyncio.sleep(0.1)
    return None


async def test_redis_loss_is_served_from_the_cold_tier(client, org_factory, mock, redis_client,
                                                       pg_dsn):
    org = await org_factory()
    body = chat("remember me")
    r1 = await client.post("/v1/chat/completions", json=body, headers=org.headers)
    key = keys.cache_key(org.org_id, "chat", cache_key.digest(body))
    row = await wait_cold_row(pg_dsn, key)
    assert row is not None and row["org_id"] == org.org_id
    # The cold batch can land before the Redis write-back, which may be up to 10 ms late.
    for _ in range(50):
        if (in_redis := await redis_client.get(key)) is not None:
            break
        await asyncio.sleep(0.01)
    assert bytes(row["value"]) == in_redis  # the same bytes as Redis
    await redis_client.flushall()  # Redis restarted empty
    r2 = await client.post("/v1/chat/completions", json=body, headers=org.headers)
    assert r2.headers["x-cognitude-cache"] == "HIT"
    assert r2.content == r1.content
    assert mock.stats()["by_path"]["/v1/chat/completions"] == 1
    # ... and Redis was back-filled (with the entry's remaining lifetime), within the write-
    # back's piggy-back delay (redis_pipe.DEFER_S).
    for _ in range(50):
        if (ttl := await redis_client.ttl(key)) > 0:
            break
        await asyncio.sleep(0.01)
    assert 0 < ttl <= 86400


async def test_cold_tier_is_per_org(client, org_factory, mock, redis_client, pg_dsn):
    a, b = await org_factory(), await org_factory()
    body = chat("cold isolation")
    await client.post("/v1/chat/completions", json=body, headers=a.headers)
    assert await wait_cold_row(pg_dsn, keys.cache_key(a.org_id, "chat", cache_key.digest(body)))
    await redis_client.flushall()
    r = await client.post("/v1/chat/completions", json=body, headers=b.headers)
    assert r.headers["x-cognitude-cache"] == "MISS"
    assert mock.stats()["by_path"]["/v1/chat/completions"] == 2


async def test_no_store_and_no_cache_apply_to_the_cold_tier(client, org_factory, mock,
                                                            redis_client, pg_dsn):
    org = await org_factory()
    body = chat("cold no-store")
    await client.post("/v1/chat/completions", json=body,
                      headers={**org.headers, "Cache-Control": "no-store"})
    await asyncio.sleep(0.5)
    assert await cold_row(pg_dsn, keys.cache_key(org.org_id, "chat",
                                                 cache_key.digest(body))) is None
    await client.post("/v1/chat/completions", json=body, headers=org.headers)
    assert await wait_cold_row(pg_dsn, keys.cache_key(org.org_id, "chat",
                                                      cache_key.digest(body)))
    await redis_client.flushall()
    r = await client.post("/v1/chat/completions", json=body,
                          headers={**org.headers, "Cache-Control": "no-cache"})
    assert r.headers["x-cognitude-cache"] == "BYPASS"


async def test_cold_tier_off(proxy_factory, org_factory, mock, redis_client, pg_dsn):
    p = proxy_factory(env={"COGNITUDE_CACHE_COLD_TIER": "false"})
    org = await org_factory()
    body = chat("no cold tier")
    async with httpx.AsyncClient(base_url=p.url, timeout=10) as c:
        await c.post("/v1/chat/completions", json=body, headers=org.headers)
        await asyncio.sleep(0.5)
        assert await cold_row(pg_dsn, keys.cache_key(org.org_id, "chat",
                                                     cache_key.digest(body))) is None
        await redis_client.flushall()
        r = await c.post("/v1/chat/completions", json=body, headers=org.headers)
        assert r.headers["x-cognitude-cache"] == "MISS"


async def test_cold_tier_is_read_only_after_redis_lost_data(client, org_factory, mock,
                                                            redis_client, pg_dsn):
    """Misses of an org whose Redis state never went away cost no Postgres read; after a
    loss (flush/restart) the cold copies are read and served."""
    import re

    def reads(text: str) -> int:
        m = re.search(r"^cognitude_cold_cache_reads_total (\d+)", text, re.M)
        assert m, text
        return int(m.group(1))

    org = await org_factory()
    body = chat("cold epoch 0")
    await client.post("/v1/chat/completions", json=body, headers=org.headers)
    assert await wait_cold_row(pg_dsn, keys.cache_key(org.org_id, "chat",
                                                      cache_key.digest(body)))
    before = reads((await client.get("/metrics")).text)
    for i in range(1, 6):
        r = await client.post("/v1/chat/completions", json=chat(f"cold epoch {i}"),
                              headers=org.headers)
        assert r.headers["x-cognitude-cache"] == "MISS"
    assert reads((await client.get("/metrics")).text) == before  # no cold read at all
    await redis_client.flushall()  # Redis lost everything
    r = await client.post("/v1/chat/completions", json=body, headers=org.headers)
    assert r.headers["x-cognitude-cache"] == "HIT"
    assert reads((await client.get("/metrics")).text) == before + 1


def test_the_write_queue_is_bounded_in_bytes_too():
    """A slow Postgres must not grow the process by the size of every answer meanwhile: the
    queue holds at most queue_max_bytes of values (and queue_max entries)."""
    from cognitude.cache.cold_cache import ColdCache

    pool: Any = None  # put() never touches Postgres
    cold = ColdCache(pool, flush_interval_ms=200, queue_max=1000, read_timeout_ms=50,
                     queue_max_bytes=10_000)
    for i in range(5):
        cold.put(f"k{i}", "org", b"x" * 3000, 60)
    assert cold.entries_dropped == 2 and cold.queue_bytes == 9000
    cold.put("small", "org", b"x" * 1000, 60)  # still fits
    assert cold.entries_dropped == 2 and cold.queue_bytes == 10_000
