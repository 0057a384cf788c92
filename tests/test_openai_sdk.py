"""The official OpenAI SDK against a running ``cognitude serve``: what users actually do."""

from __future__ import annotations

import openai
import pytest


@pytest.fixture
def sdk(proxy, org_factory):
    async def make(**kw):
        org = await org_factory(**kw)
        return openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=org.key, max_retries=0)
    return make


async def test_non_stream(sdk, mock):
    c = await sdk()
    async with c:
        r = await c.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello sdk"}])
        assert r.choices[0].message.content == "mock reply to: hello sdk"
        assert r.usage is not None and r.usage.completion_tokens > 0
        raw = await c.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello sdk"}])
        assert raw.headers["x-cognitude-cache"] == "HIT"
        assert raw.parse().choices[0].message.content == "mock reply to: hello sdk"


async def test_stream_miss_and_hit(sdk, mock):
    c = await sdk()
    async with c:
        for expected in ("MISS", "HIT"):
            resp = await c.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", stream=True,
                messages=[{"role": "user", "content": "stream via sdk"}])
            assert resp.headers["x-cognitude-cache"] == expected
            stream = resp.parse()
            text = "".join([ch.choices[0].delta.content or "" async for ch in stream
                            if ch.choices])
            assert text == "mock reply to: stream via sdk"
            import asyncio

            await asyncio.sleep(0.05)


async def test_sdk_error_classes(sdk, mock):
    c = await sdk()
    async with c:
        with pytest.raises(openai.NotFoundError):
            await c.chat.completions.create(model="nope",
                                            messages=[{"role": "user", "content": "x"}])
        mock.fail("500")
        with pytest.raises(openai.APIStatusError) as info:
            await c.chat.completions.create(model="gpt-4o-mini",
                                            messages=[{"role": "user", "content": "x"}])
        assert info.value.status_code == 502
        mock.fail("drop")
        with pytest.raises(openai.APIError):
            stream = await c.chat.completions.create(
                model="gpt-4o-mini", stream=True,
                messages=[{"role": "user", "content": "dropped stream"}])
            async for _ in stream:
                pass
    bad = openai.AsyncOpenAI(base_url=c.base_url, api_key="cog-wrong", max_retries=0)
    async with bad:
        with pytest.raises(openai.AuthenticationError):
            await bad.models.list()


async def test_models_list(sdk):
    c = await sdk()
    async with c:
        ids = {m.id async for m in c.models.list()}
    assert {"gpt-4o-mini", "gpt-4o", "text-embedding-3-small"} <= ids


async def test_embeddings(sdk, mock):
    c = await sdk()
    async with c:
        r = await c.embeddings.create(model="text-embedding-3-small", input="vector")
    assert len(r.data[0].embedding) > 0
