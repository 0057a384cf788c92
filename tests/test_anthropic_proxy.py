"""Chat completions served by an Anthropic-kind provider, end to end: the official OpenAI
SDK talks to the proxy, the proxy talks Messages to the bundled mock's strict Anthropic side
(which refuses what the real API refuses: unknown fields, non-alternating turns, a missing
``max_tokens``, a ``tool_result`` without its ``tool_use``), so a 200 proves the translation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from openai import AsyncOpenAI, BadRequestError, OpenAI

from cognitude.mock_upstream import MockUpstream
from tests.conftest import assert_openai_error

KEY = "sk-ant-mock-key-0123456789"
CLAUDE = "claude-sonnet-4"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


@pytest.fixture(scope="module")
def claude_server() -> Iterator[MockUpstream]:
    with MockUpstream(require_key=KEY, require_anthropic_version=True) as m:
        yield m


@pytest.fixture
def claude(claude_server: MockUpstream) -> MockUpstream:
    claude_server.reset()
    return claude_server


def anthropic_provider(url: str, models: str = f'["{CLAUDE}", "claude-3-5-haiku"]') -> str:
    return (f'\n[providers.claude]\nkind = "anthropic"\nbase_url = "{url}/v1"\n'
            f'api_key_env = "CLAUDE_TEST_KEY"\nmodels = {models}\n')


@pytest.fixture
def proxy(proxy_factory, claude):
    return proxy_factory(provider_extra=anthropic_provider(claude.url),
                         env={"CLAUDE_TEST_KEY": KEY})


@pytest.fixture
async def sdk(proxy, org_factory) -> Iterator[OpenAI]:
    org = await org_factory()
    with OpenAI(base_url=proxy.url + "/v1", api_key=org.key, max_retries=0) as client:
        yield client


def sent(claude: MockUpstream) -> dict[str, Any]:
    last = claude.stats()["last_request"]
    assert last["path"] == "/v1/messages"
    return last


def test_a_chat_completion_through_messages(sdk, claude):
    r = sdk.chat.completions.with_raw_response.create(
        model=CLAUDE, temperature=1.5, top_p=0.9, max_tokens=64,
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Hello"},
                  {"role": "user", "content": "there"}])
    done = r.parse()
    assert r.headers["x-cognitude-provider"] == "claude"
    assert done.object == "chat.completion" and done.choices[0].message.role == "assistant"
    assert done.choices[0].message.content and done.choices[0].finish_reason == "stop"
    assert done.usage.prompt_tokens > 0 and done.usage.completion_tokens > 0
    last = sent(claude)
    assert last["headers"]["x-api-key"] == KEY and "authorization" not in last["headers"]
    assert last["headers"]["anthropic-version"] == "2023-06-01"
    body = last["body"]
    assert set(body) == {"model", "messages", "max_tokens", "system", "temperature"}
    assert body["system"] == "Be brief." and body["temperature"] == 1.0
    assert body["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]}]


def test_max_tokens_defaults_to_the_models_output_limit_and_maps_length(sdk, claude):
    sdk.chat.completions.create(model=CLAUDE, messages=[{"role": "user", "content": "Hi"}])
    assert sent(claude)["body"]["max_tokens"] == 64000  # the catalog's claude-sonnet-4 limit
    short = sdk.chat.completions.create(
        model=CLAUDE, max_tokens=2,
        messages=[{"role": "user", "content": "a rather long question with many words"}])
    assert short.choices[0].finish_reason == "length"
    assert short.usage.completion_tokens == 2


def test_stop_sequences_map_to_stop(sdk, claude):
    done = sdk.chat.completions.create(
        model=CLAUDE, stop=["STOP"],
        messages=[{"role": "user", "content": "one two STOP three"}])
    assert sent(claude)["body"]["stop_sequences"] == ["STOP"]
    assert done.choices[0].finish_reason == "stop"
    assert "three" not in (done.choices[0].message.content or "")


def test_a_stream_through_messages(sdk, claude):
    whole = sdk.chat.completions.create(
        model=CLAUDE, messages=[{"role": "user", "content": "stream these words"}])
    chunks = list(sdk.chat.completions.create(
        model=CLAUDE, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "stream these words, again"}]))
    assert sent(claude)["body"]["stream"] is True
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


async def test_async_stream_without_include_usage(proxy, org_factory, claude):
    org = await org_factory()
    async with AsyncOpenAI(base_url=proxy.url + "/v1", api_key=org.key,
                           max_retries=0) as client:
        stream = await client.chat.completions.create(
            model=CLAUDE, stream=True, messages=[{"role": "user", "content": "no usage"}])
        chunks = [c async for c in stream]
    assert chunks and all(c.choices and c.usage is None for c in chunks)


def test_tool_calls_round_trip(sdk, claude):
    first = sdk.chat.completions.create(
        model=CLAUDE, tools=[WEATHER], tool_choice="required",
        messages=[{"role": "user", "content": "Weather in Paris and Rome?"}])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    body = sent(claude)["body"]
    assert body["tool_choice"] == {"type": "any"}
    assert body["tools"][0]["input_schema"]["required"] == ["city"]
    calls = choice.message.tool_calls
    for call in calls:
        assert isinstance(json.loads(call.function.arguments), dict)
    # Answer every call: the results of one turn go to the mock in ONE user turn, right
    # after the assistant's tool_use turn (the mock refuses anything else).
    history: list[Any] = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [c.model_dump() for c in calls]},
        *({"role": "tool", "tool_call_id": c.id, "content": "sunny"} for c in calls),
    ]
    second = sdk.chat.completions.create(model=CLAUDE, tools=[WEATHER], messages=history)
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.content
    turns = sent(claude)["body"]["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert [b["tool_use_id"] for b in turns[2]["content"]] == [c.id for c in calls]


def test_streamed_tool_call_arguments_reassemble_to_json(sdk, claude):
    chunks = list(sdk.chat.completions.create(
        model=CLAUDE, tools=[WEATHER], tool_choice={"type": "function",
                                                    "function": {"name": "get_weather"}},
        stream=True, messages=[{"role": "user", "content": "Weather in Oslo?"}]))
    args: dict[int, str] = {}
    names: dict[int, str] = {}
    for c in chunks:
        for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            args[tc.index] = args.get(tc.index, "") + (tc.function.arguments or "")
            if tc.function.name:
                names[tc.index] = tc.function.name
    assert names == {0: "get_weather"}
    assert "city" in json.loads(args[0])
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_an_image_goes_as_a_base64_source(sdk, claude):
    pixel = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQ"
             "AAAABJRU5ErkJggg==")
    sdk.chat.completions.create(model=CLAUDE, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{pixel}"}}]}])
    block = sent(claude)["body"]["messages"][0]["content"][1]
    assert block == {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                 "data": pixel}}


def test_what_anthropic_cannot_do_is_a_clear_400(sdk, claude):
    with pytest.raises(BadRequestError) as info:
        sdk.chat.completions.create(model=CLAUDE, n=2,
                                    messages=[{"role": "user", "content": "two please"}])
    assert info.value.param == "n" and "Anthropic" in info.value.message
    assert claude.stats()["requests"] == 0


def test_an_anthropic_answer_is_cached_as_a_chat_completion(sdk, claude):
    ask = {"model": CLAUDE, "messages": [{"role": "user", "content": "cache me please"}]}
    first = sdk.chat.completions.with_raw_response.create(**ask)
    again = sdk.chat.completions.with_raw_response.create(**ask)
    assert (first.headers["x-cognitude-cache"], again.headers["x-cognitude-cache"]) == (
        "MISS", "HIT")
    assert again.parse().choices[0].message.content == first.parse().choices[0].message.content
    replayed = list(sdk.chat.completions.create(**ask, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in replayed if c.choices)
    assert text == first.parse().choices[0].message.content
    assert claude.stats()["requests"] == 1


async def test_errors_keep_their_meaning(proxy, org_factory, claude):
    org = await org_factory()
    async with httpx.AsyncClient(base_url=proxy.url, headers=org.headers, timeout=30) as c:
        body = {"model": CLAUDE, "messages": [{"role": "user", "content": "x"}]}
        claude.fail("429")
        r = await c.post("/v1/chat/completions", json=body)
        assert_openai_error(r, 429)
        assert r.headers["retry-after"]
        claude.fail("529")
        r = await c.post("/v1/chat/completions", json={**body, "temperature": 0.1})
        err = assert_openai_error(r, 503)
        assert err["code"] == "upstream_overloaded"
        claude.fail("stream_error")
        async with c.stream("POST", "/v1/chat/completions",
                            json={**body, "stream": True, "temperature": 0.2}) as r:
            raw = await r.aread()
        assert r.status_code == 200
        last = raw.rstrip().rsplit(b"\n\n", 1)[-1]
        assert b"overloaded" in orjson.loads(last[6:])["error"]["message"].encode()


async def test_an_overloaded_anthropic_deployment_falls_to_the_next(
        proxy_factory, claude, mock, org_factory, pg_dsn):
    """claude-3-5-haiku: Anthropic first (529 overloaded), then an OpenAI-kind deployment."""
    second = (f'\n[providers.b]\nbase_url = "{mock.url}/v1"\napi_key_env = ""\n'
              'models = ["claude-3-5-haiku"]\n')
    proxy = proxy_factory(provider_extra=anthropic_provider(claude.url, '["claude-3-5-haiku"]')
                          + second, env={"CLAUDE_TEST_KEY": KEY}, max_attempts=3)
    org = await org_factory()
    claude.fail("529")
    async with httpx.AsyncClient(base_url=proxy.url, headers=org.headers, timeout=30) as c:
        r = await c.post("/v1/chat/completions", json={
            "model": "claude-3-5-haiku", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    assert (r.headers["x-cognitude-provider"], r.headers["x-cognitude-attempts"]) == ("b", "2")
    assert claude.stats()["requests"] == 1 and mock.stats()["requests"] == 1


def test_langchain_tool_calls_and_streamed_usage_through_an_anthropic_model(proxy, org_factory,
                                                                            claude):
    import asyncio

    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    org = asyncio.run(org_factory())
    llm = ChatOpenAI(model=CLAUDE, base_url=proxy.url + "/v1", api_key=org.key,
                     max_retries=0, stream_usage=True)
    asked = HumanMessage("What is the weather in Lima?")
    call = llm.bind_tools([WEATHER], tool_choice="get_weather").invoke([asked])
    assert [c["name"] for c in call.tool_calls] == ["get_weather"]
    assert isinstance(call.tool_calls[0]["args"].get("city"), str)
    assert call.usage_metadata["input_tokens"] > 0
    answer = llm.bind_tools([WEATHER]).invoke(
        [asked, call, ToolMessage("sunny", tool_call_id=call.tool_calls[0]["id"])])
    assert answer.content and not answer.tool_calls
    chunks = list(llm.stream([HumanMessage("Stream a few words, please.")]))
    text = "".join(str(c.content) for c in chunks)
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert text and total.usage_metadata["output_tokens"] > 0
