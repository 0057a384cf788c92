"""The response cache through a running proxy: hits, misses, isolation, headers, SSE replay."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import orjson

from cognitude.cache import cache_key
from cognitude.gate import keys
from cognitude.hotpath.respond import RequestIds, timing
from tests.conftest import CommandMonitor, chat


def sse_events(text: str) -> list[str]:
    assert text.endswith("\n\n"), text[-50:]
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events), events
    return [e[len("data: "):] for e in events]


def sse_content(text: str) -> str:
    out = []
    for data in sse_events(text):
        if data == "[DONE]":
            continue
        for ch in orjson.loads(data)["choices"]:
            out.append(ch["delta"].get("content") or "")
    return "".join(out)


async def test_miss_then_hit_returns_identical_bytes(client, org_factory, mock, redis_client):
    org = await org_factory()
    body = chat("cache me")
    r1 = await client.post("/v1/chat/completions", json=body, headers=org.headers)
    assert r1.status_code == 200, r1.text
    assert r1.headers["x-cognitude-cache"] == "MISS"
    assert r1.json()["choices"][0]["message"]["content"] == "mock reply to: cache me"
    await asyncio.sleep(0.05)  # the write-back happens after the response
    r2 = await client.post("/v1/chat/completions", json=body, headers=org.headers)
    assert r2.status_code == 200
    assert r2.headers["x-cognitude-cache"] == "HIT"
    assert r2.content == r1.content
    assert mock.stats()["by_path"]["/v1/chat/completions"] == 1
    # The stored key is the org-namespaced xxh3_128 of the canonical body.
    expected = keys.cache_key(org.org_id, "chat", cache_key.digest(body))
    assert await redis_client.exists(expected) == 1
    assert 0 < await redis_client.ttl(expected) <= 86400


async def test_response_headers(client, org_factory, mock):
    org = await org_factory(rpm=50)
    r = await client.post("/v1/chat/completions", json=chat("headers"), headers=org.headers)
    h = r.headers
    assert h["x-cognitude-model"] == "gpt-4o-mini"
    assert h["x-cognitude-provider"] == "mock"
    assert re.fullmatch(r"[0-9a-f]{24}", h["x-request-id"])
    assert h["x-ratelimit-limit"] == "50"
    assert h["x-ratelimit-remaining"] == "49"
    assert int(h["x-ratelimit-reset"]) >= 1
    timing = dict(re.findall(r"(\w+);dur=([0-9.]+)", h["server-timing"]))
    assert set(timing) >= {"gate", "upstream", "total"}
    assert float(timing["total"]) >= float(timing["upstream"]) > 0
    r2 = await client.post("/v1/chat/completions", json=chat("headers"), headers=org.headers)
    assert r2.headers["x-request-id"] != h["x-request-id"]
    assert r2.headers["x-ratelimit-remaining"] == "48"  # hits count by default


async def test_excluded_fields_do_not_split_the_cache(client, org_factory, mock):
    org = await org_factory()
    await client.post("/v1/chat/completions", json=chat("same", user="alice"),
                      headers=org.headers)
    await asyncio.sleep(0.05)
    r = await client.post("/v1/chat/completions",
                          json=chat("same", user="bob", metadata={"a": "b"}, store=False),
                          headers=org.headers)
    assert r.headers["x-cognitude-cache"] == "HIT"
    r = await client.post("/v1/chat/completions", json=chat("same", temperature=0.5),
                          headers=org.headers)
    assert r.headers["x-cognitude-cache"] == "MISS"  # an output-affecting field
    assert mock.stats()["by_path"]["/v1/chat/completions"] == 2


async def test_two_orgs_never_share_an_entry(client, org_factory, mock):
    a, b = await org_factory(), await org_factory()
    body = chat("identical request")
    ra = await client.post("/v1/chat/completions", json=body, headers=a.headers)
    await asyncio.sleep(0.05)
    assert (await client.post("/v1/chat/completions", json=body, headers=a.headers)
            ).headers["x-cognitude-cache"] == "HIT"
    rb = await client.post("/v1/chat/completions", json=body, headers=b.headers)
    assert ra.headers["x-cognitude-cache"] == "MISS"
    assert rb.headers["x-cognitude-cache"] == "MISS"
    assert mock.stats()["by_path"]["/v1/chat/completions"] == 2


async def test_hit_costs_exactly_one_redis_command(client, org_factory, mock, redis_url):
    org = await org_factory()
    body = chat("one round trip")
    await client.post("/v1/chat/completions", json=body, headers=org.headers)
    await asyncio.sleep(0.05)
    async with CommandMonitor(redis_url) as mon:
        r = await client.post("/v1/chat/completions", json=body, headers=org.headers)
        assert r.headers["x-cognitude-cache"] == "HIT"
    assert mon.commands == ["evalsha"], mon.lines


async def test_miss_costs_gate_plus_write_back(client, org_factory, mock, redis_url):
    org = await org_factory()
    async with CommandMonitor(redis_url) as mon:
        r = await client.post("/v1/chat/completions", json=chat("miss cost"),
                              headers=org.headers)
        assert r.headers["x-cognitude-cache"] == "MISS"
    assert mon.commands == ["evalsha", "set"], mon.lines


async def test_cache_control_no_cache_and_no_store(client, org_factory, mock):
    org = await org_factory()
    body = chat("directives")
    h = {**org.headers, "Cache-Control": "no-store"}
    r = await client.post("/v1/chat/completions", json=body, headers=h)
    assert r.headers["x-cognitude-cache"] == "MISS"
    await asyncio.sleep(0.05)
    r = await client.post("/v1/chat/completions", json=body, headers=org.headers)
    assert r.headers["x-cognitude-cache"] == "MISS"  # no-store wrote nothing
    await asyncio.sleep(0.05)
    r = await client.post("/v1/chat/completions", json=body,
                          headers={**org.headers, "Cache-Control": "no-cache"})
    assert r.headers["x-cognitude-cache"] == "BYPASS"  # present, but not read
    r = await client.post("/v1/chat/completions", json=body, headers=org.headers)
    assert r.headers["x-cognitude-cache"] == "HIT"
    assert mock.stats()["by_path"]["/v1/chat/completions"] == 3


async def test_cache_ttl_header(client, org_factory, mock, redis_client):
    org = await org_factory()
    body = chat("short lived")
    r = await client.post("/v1/chat/completions", json=body,
                          headers={**org.headers, "X-Cognitude-Cache-TTL": "1"})
    assert r.status_code == 200
    await asyncio.sleep(0.05)
    key = keys.cache_key(org.org_id, "chat", cache_key.digest(body))
    assert 0 < await redis_client.pttl(key) <= 1000
    await asyncio.sleep(1.1)
    r = await client.post("/v1/chat/completions", json=body, headers=org.headers)
    assert r.headers["x-cognitude-cache"] == "MISS"


async def test_large_response_is_stored_compressed_and_served_exactly(
        client, org_factory, mock, redis_client):
    # The test proxy sets cache.compress_min_bytes = 400; this reply is larger.
    org = await org_factory()
    big = chat(" ".join(["word"] * 200))
    r1 = await client.post("/v1/chat/completions", json=big, headers=org.headers)
    assert len(r1.content) >= 400
    await asyncio.sleep(0.05)
    raw = await redis_client.get(keys.cache_key(org.org_id, "chat", cache_key.digest(big)))
    assert raw[0] == cache_key.FLAG_ZSTD
    r2 = await client.post("/v1/chat/completions", json=big, headers=org.headers)
    assert r2.headers["x-cognitude-cache"] == "HIT"
    assert r2.content == r1.content
    small = chat("tiny")
    r3 = await client.post("/v1/chat/completions", json=small, headers=org.headers)
    await asyncio.sleep(0.05)
    raw = await redis_client.get(keys.cache_key(org.org_id, "chat", cache_key.digest(small)))
    assert len(r3.content) < 400 and raw == bytes([cache_key.FLAG_RAW]) + r3.content


async def test_stream_miss_streams_then_replays_on_hit(client, org_factory, mock):
    org = await org_factory()
    body = chat("stream me please", stream=True, stream_options={"include_usage": True})
    async with client.stream("POST", "/v1/chat/completions", json=body,
                             headers=org.headers) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-cognitude-cache"] == "MISS"
        assert "server-timing" in r.headers and "x-ratelimit-remaining" in r.headers
        text = (await r.aread()).decode()
    assert sse_content(text) == "mock reply to: stream me please"
    assert sse_events(text)[-1] == "[DONE]"
    await asyncio.sleep(0.05)
    r2 = await client.post("/v1/chat/completions", json=body, headers=org.headers)
    assert r2.headers["x-cognitude-cache"] == "HIT"
    assert r2.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r2.text)
    assert events[-1] == "[DONE]"
    assert sse_content(r2.text) == "mock reply to: stream me please"
    usage = [orjson.loads(e)["usage"] for e in events[:-1] if orjson.loads(e).get("usage")]
    assert usage and usage[0]["completion_tokens"] > 0
    # The same request without stream hits the same entry as a plain completion.
    plain = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    r3 = await client.post("/v1/chat/completions", json=plain, headers=org.headers)
    assert r3.headers["x-cognitude-cache"] == "HIT"
    assert r3.json()["choices"][0]["message"]["content"] == "mock reply to: stream me please"
    assert mock.stats()["by_path"]["/v1/chat/completions"] == 1


async def test_stream_is_flushed_chunk_by_chunk(client, org_factory, mock):
    org = await org_factory()
    mock.configure(chunk_delay_ms=150)
    body = chat("one two three four five", stream=True)
    t0 = time.monotonic()
    first = None
    async with client.stream("POST", "/v1/chat/completions", json=body,
                             headers=org.headers) as r:
        async for chunk in r.aiter_raw():
            if first is None and b"content" in chunk:
                first = time.monotonic() - t0
    total = time.monotonic() - t0
    assert first is not None
    # Eight-plus chunks at 150 ms each: a buffering proxy would deliver the first at the end.
    assert total - first >= 0.5, (first, total)


async def test_errors_are_never_cached(client, org_factory, mock):
    org = await org_factory()
    mock.fail("500")
    r = await client.post("/v1/chat/completions", json=chat("fail once"), headers=org.headers)
    assert r.status_code == 502
    r = await client.post("/v1/chat/completions", json=chat("fail once"), headers=org.headers)
    assert r.status_code == 200 and r.headers["x-cognitude-cache"] == "MISS"


async def test_embeddings_are_proxied_and_cached(client, org_factory, mock):
    org = await org_factory()
    body = {"model": "text-embedding-3-small", "input": "vector me", "encoding_format": "float"}
    r1 = await client.post("/v1/embeddings", json=body, headers=org.headers)
    assert r1.status_code == 200, r1.text
    assert r1.json()["data"][0]["embedding"]
    await asyncio.sleep(0.05)
    r2 = await client.post("/v1/embeddings", json=body, headers=org.headers)
    assert r2.headers["x-cognitude-cache"] == "HIT" and r2.content == r1.content


async def test_only_deterministic_still_caches_embeddings(proxy_factory, org_factory, mock):
    """Embeddings are deterministic by nature: cache.only_deterministic limits chat only."""
    p = proxy_factory(env={"COGNITUDE_CACHE_ONLY_DETERMINISTIC": "true"})
    org = await org_factory()
    body = {"model": "text-embedding-3-small", "input": "same vector", "encoding_format": "float"}
    async with httpx.AsyncClient(base_url=p.url, timeout=10) as c:
        for expected in ("MISS", "HIT"):
            r = await c.post("/v1/embeddings", json=body, headers=org.headers)
            assert r.status_code == 200 and r.headers["x-cognitude-cache"] == expected
            await asyncio.sleep(0.05)
        for _ in range(2):  # a chat request at the default temperature is not cached
            r = await c.post("/v1/chat/completions", json=chat("creative"), headers=org.headers)
            assert r.headers["x-cognitude-cache"] == "BYPASS"
            await asyncio.sleep(0.05)


async def test_provider_key_is_sent_upstream_and_client_key_is_not(client, org_factory, mock):
    org = await org_factory()
    await client.post("/v1/chat/completions", json=chat("whose key"), headers=org.headers)
    sent = mock.stats()["last_request"]["headers"]
    assert sent["authorization"] == "Bearer sk-mock-provider-secret-123"
    assert org.key not in str(sent)


def test_cache_key_excludes_exactly_the_named_fields():
    base = chat("k")
    d = cache_key.digest(base)
    for f in cache_key.EXCLUDED_FIELDS:
        assert cache_key.digest({**base, f: "anything"}) == d, f
    assert cache_key.digest({**base, "unknown_field": 1}) != d
    assert cache_key.digest(dict(reversed(list(base.items())))) == d  # order-insensitive


def test_request_ids_are_unique_and_renew_their_prefix_when_the_counter_wraps():
    ids = RequestIds()
    first = [ids() for _ in range(1000)]
    assert len(set(first)) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{24}", i) for i in first)
    other = RequestIds()  # another worker: another random prefix
    assert other()[:16] != first[0][:16]
    ids._next = 0xFFFFFFFF
    last, wrapped = ids(), ids()
    assert last == first[0][:16] + "ffffffff"
    assert wrapped[:16] != first[0][:16] and wrapped.endswith("00000000")
    assert wrapped not in first


def test_server_timing_keeps_three_decimals():
    name, value = timing(0.0001234, 0.0, 1.5)
    assert name == b"server-timing"
    assert value == b"gate;dur=0.123, upstream;dur=0.000, total;dur=1500.000"
