"""A slow Postgres or Redis costs each request at most its configured bound, never a hang.

The slowness is real: the proxy talks to the session's servers through a TCP relay that
stops forwarding bytes on demand (``tests/tcp_relay.py``), exactly what a stalled database
or a network partition looks like from the proxy's side.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import assert_openai_error, chat, make_org
from tests.tcp_relay import TcpRelay


def via(dsn: str, relay: TcpRelay) -> str:
    u = urlsplit(dsn)
    return dsn.replace(f"{u.hostname}:{u.port}", f"127.0.0.1:{relay.port}")


@pytest.fixture
def pg_relay(pg_dsn: str):
    u = urlsplit(pg_dsn)
    with TcpRelay(u.hostname or "127.0.0.1", u.port or 5432) as relay:
        yield relay
        relay.resume()  # let the proxy drain its ledger before it is stopped


async def test_a_stalled_postgres_costs_a_request_its_lookup_bound(
        proxy_factory, pg_dsn, pg_relay, mock):
    p = proxy_factory("[auth]\nkey_cache_ttl_s = 0.5\nlookup_timeout_ms = 300\n",
                      pg_dsn=via(pg_dsn, pg_relay))
    known, new = await make_org(pg_dsn), await make_org(pg_dsn)
    async with httpx.AsyncClient(base_url=p.url, timeout=20) as c:
        assert (await c.post("/v1/chat/completions", json=chat("warm"),
                             headers=known.headers)).status_code == 200
        pg_relay.pause()
        await asyncio.sleep(0.6)  # the known key's entry is past its TTL now

        t0 = time.monotonic()
        r = await c.post("/v1/chat/completions", json=chat("never seen"), headers=new.headers)
        assert_openai_error(r, 503, code="service_unavailable")
        assert time.monotonic() - t0 < 1.5

        # A key resolved before keeps working on its last resolution.
        t0 = time.monotonic()
        r = await c.post("/v1/chat/completions", json=chat("known"), headers=known.headers)
        assert r.status_code == 200, r.text
        assert time.monotonic() - t0 < 1.5

        # /ready answers (and tells the truth) instead of hanging with the database.
        t0 = time.monotonic()
        r = await c.get("/ready")
        err = assert_openai_error(r, 503)
        assert "postgres" in err["message"] and "redis" not in err["message"]
        assert time.monotonic() - t0 < 2.0

        pg_relay.resume()
        r = await c.post("/v1/chat/completions", json=chat("back"), headers=new.headers)
        assert r.status_code == 200, r.text


async def test_the_key_is_checked_before_the_body_is_read(client, mock):
    """A bad key never makes the proxy buffer a body: 401, not 413, for a body past the cap
    sent without a Content-Length (the test proxy's cap is 64 KiB)."""

    async def body():
        for _ in range(40):
            yield b"x" * 4096

    r = await client.post("/v1/chat/completions", content=body(),
                          headers={"Authorization": "Bearer cog-not-a-key",
                                   "Content-Type": "application/json"})
    assert_openai_error(r, 401, code="invalid_api_key")
    assert mock.stats()["requests"] == 0


async def test_ready_answers_within_its_bound_when_redis_is_silent(
        proxy_factory, redis_url, mock):
    u = urlsplit(redis_url)
    with TcpRelay(u.hostname or "127.0.0.1", u.port or 6379) as relay:
        p = proxy_factory(redis_url=f"redis://127.0.0.1:{relay.port}/0",
                          env={"COGNITUDE_REDIS_SOCKET_TIMEOUT_MS": "5000"})
        async with httpx.AsyncClient(base_url=p.url, timeout=20) as c:
            assert (await c.get("/ready")).status_code == 200
            relay.pause()
            t0 = time.monotonic()
            err = assert_openai_error(await c.get("/ready"), 503)
            assert "redis" in err["message"]
            assert time.monotonic() - t0 < 2.0  # not the 5 s socket timeout
            relay.resume()
