"""Rate limits through a running proxy: exact admission under concurrency, exact Retry-After."""

from __future__ import annotations

import asyncio
import time

from tests.conftest import assert_openai_error, chat


async def test_20_concurrent_against_limit_5_admit_exactly_5(client, org_factory, mock):
    org = await org_factory(rpm=5)
    bodies = [chat(f"concurrent {i}") for i in range(20)]
    rs = await asyncio.gather(*(
        client.post("/v1/chat/completions", json=b, headers=org.headers) for b in bodies))
    ok = [r for r in rs if r.status_code == 200]
    limited = [r for r in rs if r.status_code == 429]
    assert len(ok) == 5 and len(limited) == 15, [r.status_code for r in rs]
    for r in limited:
        err = assert_openai_error(r, 429, "rate_limit_exceeded")
        assert err["code"] == "rate_limit_exceeded"
        assert "your organization: 5 requests per minute" in err["message"]
        assert 1 <= int(r.headers["retry-after"]) <= 61
        assert r.headers["x-ratelimit-remaining"] == "0"
        assert r.headers["x-ratelimit-limit"] == "5"
    # Rejections never reached the upstream.
    assert mock.stats()["by_path"]["/v1/chat/completions"] == 5


async def test_cache_hits_count_against_the_limit(client, org_factory, mock):
    org = await org_factory(rpm=2)
    body = chat("hit counting")
    assert (await client.post("/v1/chat/completions", json=body, headers=org.headers)
            ).status_code == 200
    await asyncio.sleep(0.05)
    r = await client.post("/v1/chat/completions", json=body, headers=org.headers)
    assert r.headers["x-cognitude-cache"] == "HIT"
    r = await client.post("/v1/chat/completions", json=body, headers=org.headers)
    assert r.status_code == 429  # the cached entry exists but the quota is gone


async def test_hits_free_when_count_cache_hits_is_false(proxy_factory, org_factory, mock):
    p = proxy_factory("[rate_limits]\ncount_cache_hits = false\n")
    org = await org_factory(rpm=1)
    import httpx

    async with httpx.AsyncClient(base_url=p.url, timeout=10) as c:
        body = chat("free hits")
        assert (await c.post("/v1/chat/completions", json=body, headers=org.headers)
                ).status_code == 200
        await asyncio.sleep(0.05)
        for _ in range(3):
            r = await c.post("/v1/chat/completions", json=body, headers=org.headers)
            assert r.status_code == 200 and r.headers["x-cognitude-cache"] == "HIT"
        r = await c.post("/v1/chat/completions", json=chat("a miss"), headers=org.headers)
        assert r.status_code == 429


async def test_limits_are_per_org(client, org_factory, mock):
    a, b = await org_factory(rpm=1), await org_factory(rpm=1)
    assert (await client.post("/v1/chat/completions", json=chat("a"), headers=a.headers)
            ).status_code == 200
    assert (await client.post("/v1/chat/completions", json=chat("a2"), headers=a.headers)
            ).status_code == 429
    assert (await client.post("/v1/chat/completions", json=chat("b"), headers=b.headers)
            ).status_code == 200


async def test_retry_at_retry_after_succeeds(client, org_factory, mock):
    """Exactness against the real clock: too early is refused, at Retry-After it passes.

    This waits out a real minute window (~60 s): the only honest way to check the header a
    client will obey.
    """
    org = await org_factory(rpm=3)
    for i in range(3):
        r = await client.post("/v1/chat/completions", json=chat(f"r{i}"), headers=org.headers)
        assert r.status_code == 200
    r = await client.post("/v1/chat/completions", json=chat("over"), headers=org.headers)
    assert r.status_code == 429
    retry = int(r.headers["retry-after"])
    t_reject = time.monotonic()
    assert 1 <= retry <= 61
    # One second before Retry-After the window is still full.
    await asyncio.sleep(max(0.0, retry - 1.5 - (time.monotonic() - t_reject)))
    early = await client.post("/v1/chat/completions", json=chat("early"), headers=org.headers)
    assert early.status_code == 429
    await asyncio.sleep(max(0.0, retry - (time.monotonic() - t_reject)))
    ok = await client.post("/v1/chat/completions", json=chat("on time"), headers=org.headers)
    assert ok.status_code == 200, ok.text


async def test_openai_sdk_raises_rate_limit_error(proxy, org_factory, mock):
    import openai

    org = await org_factory(rpm=1)
    async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=org.key,
                                  max_retries=0) as sdk:
        await sdk.chat.completions.create(model="gpt-4o-mini",
                                          messages=[{"role": "user", "content": "1"}])
        try:
            await sdk.chat.completions.create(model="gpt-4o-mini",
                                              messages=[{"role": "user", "content": "2"}])
        except openai.RateLimitError as exc:
            assert exc.status_code == 429
            assert int(exc.response.headers["retry-after"]) >= 1
        else:
            raise AssertionError("expected RateLimitError")


async def test_a_busy_redis_pool_waits_instead_of_failing_open(proxy_factory, org_factory,
                                                               mock):
    """More concurrent requests than pooled Redis connections: every one is still limited
    and cached (a non-blocking pool raised MaxConnectionsError and fail-open served those
    requests with no limits at all). The gate now runs on its own pipelined connection
    (RedisPipe), so this also checks that the small pool no longer touches the hot path."""
    import httpx

    # Two connections: the invalidation subscriber holds one, 40 requests share the other.
    p = proxy_factory(env={"COGNITUDE_REDIS_POOL_SIZE": "2"})
    org = await org_factory(rpm=25)
    async with httpx.AsyncClient(base_url=p.url, timeout=10) as c:
        rs = await asyncio.gather(*(
            c.post("/v1/chat/completions", json=chat(f"pool {i}"), headers=org.headers)
            for i in range(40)))
    assert sorted(r.status_code for r in rs) == [200] * 25 + [429] * 15
    assert all(r.headers.get("x-cognitude-cache") == "MISS" for r in rs if r.status_code == 200)


async def test_killed_redis_connections_are_reopened_not_failed_open(client, org_factory, mock,
                                                                     redis_client):
    """Redis dropping the proxy's connections (restart, failover, CLIENT KILL) costs no
    limit and no cache: the next request reconnects instead of failing open."""
    org = await org_factory(rpm=3)
    body = chat("reconnect after kill")
    r = await client.post("/v1/chat/completions", json=body, headers=org.headers)
    assert r.status_code == 200 and r.headers["x-cognitude-cache"] == "MISS"
    await asyncio.sleep(0.1)  # the write-back lands
    killed = await redis_client.execute_command("CLIENT", "KILL", "TYPE", "normal",
                                                "SKIPME", "yes")
    assert killed >= 1
    for remaining in ("1", "0"):
        r = await client.post("/v1/chat/completions", json=body, headers=org.headers)
        assert r.status_code == 200
        assert r.headers["x-cognitude-cache"] == "HIT"
        assert r.headers["x-ratelimit-remaining"] == remaining  # gated, not failed open
    r = await client.post("/v1/chat/completions", json=body, headers=org.headers)
    assert_openai_error(r, 429, "rate_limit_exceeded")
