"""What an upstream can make the proxy do is bounded: no redirect is followed, a 200 that is
not the endpoint's JSON is a 502 and never cached, bodies and streams have a size cap, and a
stream that stops making progress (silent, or trickling bytes that never end an event) ends
with an error event within the read timeout (2 s in the test proxy)."""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson

from cognitude.cache import cache_key
from cognitude.cache.cache_key import ValueCodec
from cognitude.mock_upstream import MockUpstream
from tests.conftest import assert_openai_error, chat


def sse_events(text: str) -> list[bytes]:
    return [e[len(b"data: "):] for e in text.encode().split(b"\n\n") if e.startswith(b"data: ")]


async def test_an_upstream_redirect_is_an_error_and_its_target_sees_nothing(client, org_factory,
                                                                             mock):
    """aiohttp follows redirects by default and skips the egress resolver for literal IPs:
    a 302 to an internal address would be fetched, returned and cached."""
    org = await org_factory()
    with MockUpstream() as internal:  # stands for the metadata service or an internal API
        mock.configure(redirect_location=f"{internal.url}/v1/chat/completions")
        mock.fail("redirect")
        r = await client.post("/v1/chat/completions", json=chat("bounce"), headers=org.headers)
        err = assert_openai_error(r, 502, "upstream_error", code="upstream_redirect")
        assert internal.url not in err["message"]
        assert internal.stats()["requests"] == 0
        mock.fail("redirect")
        r = await client.post("/v1/chat/completions", json=chat("bounce", stream=True),
                              headers=org.headers)
        assert_openai_error(r, 502, code="upstream_redirect")
        assert internal.stats()["requests"] == 0


async def test_a_non_json_200_is_a_502_and_is_never_cached(client, org_factory, mock):
    org = await org_factory()
    body = chat("html page")
    mock.fail("not_json")
    r = await client.post("/v1/chat/completions", json=body, headers=org.headers)
    assert_openai_error(r, 502, "upstream_error", code="upstream_bad_response")
    for stream in (False, True):  # the next request, in either shape, goes upstream
        r = await client.post("/v1/chat/completions", json={**body, "stream": stream},
                              headers=org.headers)
        assert r.status_code == 200, r.text
        assert r.headers["x-cognitude-cache"] == ("MISS" if not stream else "HIT")
    assert mock.stats()["requests"] == 2
    # A stream request answered with a non-SSE, non-JSON 200: 502 in JSON, not an SSE body.
    mock.fail("not_json")
    r = await client.post("/v1/chat/completions", json=chat("html stream", stream=True),
                          headers=org.headers)
    assert_openai_error(r, 502, code="upstream_bad_response")


async def test_an_entry_that_cannot_be_replayed_is_a_miss_not_a_plain_text_500(
        client, org_factory, mock, redis_client):
    """Entries cached before 200s were checked (an HTML page) must not break stream hits for
    their whole TTL: the "response started" flag is explicit, and such an entry is a miss."""
    org = await org_factory()
    body = chat("poisoned", stream=True)
    key = cache_key.redis_key(org.org_id, "chat", body)
    for doc in (body, {**body, "stream": False}):
        await redis_client.set(key, ValueCodec(1 << 30).encode(b"<html>oops</html>"), ex=60)
        r = await client.post("/v1/chat/completions", json=doc, headers=org.headers)
        assert r.status_code == 200, r.text
        assert r.headers["x-cognitude-cache"] == "MISS"
        await asyncio.sleep(0.05)  # the write-back (<= 10 ms late) lands before the next SET
    assert mock.stats()["requests"] == 2


async def test_bodies_past_the_size_cap_are_502(proxy_factory, org_factory, mock):
    p = proxy_factory(env={"COGNITUDE_UPSTREAM_MAX_RESPONSE_BYTES": "65536"})
    org = await org_factory()
    mock.configure(huge_bytes=200_000)
    mock.fail("huge")
    async with httpx.AsyncClient(base_url=p.url, timeout=10) as c:
        r = await c.post("/v1/chat/completions", json=chat("big"), headers=org.headers)
        err = assert_openai_error(r, 502, code="upstream_too_large")
        assert "65536" in err["message"]
        mock.configure(huge_bytes=30_000)  # under the cap: served
        mock.fail("huge")
        r = await c.post("/v1/chat/completions", json=chat("big enough"), headers=org.headers)
        assert r.status_code == 200 and len(r.content) > 30_000


async def _stream_end(client: httpx.AsyncClient, org_headers: dict[str, str], text: str
                      ) -> tuple[float, dict]:
    t0 = time.monotonic()
    async with client.stream("POST", "/v1/chat/completions", headers=org_headers,
                             json=chat(text, stream=True)) as r:
        assert r.status_code == 200
        raw = (await r.aread()).decode()
    events = sse_events(raw)
    assert events and b"[DONE]" not in events
    return time.monotonic() - t0, orjson.loads(events[-1])


async def test_a_stream_that_stops_making_progress_ends_with_an_error_event(
        client, org_factory, mock):
    org = await org_factory()
    mock.configure(chunk_delay_ms=20)
    mock.fail("trickle")  # bytes keep coming, an event never ends: sock_read never fires
    elapsed, last = await _stream_end(client, org.headers, "trickle")
    assert last["error"]["code"] == "upstream_timeout" and elapsed < 5.0
    mock.fail("stall_stream")  # two events, then silence
    elapsed, last = await _stream_end(client, org.headers, "stall")
    assert last["error"]["type"] == "timeout" and elapsed < 5.0


async def test_the_whole_exchange_is_bounded(proxy_factory, org_factory, mock):
    p = proxy_factory(env={"COGNITUDE_UPSTREAM_TOTAL_TIMEOUT_S": "1",
                           "COGNITUDE_UPSTREAM_READ_TIMEOUT_S": "30"})
    org = await org_factory()
    mock.fail("timeout")  # no answer for a minute
    async with httpx.AsyncClient(base_url=p.url, timeout=20) as c:
        t0 = time.monotonic()
        r = await c.post("/v1/chat/completions", json=chat("slow"), headers=org.headers)
        assert_openai_error(r, 504, "timeout")
        assert time.monotonic() - t0 < 3.0
