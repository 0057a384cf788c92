"""The Redis throttle of the keyless account endpoints: ``throttle.take`` / ``refund`` against
the real Valkey (every reply shape), and ``POST /auth/register`` through real
``cognitude serve`` processes — per client address, across replicas, counted before the KDF.

Registration used to be unthrottled: one address could create organizations (and burn
~50 ms of scrypt each) as fast as it liked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from starlette.testclient import TestClient

from cognitude.app import CognitudeApp
from cognitude.config import parse
from cognitude.errors import RateLimited, ServiceUnavailable
from cognitude.gate import keys
from cognitude.management import throttle
from cognitude.mock_upstream import MockUpstream
from tests.conftest import assert_openai_error, free_port

KEY = "cog:throttle:test:subject"


def retry_after(exc: RateLimited) -> int:
    (value,) = [v for k, v in exc.headers if k == b"retry-after"]
    return int(value)


async def test_take_counts_up_to_the_limit_then_refuses(redis_client) -> None:
    for _ in range(3):
        await throttle.take(redis_client, KEY, 3, "tries", fail_open=False)
    ttl = await redis_client.ttl(KEY)
    assert 3590 < ttl <= throttle.WINDOW_S  # the window opened with the first attempt
    with pytest.raises(RateLimited) as info:
        await throttle.take(redis_client, KEY, 3, "tries", fail_open=False)
    assert info.value.status == 429 and "Too many tries" in info.value.message
    assert 3590 < retry_after(info.value) <= throttle.WINDOW_S
    # Retry-After is exactly the time left on the counter, rounded up, and at least 1.
    for left_ms, want in [(4_500, 5), (1_500, 2), (1_000, 1)]:
        await redis_client.pexpire(KEY, left_ms)
        with pytest.raises(RateLimited) as info:
            await throttle.take(redis_client, KEY, 3, "tries", fail_open=False)
        assert retry_after(info.value) == want, left_ms
        assert f"retry in {want} s" in info.value.message


async def test_window_expiry_starts_a_new_count(redis_client) -> None:
    await throttle.take(redis_client, KEY, 1, "tries", fail_open=False)
    with pytest.raises(RateLimited):
        await throttle.take(redis_client, KEY, 1, "tries", fail_open=False)
    await redis_client.pexpire(KEY, 30)
    await asyncio.sleep(0.1)
    await throttle.take(redis_client, KEY, 1, "tries", fail_open=False)
    assert await redis_client.get(KEY) == b"1" and await redis_client.ttl(KEY) > 3590


async def test_refund_gives_one_back_and_never_leaves_a_counter_without_ttl(
        redis_client) -> None:
    for _ in range(2):
        await throttle.take(redis_client, KEY, 5, "tries", fail_open=False)
    await redis_client.pexpire(KEY, 100_000)
    await throttle.refund(redis_client, KEY)
    assert await redis_client.get(KEY) == b"1"
    assert 0 < await redis_client.pttl(KEY) <= 100_000  # the window is not extended
    # The counter expired before the refund: a bare DECR would leave -1 with no TTL.
    await redis_client.delete(KEY)
    await throttle.refund(redis_client, KEY)
    assert await redis_client.get(KEY) == b"0" and await redis_client.ttl(KEY) > 0


async def test_concurrent_attempts_admit_exactly_the_limit(redis_client) -> None:
    async def attempt() -> bool:
        try:
            await throttle.take(redis_client, KEY, 7, "tries", fail_open=False)
        except RateLimited:
            return False
        return True

    results = await asyncio.gather(*(attempt() for _ in range(60)))
    assert sum(results) == 7
    assert await redis_client.get(KEY) == b"60" and await redis_client.ttl(KEY) > 0


async def test_redis_down_fails_open_or_closed(caplog: pytest.LogCaptureFixture) -> None:
    dead = aioredis.Redis(port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2,
                          retry=Retry(NoBackoff(), 0))  # no 10 s of redis-py's own backoff
    try:
        with caplog.at_level(logging.WARNING, "cognitude.throttle"):
            await throttle.take(dead, KEY, 1, "registration attempts", fail_open=True)
        assert "Redis unavailable" in caplog.text and "registration attempts" in caplog.text
        with pytest.raises(ServiceUnavailable, match="fail_open"):
            await throttle.take(dead, KEY, 1, "registration attempts", fail_open=False)
        await throttle.refund(dead, KEY)  # logged, not raised: the answer is already decided
    finally:
        await dead.aclose()


# ---------------------------------------------------------------- POST /auth/register


def reg_body(**kw: Any) -> dict[str, Any]:
    return {"name": "Throttled", "email": f"t-{os.urandom(5).hex()}@example.com",
            "password": "long enough", **kw}


async def orgs_with_email(pg_dsn: str, email: str) -> int:
    conn = await asyncpg.connect(pg_dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM organizations WHERE email = $1",
                                        email))
    finally:
        await conn.close()


async def test_register_throttled_per_address_across_replicas(proxy_factory, mock, pg_dsn,
                                                             redis_client) -> None:
    env = {"COGNITUDE_AUTH_REGISTER_PER_HOUR": "3"}  # env beats conftest's high default
    a, b = proxy_factory(env=env), proxy_factory(env=env)
    from_two = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with httpx.AsyncClient(base_url=a.url, timeout=10) as ca, \
            httpx.AsyncClient(base_url=b.url, timeout=10) as cb, \
            httpx.AsyncClient(base_url=a.url, timeout=10, transport=from_two) as other:
        # Invalid attempts count too: a malformed body and a bad email, then one good one.
        r = await ca.post("/auth/register", content=b"{oops",
                          headers={"content-type": "application/json"})
        assert_openai_error(r, 400)
        assert_openai_error(await cb.post("/auth/register", json=reg_body(email="nope")), 400)
        assert (await ca.post("/auth/register", json=reg_body())).status_code == 201
        # The 4th from this address, on either replica, is refused before anything runs.
        late = reg_body()
        for client in (cb, ca):
            r = await client.post("/auth/register", json=late)
            err = assert_openai_error(r, 429, "rate_limit_exceeded")
            assert "registration attempts" in err["message"]
            pttl = await redis_client.pttl(keys.register_throttle_key("127.0.0.1"))
            assert 0 < pttl and int(r.headers["retry-after"]) in (
                math.ceil(pttl / 1000), math.ceil(pttl / 1000) + 1)
        assert await orgs_with_email(pg_dsn, late["email"]) == 0
        # Another address has its own count.
        assert (await other.post("/auth/register", json=reg_body())).status_code == 201
    async for name in redis_client.scan_iter("cog:throttle:*"):
        assert await redis_client.ttl(name) > 0, name


async def test_register_concurrent_flood_admits_exactly_the_limit(proxy_factory, mock,
                                                                  redis_client) -> None:
    p = proxy_factory(env={"COGNITUDE_AUTH_REGISTER_PER_HOUR": "4"})
    async with httpx.AsyncClient(base_url=p.url, timeout=30) as c:
        rs = await asyncio.gather(*(c.post("/auth/register", json=reg_body())
                                    for _ in range(16)))
    codes = sorted(r.status_code for r in rs)
    assert codes == [201] * 4 + [429] * 12, codes


def test_register_when_redis_is_down(tmp_path: Path, pg_dsn: str, mock_server: MockUpstream,
                                     caplog: pytest.LogCaptureFixture) -> None:
    """fail_open (the default): allowed and logged. fail_open off: 503, nothing created."""
    cfg = parse({
        "data_dir": str(tmp_path),
        "redis": {"url": f"redis://127.0.0.1:{free_port()}", "socket_timeout_ms": 200},
        "postgres": {"dsn": pg_dsn},
        "cache": {"cold_tier": False},
        "providers": {"mock": {"base_url": mock_server.url + "/v1",
                               "models": ["gpt-4o-mini"]}},
    }, "test", env={})
    caplog.set_level(logging.WARNING, "cognitude.throttle")
    app = CognitudeApp(cfg)
    with TestClient(app) as c:  # type: ignore[arg-type]
        r = c.post("/auth/register", json=reg_body())
        assert r.status_code == 201, r.text
        assert "throttle of registration attempts" in caplog.text
        st = app.starlette.state.cognitude
        st.cfg = dataclasses.replace(cfg, redis=dataclasses.replace(cfg.redis, fail_open=False))
        body = reg_body()
        assert_openai_error(c.post("/auth/register", json=body), 503)
        assert asyncio.run(orgs_with_email(pg_dsn, body["email"])) == 0
