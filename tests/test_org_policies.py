"""What the management API sets, the hot path honours: per-key limits, per-org cache
settings and rate limits, and an org's own provider key — on the next request."""

from __future__ import annotations

import asyncio
import base64
import os

import asyncpg
import httpx

from cognitude.cache import cache_key
from cognitude.gate import keys
from cognitude.identity.apikeys import hash_key
from tests.conftest import assert_openai_error, chat, sql

ENC = {"COGNITUDE_ENCRYPTION_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode()}


async def test_per_key_limits_narrow_one_key_only(proxy_factory, org_factory, pg_dsn, mock):
    p = proxy_factory(env=ENC)
    org = await org_factory()
    await sql(pg_dsn, "UPDATE api_keys SET requests_per_minute = 2 WHERE key_hash = $1",
              hash_key(org.key))
    async with httpx.AsyncClient(base_url=p.url, timeout=10) as c:
        # A second key of the same org, without limits of its own.
        r = await c.post("/auth/keys", json={"name": "unlimited"}, headers=org.headers)
        assert r.status_code == 201, r.text
        other = {"Authorization": f"Bearer {r.json()['api_key']}"}
        for i in range(2):
            r = await c.post("/v1/chat/completions", json=chat(f"k{i}"), headers=org.headers)
            assert r.status_code == 200
        r = await c.post("/v1/chat/completions", json=chat("k3"), headers=org.headers)
        err = assert_openai_error(r, 429, "rate_limit_exceeded")
        assert "this API key: 2 requests per minute" in err["message"]
        assert r.headers["x-ratelimit-limit"] == "2"
        r = await c.post("/v1/chat/completions", json=chat("other key"), headers=other)
        assert r.status_code == 200


async def test_rate_limit_change_applies_to_the_next_request_on_every_replica(
        proxy_factory, org_factory, mock):
    replicas = [proxy_factory("[auth]\nkey_cache_ttl_s = 60.0\n", env=ENC) for _ in range(2)]
    org = await org_factory()
    clients = [httpx.AsyncClient(base_url=p.url, timeout=10) for p in replicas]
    try:
        for c in clients:
            r = await c.post("/v1/chat/completions", json=chat("warm"), headers=org.headers)
            assert r.headers["x-ratelimit-limit"] == "100"
        r = await clients[0].put("/rate-limits/config", json={"requests_per_minute": 3},
                                 headers=org.headers)
        assert r.status_code == 200, r.text
        await asyncio.sleep(0.2)  # pub/sub delivery to the other replica
        r = await clients[1].post("/v1/chat/completions", json=chat("after"),
                                  headers=org.headers)
        assert r.headers["x-ratelimit-limit"] == "3"
        assert r.headers["x-ratelimit-remaining"] == "0"  # 3 admitted in this minute
        r = await clients[0].post("/v1/chat/completions", json=chat("over"), headers=org.headers)
        assert r.status_code == 429
        r = await clients[1].put("/rate-limits/config", json={"requests_per_minute": 50},
                                 headers=org.headers)
        await asyncio.sleep(0.2)
        r = await clients[0].post("/v1/chat/completions", json=chat("raised"),
                                  headers=org.headers)
        assert r.status_code == 200 and r.headers["x-ratelimit-limit"] == "50"
    finally:
        for c in clients:
            await c.aclose()


async def test_org_cache_settings(proxy_factory, org_factory, mock, redis_client):
    p = proxy_factory(env=ENC)
    org = await org_factory()
    async with httpx.AsyncClient(base_url=p.url, timeout=10) as c:
        r = await c.put("/cache/config", json={"ttl_s": 7}, headers=org.headers)
        assert r.status_code == 200, r.text
        body = chat("short ttl")
        await c.post("/v1/chat/completions", json=body, headers=org.headers)
        await asyncio.sleep(0.05)
        ttl = await redis_client.ttl(keys.cache_key(org.org_id, "chat", cache_key.digest(body)))
        assert 0 < ttl <= 7
        await c.put("/cache/config", json={"only_deterministic": True}, headers=org.headers)
        r = await c.post("/v1/chat/completions", json=chat("creative"), headers=org.headers)
        assert r.headers["x-cognitude-cache"] == "BYPASS"
        r = await c.post("/v1/chat/completions", json=chat("exact", temperature=0),
                         headers=org.headers)
        assert r.headers["x-cognitude-cache"] == "MISS"
        await c.put("/cache/config", json={"enabled": False}, headers=org.headers)
        r = await c.post("/v1/chat/completions", json=chat("exact", temperature=0),
                         headers=org.headers)
        assert r.headers["x-cognitude-cache"] == "BYPASS"


async def test_an_orgs_own_provider_key_is_used_and_never_leaks(proxy_factory, org_factory,
                                                                mock, pg_dsn):
    p = proxy_factory(env=ENC)
    a, b = await org_factory(), await org_factory()
    own = "sk-org-a-own-secret-" + os.urandom(8).hex()
    async with httpx.AsyncClient(base_url=p.url, timeout=10) as c:
        r = await c.post("/providers/config", json={"provider": "mock", "api_key": own},
                         headers=a.headers)
        assert r.status_code == 201, r.text
        assert own not in r.text
        await c.post("/v1/chat/completions", json=chat("a's traffic"), headers=a.headers)
        assert mock.stats()["last_request"]["headers"]["authorization"] == f"Bearer {own}"
        await c.post("/v1/chat/completions", json=chat("b's traffic"), headers=b.headers)
        assert mock.stats()["last_request"]["headers"]["authorization"] == (
            "Bearer sk-mock-provider-secret-123")
        # An upstream error quoting the key it got never carries it back.
        mock.fail("400")
        r = await c.post("/v1/chat/completions", json=chat("a again"), headers=a.headers)
        assert own not in r.text
        listed = await c.get("/providers", headers=a.headers)
        assert own not in listed.text
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch("SELECT * FROM provider_credentials")
    finally:
        await conn.close()
    assert rows and all(own.encode() not in bytes(r["ciphertext"]) for r in rows)
    assert all(own not in str(v) for r in rows for v in r.values())
    assert own not in p.log()


async def test_provider_without_shared_key_needs_the_orgs_own(proxy_factory, org_factory, mock):
    p = proxy_factory(env=ENC, provider_extra="shared_key = false")
    org = await org_factory()
    async with httpx.AsyncClient(base_url=p.url, timeout=10) as c:
        r = await c.post("/v1/chat/completions", json=chat("no own key"), headers=org.headers)
        err = assert_openai_error(r, 403, code="provider_key_required")
        assert "/providers/config" in err["message"]
        assert mock.stats()["requests"] == 0
        r = await c.post("/providers/config", headers=org.headers,
                         json={"provider": "mock", "api_key": "sk-own-1234567"})
        assert r.status_code == 201
        r = await c.post("/v1/chat/completions", json=chat("own key"), headers=org.headers)
        assert r.status_code == 200
        assert mock.stats()["last_request"]["headers"]["authorization"] == "Bearer sk-own-1234567"


async def test_full_flow_register_key_provider_limits_on_two_replicas(proxy_factory, mock):
    """register → second key → own provider key → limits → revoke, across two replicas
    that trust their key cache for a minute: every change shows on the other replica."""
    a, b = (proxy_factory("[auth]\nkey_cache_ttl_s = 60.0\n", env=ENC) for _ in range(2))
    async with httpx.AsyncClient(base_url=a.url, timeout=10) as ca, \
            httpx.AsyncClient(base_url=b.url, timeout=10) as cb:
        r = await ca.post("/auth/register", json={
            "name": "Flow", "email": f"flow-{os.urandom(4).hex()}@example.com",
            "password": "a long passphrase"})
        assert r.status_code == 201, r.text
        first = {"Authorization": f"Bearer {r.json()['api_key']}"}
        r = await ca.post("/auth/keys", json={"name": "second"}, headers=first)
        second_id, second = r.json()["id"], {"Authorization": f"Bearer {r.json()['api_key']}"}
        own = "sk-flow-" + os.urandom(8).hex()
        assert (await ca.post("/providers/config", json={"provider": "mock", "api_key": own},
                              headers=first)).status_code == 201
        r = await cb.post("/v1/chat/completions", json=chat("flow 1"), headers=second)
        assert r.status_code == 200
        assert mock.stats()["last_request"]["headers"]["authorization"] == f"Bearer {own}"
        assert (await ca.put("/rate-limits/config", json={"requests_per_minute": 2},
                             headers=first)).status_code == 200
        await asyncio.sleep(0.2)
        r = await cb.post("/v1/chat/completions", json=chat("flow 2"), headers=second)
        assert r.status_code == 200 and r.headers["x-ratelimit-limit"] == "2"
        r = await cb.post("/v1/chat/completions", json=chat("flow 3"), headers=second)
        assert r.status_code == 429
        usage = (await cb.get("/rate-limits/usage", headers=first)).json()
        assert usage["minute"]["used"] == 2 and usage["minute"]["remaining"] == 0
        # Revoke the second key on replica A: replica B refuses it within a second.
        assert (await ca.delete(f"/auth/keys/{second_id}", headers=first)).status_code == 200
        t0 = asyncio.get_running_loop().time()
        while (await cb.get("/v1/models", headers=second)).status_code != 401:
            assert asyncio.get_running_loop().time() - t0 < 1.0
            await asyncio.sleep(0.02)
        assert (await cb.get("/v1/models", headers=first)).status_code == 200


async def test_provider_cookies_never_cross_tenants(proxy_factory, org_factory):
    """The upstream session is shared by every org: a cookie one org's upstream response sets
    (Cloudflare sets __cf_bm on api.openai.com) must not be sent on anyone's next request."""
    from aiohttp import web

    seen: list[str | None] = []

    async def completions(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        resp = web.json_response({
            "id": "chatcmpl-cookie", "object": "chat.completion", "created": 0,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "hi"}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
        resp.set_cookie("__cf_bm", f"tenant-{len(seen)}", path="/")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        # By host name: aiohttp's default jar ignores cookies from bare IP addresses.
        p = proxy_factory(upstream_url=f"http://localhost:{port}")
        a, b = await org_factory(), await org_factory()
        async with httpx.AsyncClient(base_url=p.url, timeout=10) as c:
            for i, org in enumerate((a, b, a, b)):
                r = await c.post("/v1/chat/completions", json=chat(f"cookie {i}"),
                                 headers=org.headers)
                assert r.status_code == 200, r.text
                assert "set-cookie" not in r.headers  # nor is it passed to the client
    finally:
        await runner.cleanup()
    assert seen == [None] * 4


async def test_a_base_url_that_now_resolves_to_a_private_address_is_refused(
        proxy_factory, org_factory, mock, pg_dsn):
    """DNS rebinding: a base_url host checked public when it was stored can later resolve to
    loopback or the metadata service. The upstream session refuses non-public addresses of
    hosts the operator did not configure, at connect time; alerts.allow_private_targets
    lifts that, as it does at write time."""
    org = await org_factory()
    own = "sk-rebound-" + os.urandom(8).hex()
    setup = proxy_factory(env=ENC)
    async with httpx.AsyncClient(base_url=setup.url, timeout=10) as c:
        r = await c.post("/providers/config", json={"provider": "mock", "api_key": own},
                         headers=org.headers)
        assert r.status_code == 201, r.text
    # What the write-time check saw no longer holds: the name now leads to this machine.
    port = mock.url.rsplit(":", 1)[1]
    await sql(pg_dsn, "UPDATE provider_credentials SET base_url = $1 WHERE org_id = $2",
              f"http://localhost:{port}/v1", org.org_id)

    guarded = proxy_factory(env=ENC)
    before = mock.stats()["requests"]
    async with httpx.AsyncClient(base_url=guarded.url, timeout=10) as c:
        r = await c.post("/v1/chat/completions", json=chat("rebound"), headers=org.headers)
    err = assert_openai_error(r, 502, "upstream_error")
    assert "unreachable" in err["message"] and "localhost" not in err["message"]
    assert mock.stats()["requests"] == before  # nothing was sent, so the key did not leave
    assert "refused to connect to localhost" in guarded.log()
    assert own not in guarded.log()

    # The operator's switch: the same row is served when private targets are allowed.
    lan = proxy_factory("[alerts]\nallow_private_targets = true\n", env=ENC)
    async with httpx.AsyncClient(base_url=lan.url, timeout=10) as c:
        r = await c.post("/v1/chat/completions", json=chat("rebound, allowed"),
                         headers=org.headers)
    assert r.status_code == 200, r.text
    assert mock.stats()["last_request"]["headers"]["authorization"] == f"Bearer {own}"
