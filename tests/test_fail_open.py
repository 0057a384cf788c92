"""``redis.fail_open`` covers an outage (connection lost, silent), nothing else: Redis
refusing a command (out of memory, a script error) is an error, never a reason to serve
without limits. An outage is logged once when it starts and once when it ends."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import httpx

from cognitude.gate import keys
from tests.conftest import assert_openai_error, chat
from tests.tcp_relay import TcpRelay


async def test_redis_out_of_memory_is_its_own_error_not_an_outage(client, org_factory, mock,
                                                                  redis_client):
    org = await org_factory()
    await redis_client.config_set("maxmemory", "1")  # nothing evictable: every write refused
    try:
        r = await client.post("/v1/chat/completions", json=chat("oom"), headers=org.headers)
    finally:
        await redis_client.config_set("maxmemory", "0")
    err = assert_openai_error(r, 503, code="redis_out_of_memory")
    assert "maxmemory" in err["message"]
    assert mock.stats()["requests"] == 0  # not served without limits


async def test_a_failing_script_is_an_error_not_an_outage(client, org_factory, mock,
                                                          redis_client):
    org = await org_factory()
    # The org's minute window is not a hash any more: the gate's HGET fails (WRONGTYPE).
    await redis_client.set(keys.limiter_keys(org.org_id)[0], b"corrupt")
    r = await client.post("/v1/chat/completions", json=chat("wrongtype"), headers=org.headers)
    assert_openai_error(r, 500, code="internal_error")
    assert mock.stats()["requests"] == 0


async def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(
        proxy_factory, org_factory, redis_url, mock):
    u = urlsplit(redis_url)
    with TcpRelay(u.hostname or "127.0.0.1", u.port or 6379) as relay:
        p = proxy_factory(redis_url=f"redis://127.0.0.1:{relay.port}/0")
        org = await org_factory()
        async with httpx.AsyncClient(base_url=p.url, timeout=10) as c:
            r = await c.post("/v1/chat/completions", json=chat("before"), headers=org.headers)
            assert r.headers["x-cognitude-cache"] == "MISS"
            relay.sever()
            for i in range(6):
                r = await c.post("/v1/chat/completions", json=chat(f"during {i}"),
                                 headers=org.headers)
                assert r.status_code == 200 and r.headers["x-cognitude-cache"] == "BYPASS"
            relay.resume()
            for _ in range(100):  # the pipe reconnects in the background (<= 1 s apart)
                r = await c.post("/v1/chat/completions", json=chat("after"), headers=org.headers)
                if r.headers["x-cognitude-cache"] != "BYPASS":
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("never admitted through Redis again")
        log = p.log()
    started = [line for line in log.splitlines() if "serving requests without rate" in line]
    ended = [line for line in log.splitlines() if "requests were served without rate" in line]
    assert len(started) == 1 and len(ended) == 1, log
    served = int(ended[0].split("; ")[1].split()[0])
    assert served >= 6
    assert "failing open" not in log  # the old per-request warning
