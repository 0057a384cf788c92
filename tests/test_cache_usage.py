"""Cache hits carry token usage in the shape the client asked for, however the entry was
written: the proxy asks the upstream for usage on every chat stream (and removes the extra
chunk for a client that did not ask), and counts it itself when the upstream ignores that.
Without usage LangChain and litellm report zero tokens and zero cost for every hit."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import orjson
import pytest
from openai import AsyncOpenAI

from tests.conftest import chat


def data_events(raw: bytes) -> list[bytes]:
    return [e[6:] for e in raw.split(b"\n\n") if e.startswith(b"data: ")]


def no_usage(raw: bytes) -> bool:
    """No usage chunk, and no usage on any chunk ("usage": null is how the upstream says
    so on every chunk once it was asked for usage; clients read it as absent)."""
    chunks = [orjson.loads(e) for e in data_events(raw)[:-1]]
    return bool(chunks) and all(c["choices"] and c.get("usage") is None for c in chunks)


async def stream(c: httpx.AsyncClient, headers: dict[str, str], body: dict
                 ) -> tuple[httpx.Response, bytes]:
    async with c.stream("POST", "/v1/chat/completions", json={**body, "stream": True},
                        headers=headers) as r:
        return r, await r.aread()


async def ledger_tokens(dsn: str, request_id: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(100):
            row = await conn.fetchrow("SELECT prompt_tokens, completion_tokens FROM usage_log"
                                      " WHERE request_id = $1", request_id)
            if row is not None:
                return row["prompt_tokens"], row["completion_tokens"]
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    raise AssertionError(f"no ledger row for {request_id}")


async def test_a_stream_cached_without_include_usage_replays_usage_to_every_shape(
        client, org_factory, mock):
    org = await org_factory()
    body = chat("counts for everyone")
    r, raw = await stream(client, org.headers, body)
    assert r.headers["x-cognitude-cache"] == "MISS"
    # The upstream was asked for usage; the client, which did not ask, sees none of it.
    sent = mock.stats()["last_request"]["body"]
    assert sent["stream_options"] == {"include_usage": True}
    assert no_usage(raw)
    await asyncio.sleep(0.05)  # write-back

    r = await client.post("/v1/chat/completions", json=body, headers=org.headers)
    assert r.headers["x-cognitude-cache"] == "HIT"
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] == 3 and usage["completion_tokens"] > 0

    r, raw = await stream(client, org.headers, {**body, "stream_options": {"include_usage": True}})
    assert r.headers["x-cognitude-cache"] == "HIT"
    last = orjson.loads(data_events(raw)[-2])
    assert last["choices"] == [] and last["usage"] == usage

    r, raw = await stream(client, org.headers, body)  # a hit, no usage asked: none sent
    assert r.headers["x-cognitude-cache"] == "HIT" and no_usage(raw)
    assert mock.stats()["requests"] == 1


async def test_the_openai_sdk_gets_usage_on_a_stream_hit(proxy, org_factory, mock):
    org = await org_factory()
    sdk = AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key=org.key, max_retries=0)
    messages = [{"role": "user", "content": "sdk usage on hits"}]
    # Cached by a stream that did not ask for usage...
    async for _ in await sdk.chat.completions.create(model="gpt-4o-mini", messages=messages,
                                                      stream=True):
        pass
    await asyncio.sleep(0.05)
    # ...and replayed to one that does.
    chunks = [c async for c in await sdk.chat.completions.create(
        model="gpt-4o-mini", messages=messages, stream=True,
        stream_options={"include_usage": True})]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    full = await sdk.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert full.usage is not None and full.usage.completion_tokens > 0
    assert mock.stats()["requests"] == 1
    await sdk.close()


async def test_usage_is_counted_when_the_upstream_ignores_include_usage(
        client, org_factory, mock, pg_dsn):
    org = await org_factory()
    body = chat("an upstream without stream counts")
    mock.fail("no_usage")
    r, raw = await stream(client, org.headers, body)
    assert no_usage(raw), raw.decode()
    counted = await ledger_tokens(pg_dsn, r.headers["x-request-id"])
    assert counted[0] > 0 and counted[1] > 0
    await asyncio.sleep(0.05)
    r = await client.post("/v1/chat/completions", json=body, headers=org.headers)
    assert r.headers["x-cognitude-cache"] == "HIT"
    usage = r.json()["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == counted
    assert usage["total_tokens"] == sum(counted)
    # And the hit is billed from the stored usage, at cost 0.
    assert await ledger_tokens(pg_dsn, r.headers["x-request-id"]) == counted


@pytest.mark.parametrize("ask", [False, True])
async def test_a_provider_that_refuses_stream_options_is_left_alone(proxy_factory, org_factory,
                                                                    mock, ask):
    p = proxy_factory(provider_extra="stream_usage = false")
    org = await org_factory()
    body = chat(f"leave it alone {ask}")
    if ask:
        body["stream_options"] = {"include_usage": True}
    async with httpx.AsyncClient(base_url=p.url, timeout=10) as c:
        r, _ = await stream(c, org.headers, body)
    assert r.status_code == 200
    sent = mock.stats()["last_request"]["body"]
    assert sent.get("stream_options") == body.get("stream_options")
