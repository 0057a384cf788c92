"""The bundled fake upstream, exercised over real HTTP (httpx and the official openai SDK)."""

from __future__ import annotations

import base64
import json
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal

import httpx
import jsonschema_rs
import openai
import orjson
import pydantic
import pytest

from cognitude.mock_upstream import MODELS, MockUpstream, build_app
from cognitude.mock_upstream.state import DEFAULT_HUGE_BYTES, DEFAULT_REDIRECT

CHAT = "/v1/chat/completions"


def chat_body(text: str = "hello there world", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


def sse_events(raw: bytes) -> list[bytes]:
    """Split an SSE body, asserting every event is exactly one ``data: ...`` line + blank."""
    assert raw.endswith(b"\n\n")
    events = raw[:-2].split(b"\n\n")
    for ev in events:
        assert ev.startswith(b"data: ") and b"\n" not in ev, ev
    return [ev[len(b"data: ") :] for ev in events]


@pytest.fixture(scope="module")
def mock() -> Iterator[MockUpstream]:
    with MockUpstream() as m:
        yield m


def _defaults(mock: MockUpstream) -> None:
    mock.reset()
    mock.configure(
        latency_ms=0,
        chunk_delay_ms=0,
        redirect_location=DEFAULT_REDIRECT,
        huge_bytes=DEFAULT_HUGE_BYTES,
    )


@pytest.fixture(autouse=True)
def _clean(mock: MockUpstream) -> Iterator[None]:
    _defaults(mock)
    yield
    _defaults(mock)


@pytest.fixture
def client(mock: MockUpstream) -> Iterator[httpx.Client]:
    # Anthropic's version header, as every real client sends it (the mock requires it on
    # /v1/messages, like the real API; OpenAI paths ignore it).
    with httpx.Client(base_url=mock.url, timeout=10,
                      headers={"anthropic-version": "2023-06-01"}) as c:
        yield c


@pytest.fixture
def sdk(mock: MockUpstream) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=mock.url + "/v1", api_key="sk-test", max_retries=0) as c:
        yield c


# --- chat completions ----------------------------------------------------------------------


def test_chat_shape_and_determinism(client: httpx.Client) -> None:
    body = {
        "model": "some-unknown-model",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": [{"type": "text", "text": "second question here"}]},
        ],
    }
    r1 = client.post(CHAT, json=body)
    r2 = client.post(CHAT, json=body)
    assert r1.status_code == 200 and r1.headers["content-type"] == "application/json"
    a, b = r1.json(), r2.json()
    assert a["object"] == "chat.completion"
    assert a["id"].startswith("chatcmpl-mock-") and a["id"] != b["id"]
    assert isinstance(a["created"], int)
    assert a["model"] == "some-unknown-model"
    choice = a["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "mock reply to: second question here"
    assert choice["finish_reason"] == "stop"
    # Whitespace words: 2 + 2 + 2 + 3 over the prompt, 6 in the reply.
    assert a["usage"] == {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}
    assert a["choices"] == b["choices"] and a["usage"] == b["usage"]


def test_chat_echo_is_truncated_to_200_chars(client: httpx.Client) -> None:
    text = "x" * 500
    content = client.post(CHAT, json=chat_body(text)).json()["choices"][0]["message"]["content"]
    assert content == "mock reply to: " + "x" * 200


@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
def test_chat_respects_token_limit(client: httpx.Client, param: str) -> None:
    data = client.post(CHAT, json=chat_body("a b c d e f", **{param: 4})).json()
    assert data["choices"][0]["message"]["content"] == "mock reply to: a"
    assert data["usage"]["completion_tokens"] == 4
    assert data["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("include_usage", [False, True])
def test_stream_sse_framing(client: httpx.Client, include_usage: bool) -> None:
    extra: dict[str, Any] = {"stream": True}
    if include_usage:
        extra["stream_options"] = {"include_usage": True}
    r = client.post(CHAT, json=chat_body("one two three", **extra))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.content)
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    if include_usage:
        *chunks, usage_chunk = chunks
        assert usage_chunk["choices"] == []
        assert usage_chunk["usage"] == {
            "prompt_tokens": 3,
            "completion_tokens": 6,
            "total_tokens": 9,
        }
    assert all(c.get("usage") is None for c in chunks)
    final = chunks[-1]["choices"][0]
    assert final["delta"] == {} and final["finish_reason"] == "stop"
    words = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert len(words) == 6  # one chunk per word
    assert "".join(words) == "mock reply to: one two three"
    # Same content as the non-streamed answer.
    plain = client.post(CHAT, json=chat_body("one two three")).json()
    assert plain["choices"][0]["message"]["content"] == "".join(words)


def test_stream_chunks_are_sent_separately(client: httpx.Client, mock: MockUpstream) -> None:
    mock.configure(chunk_delay_ms=60)
    arrivals: list[float] = []
    start = time.monotonic()
    with client.stream("POST", CHAT, json=chat_body("one two", stream=True)) as r:
        for line in r.iter_lines():
            if line:
                arrivals.append(time.monotonic() - start)
    # role + 5 words ("mock reply to: one two") + finish + [DONE]: 8 events, 7 delays.
    assert len(arrivals) == 8
    assert arrivals[-1] - arrivals[0] >= 7 * 0.06 * 0.9
    assert arrivals[0] < arrivals[-1] - 0.2  # the first chunk did not wait for the rest


def test_openai_sdk_chat_and_stream(sdk: openai.OpenAI, mock: MockUpstream) -> None:
    resp = sdk.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi sdk"}]
    )
    assert resp.choices[0].message.content == "mock reply to: hi sdk"
    assert resp.usage is not None and resp.usage.total_tokens == 2 + 5

    stream = sdk.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "hi sdk"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    with stream:
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "mock reply to: hi sdk"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    assert mock.stats()["last_request"]["headers"]["authorization"] == "Bearer sk-test"


# --- embeddings, models, anthropic -----------------------------------------------------------


def test_embeddings(client: httpx.Client, sdk: openai.OpenAI) -> None:
    body = {"model": "text-embedding-3-small", "input": ["alpha beta", "gamma"]}
    a = client.post("/v1/embeddings", json=body).json()
    b = client.post("/v1/embeddings", json=body).json()
    assert a["object"] == "list" and a["model"] == "text-embedding-3-small"
    assert [d["index"] for d in a["data"]] == [0, 1]
    assert a["data"] == b["data"]  # deterministic
    v0, v1 = (d["embedding"] for d in a["data"])
    assert len(v0) == 8 and v0 != v1
    assert abs(sum(x * x for x in v0) - 1.0) < 1e-9
    assert a["usage"] == {"prompt_tokens": 3, "total_tokens": 3}

    # base64 is what the SDK asks for by default; it must decode to the same vector.
    raw = client.post("/v1/embeddings", json={**body, "encoding_format": "base64"}).json()
    decoded = struct.unpack("<8f", base64.b64decode(raw["data"][0]["embedding"]))
    assert decoded == pytest.approx(v0, abs=1e-6)
    sdk_vec = sdk.embeddings.create(model="text-embedding-3-small", input="alpha beta")
    assert sdk_vec.data[0].embedding == pytest.approx(v0, abs=1e-6)

    dims = client.post("/v1/embeddings", json={**body, "dimensions": 32}).json()
    assert len(dims["data"][0]["embedding"]) == 32
    bad = client.post("/v1/embeddings", json={"model": "m"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"


def test_models(client: httpx.Client, sdk: openai.OpenAI) -> None:
    data = client.get("/v1/models").json()
    assert data["object"] == "list"
    assert [m["id"] for m in data["data"]] == list(MODELS)
    assert all(m["object"] == "model" and m["owned_by"] == "mock" for m in data["data"])
    assert "claude-3-haiku" in {m.id for m in sdk.models.list()}
    assert client.get("/v1/models/gpt-4o").json()["id"] == "gpt-4o"


def test_anthropic_messages(client: httpx.Client) -> None:
    body = {
        "model": "claude-3-haiku",
        "max_tokens": 100,
        "system": "be nice",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hey claude"}]}],
    }
    data = client.post("/v1/messages", json=body).json()
    assert data["type"] == "message" and data["role"] == "assistant"
    assert data["model"] == "claude-3-haiku"
    assert data["content"] == [{"type": "text", "text": "mock reply to: hey claude"}]
    assert data["stop_reason"] == "end_turn"
    assert data["usage"] == {"input_tokens": 4, "cache_creation_input_tokens": 0,
                             "cache_read_input_tokens": 0, "output_tokens": 5}

    raw = client.post("/v1/messages", json={**body, "stream": True}).text
    names = [ln.removeprefix("event: ") for ln in raw.splitlines() if ln.startswith("event: ")]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert names.count("content_block_delta") == 5
    deltas = [
        orjson.loads(ln[6:])["delta"]["text"]
        for ln in raw.splitlines()
        if ln.startswith("data: ") and b"text_delta" in ln.encode()
    ]
    assert "".join(deltas) == "mock reply to: hey claude"

    missing = client.post("/v1/messages", json={k: v for k, v in body.items() if k != "max_tokens"})
    assert missing.status_code == 400
    assert missing.json()["type"] == "error"
    assert missing.json()["error"]["type"] == "invalid_request_error"


# --- validation and auth ----------------------------------------------------------------------


def test_validation_errors(client: httpx.Client) -> None:
    def check(r: httpx.Response, status: int, param: str | None) -> None:
        assert r.status_code == status
        assert r.headers["content-type"] == "application/json"
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["param"] == param
        assert isinstance(err["message"], str) and "code" in err

    check(
        client.post(CHAT, content=b"{not json", headers={"content-type": "application/json"}),
        400,
        None,
    )
    check(client.post(CHAT, json={"messages": [{"role": "user", "content": "x"}]}), 400, "model")
    check(client.post(CHAT, json={"model": "gpt-4o"}), 400, "messages")
    check(client.post(CHAT, json={"model": "gpt-4o", "messages": []}), 400, "messages")
    check(client.post(CHAT, json=chat_body(max_tokens=0)), 400, "max_tokens")
    check(client.post("/v1/nope", json={}), 404, None)
    check(client.get(CHAT), 405, None)


def test_require_key() -> None:
    with MockUpstream(require_key="sk-right") as m, httpx.Client(base_url=m.url) as c:
        for headers in ({}, {"authorization": "Bearer sk-wrong"}):
            r = c.post(CHAT, json=chat_body(), headers=headers)
            assert r.status_code == 401
            assert r.json()["error"]["code"] == "invalid_api_key"
        ok = c.post(CHAT, json=chat_body(), headers={"authorization": "Bearer sk-right"})
        assert ok.status_code == 200
        assert m.stats()["requests"] == 3  # rejected calls are counted too
        with openai.OpenAI(base_url=m.url + "/v1", api_key="sk-wrong", max_retries=0) as sdk:
            with pytest.raises(openai.AuthenticationError):
                sdk.models.list()


def test_build_app_is_a_plain_asgi_callable() -> None:
    app = build_app(latency_ms=5, require_key="k")
    assert callable(app)
    assert app.state.require_key == "k" and app.state.latency_s == pytest.approx(0.005)


# --- control plane -------------------------------------------------------------------------


def test_counters_and_reset(client: httpx.Client, mock: MockUpstream) -> None:
    client.post(CHAT, json=chat_body())
    client.post(CHAT, json={**chat_body(), "model": "gpt-4o"})
    client.get("/v1/models")
    client.post("/v1/embeddings", json={"model": "emb", "input": "x"}, headers={"x-t": "V"})
    stats = client.get("/_mock/stats").json()
    assert stats == mock.stats()  # HTTP and in-process views agree
    assert stats["requests"] == 4
    assert stats["by_path"] == {CHAT: 2, "/v1/models": 1, "/v1/embeddings": 1}
    assert stats["by_model"] == {"gpt-4o-mini": 1, "gpt-4o": 1, "emb": 1}
    last = stats["last_request"]
    assert last["path"] == "/v1/embeddings"
    assert last["headers"]["x-t"] == "V"  # names lowercased, values verbatim
    assert last["body"] == {"model": "emb", "input": "x"}

    assert client.post("/_mock/reset").json() == {"ok": True}
    stats = mock.stats()
    assert stats["requests"] == 0 and stats["by_path"] == {} and stats["last_request"] is None


def test_fail_via_http_counts_and_reset(client: httpx.Client, mock: MockUpstream) -> None:
    assert client.post("/_mock/fail", json={"mode": "500", "count": 2}).status_code == 200
    assert [client.post(CHAT, json=chat_body()).status_code for _ in range(3)] == [500, 500, 200]
    assert mock.stats()["requests"] == 3  # failed calls are counted

    assert client.post("/_mock/fail", json={"mode": "bogus"}).status_code == 400
    mock.fail("429", 3)
    client.post("/_mock/reset")  # also clears pending failures
    assert client.post(CHAT, json=chat_body()).status_code == 200


def test_fail_429(client: httpx.Client, sdk: openai.OpenAI, mock: MockUpstream) -> None:
    mock.fail("429")
    r = client.post(CHAT, json=chat_body())
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    mock.fail("429")
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert mock.stats()["requests"] == 2


def test_fail_500_and_400(client: httpx.Client, sdk: openai.OpenAI, mock: MockUpstream) -> None:
    mock.fail("500")
    r = client.post(CHAT, json=chat_body())
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    mock.fail("400")
    r = client.post(CHAT, json=chat_body())
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert r.json()["error"]["param"] == "messages"
    mock.fail("500")
    with pytest.raises(openai.InternalServerError):
        sdk.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    mock.fail("400")
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])


def test_fail_timeout(mock: MockUpstream) -> None:
    mock.fail("timeout")
    with httpx.Client(base_url=mock.url, timeout=0.3) as c:
        start = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            c.post(CHAT, json=chat_body())
        assert time.monotonic() - start >= 0.3
        assert c.post(CHAT, json=chat_body()).status_code == 200  # only `count` calls stall
    assert mock.stats()["requests"] == 2


@pytest.mark.parametrize("mode", ["timeout", "trickle", "stall_stream"])
def test_stop_is_prompt_with_a_stalled_request(mode: str) -> None:
    m = MockUpstream()
    m.start()
    m.fail(mode)
    outcome: list[object] = []

    def call() -> None:
        with httpx.Client(base_url=m.url, timeout=30) as c:
            try:
                body = chat_body(stream=mode != "timeout")
                outcome.append(c.post(CHAT, json=body).status_code)
            except httpx.HTTPError as exc:
                outcome.append(exc)

    t = threading.Thread(target=call)
    t.start()
    while m.stats()["requests"] == 0:
        time.sleep(0.01)
    start = time.monotonic()
    m.stop()
    assert time.monotonic() - start < 2.0
    t.join(5)
    assert outcome  # the client was answered or cut off, not left hanging


def test_fail_drop_stream(client: httpx.Client, mock: MockUpstream) -> None:
    mock.fail("drop")
    received: list[bytes] = []
    with pytest.raises(httpx.RemoteProtocolError):
        with client.stream("POST", CHAT, json=chat_body(stream=True)) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line:
                    received.append(line.encode())
    assert len(received) == 2
    assert orjson.loads(received[0][6:])["choices"][0]["delta"]["role"] == "assistant"
    assert b"[DONE]" not in b"".join(received)
    assert client.post(CHAT, json=chat_body()).status_code == 200  # server still healthy


def test_fail_drop_non_stream(client: httpx.Client, sdk: openai.OpenAI, mock: MockUpstream) -> None:
    mock.fail("drop")
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(CHAT, json=chat_body())
    mock.fail("drop")
    with pytest.raises(openai.APIConnectionError):
        sdk.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert mock.stats()["requests"] == 2


def test_latency_config(client: httpx.Client, mock: MockUpstream) -> None:
    assert client.post("/_mock/config", json={"latency_ms": 200}).json()["latency_ms"] == 200
    start = time.monotonic()
    assert client.post(CHAT, json=chat_body()).status_code == 200
    assert time.monotonic() - start >= 0.2
    mock.configure(latency_ms=0)
    with MockUpstream(latency_ms=150) as slow, httpx.Client(base_url=slow.url) as c:
        start = time.monotonic()
        c.get("/v1/models")
        assert time.monotonic() - start >= 0.15


async def test_async_client_streams(mock: MockUpstream) -> None:
    async with httpx.AsyncClient(base_url=mock.url) as c:
        async with c.stream("POST", CHAT, json=chat_body("a b", stream=True)) as r:
            lines = [ln async for ln in r.aiter_lines() if ln]
    assert lines[-1] == "data: [DONE]" and len(lines) == 8


# --- tools, n, response_format ---------------------------------------------------------------

WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "when": {"type": "string", "format": "date-time"},
    },
    "required": ["city", "unit", "days"],
}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather", "parameters": WEATHER_PARAMS},
}
TIME = {"type": "function", "function": {"name": "get_time"}}
REPORT_SCHEMA = {  # strict-mode legal: every object closed, every property required
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "at": {"type": "string", "format": "date-time"},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "count": {"type": "integer", "exclusiveMinimum": 10},
        "ok": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}},
        "note": {"type": ["string", "null"]},
        "owner": {"$ref": "#/$defs/person"},
        "either": {"anyOf": [{"type": "null"}, {"type": "integer"}]},
    },
    "required": ["title", "at", "score", "count", "ok", "tags", "note", "owner", "either"],
    "additionalProperties": False,
    "$defs": {
        "person": {
            "type": "object",
            "properties": {"name": {"type": "string", "minLength": 12}},
            "required": ["name"],
            "additionalProperties": False,
        }
    },
}


def fn(name: str, **extra: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, **extra}}


def call_turn(*, answer_id: str | None = "call_1", call: Any = None) -> list[dict[str, Any]]:
    """user -> assistant with one tool call -> (optionally) its tool result."""
    call = call or {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": "{}"},
    }
    msgs: list[dict[str, Any]] = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
    ]
    if answer_id is not None:
        msgs.append({"role": "tool", "tool_call_id": answer_id, "content": "sunny"})
    return msgs


def chunks_of(raw: bytes) -> list[dict[str, Any]]:
    events = sse_events(raw)
    assert events[-1] == b"[DONE]"
    return [orjson.loads(e) for e in events[:-1]]


def reassemble(chunks: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per choice index: text, tool calls and finish_reason, put together as an SDK does."""
    out: dict[int, dict[str, Any]] = {}
    for c in chunks:
        assert len(c["choices"]) <= 1  # the real API sends one choice per chunk
        for ch in c["choices"]:
            acc = out.setdefault(ch["index"], {"content": "", "calls": {}, "finish": None})
            assert acc["finish"] is None, "a delta after the choice's finish chunk"
            delta = ch["delta"]
            acc["content"] += delta.get("content") or ""
            for tc in delta.get("tool_calls", []):
                if "id" in tc:  # the call's first delta names it
                    assert tc["type"] == "function" and tc["function"]["arguments"] == ""
                    acc["calls"][tc["index"]] = {"id": tc["id"], **tc["function"]}
                else:
                    assert set(tc) == {"index", "function"}, tc
                    assert set(tc["function"]) == {"arguments"}, tc
                    acc["calls"][tc["index"]]["arguments"] += tc["function"]["arguments"]
            acc["finish"] = ch["finish_reason"]
    return out


_SCHEMA_FMT = {"type": "json_schema", "json_schema": {"name": "report", "schema": REPORT_SCHEMA}}
_LOOSE = {"type": "object", "properties": {"a": {"type": "string"}}}

INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("tools-not-array", {"tools": WEATHER}, "tools"),
    ("tools-empty", {"tools": []}, "tools"),
    ("tool-type", {"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "tools[0].type"),
    ("tool-no-type", {"tools": [{"function": {"name": "f"}}]}, "tools[0].type"),
    ("tool-no-function", {"tools": [{"type": "function"}]}, "tools[0].function"),
    (
        "tool-no-name",
        {"tools": [fn("f"), {"type": "function", "function": {}}]},
        "tools[1].function.name",
    ),
    ("name-pattern", {"tools": [fn("get weather")]}, "tools[0].function.name"),
    ("name-length", {"tools": [TIME, fn("x" * 65)]}, "tools[1].function.name"),
    ("description-type", {"tools": [fn("f", description=3)]}, "tools[0].function.description"),
    ("parameters-type", {"tools": [fn("f", parameters=[])]}, "tools[0].function.parameters"),
    (
        "parameters-root",
        {"tools": [fn("f", parameters={"type": "string"})]},
        "tools[0].function.parameters",
    ),
    (
        "strict-parameters",
        {"tools": [fn("f", strict=True, parameters=_LOOSE)]},
        "tools[0].function.parameters",
    ),
    ("choice-value", {"tools": [TIME], "tool_choice": "sometimes"}, "tool_choice"),
    ("choice-unknown", {"tools": [TIME], "tool_choice": fn("nope")}, "tool_choice"),
    (
        "choice-no-name",
        {"tools": [TIME], "tool_choice": {"type": "function"}},
        "tool_choice.function.name",
    ),
    ("choice-without-tools", {"tool_choice": "auto"}, "tool_choice"),
    ("parallel-without-tools", {"parallel_tool_calls": True}, "parallel_tool_calls"),
    (
        "tool-first",
        {"messages": [{"role": "tool", "tool_call_id": "c", "content": "x"}]},
        "messages.[0].role",
    ),
    (
        "tool-no-id",
        {"messages": [*call_turn(answer_id=None), {"role": "tool", "content": "x"}]},
        "messages.[2].tool_call_id",
    ),
    ("tool-wrong-id", {"messages": call_turn(answer_id="call_2")}, "messages.[2].tool_call_id"),
    ("unanswered-at-end", {"messages": call_turn(answer_id=None)}, "messages.[1].role"),
    (
        "unanswered-then-user",
        {"messages": [*call_turn(answer_id=None), {"role": "user", "content": "and?"}]},
        "messages.[1].role",
    ),
    (
        "call-no-id",
        {"messages": call_turn(call={"type": "function", "function": {}})},
        "messages[1].tool_calls[0].id",
    ),
    ("n-zero", {"n": 0}, "n"),
    ("n-too-big", {"n": 129}, "n"),
    ("n-string", {"n": "2"}, "n"),
    ("n-bool", {"n": True}, "n"),
    ("format-type", {"response_format": "json"}, "response_format"),
    ("format-unknown", {"response_format": {"type": "xml"}}, "response_format"),
    ("format-no-type", {"response_format": {}}, "response_format"),
    ("schema-missing", {"response_format": {"type": "json_schema"}}, "response_format"),
    (
        "schema-name",
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "a b", "schema": _LOOSE},
            }
        },
        "response_format",
    ),
    (
        "schema-no-schema",
        {"response_format": {"type": "json_schema", "json_schema": {"name": "s"}}},
        "response_format",
    ),
    (
        "schema-strict-type",
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "s", "schema": _LOOSE, "strict": "yes"},
            }
        },
        "response_format",
    ),
    (
        "schema-strict-rules",
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "s", "schema": _LOOSE, "strict": True},
            }
        },
        "response_format",
    ),
    ("json-word-missing", {"response_format": {"type": "json_object"}}, "messages"),
]


@pytest.mark.parametrize(("extra", "param"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
@pytest.mark.parametrize("stream", [False, True])
def test_chat_options_validation(
    client: httpx.Client, extra: dict[str, Any], param: str, stream: bool
) -> None:
    r = client.post(CHAT, json=chat_body(**extra, stream=stream))
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["param"] == param, err


def test_chat_options_validation_messages(client: httpx.Client) -> None:
    def message(**extra: Any) -> str:
        return str(client.post(CHAT, json=chat_body(**extra)).json()["error"]["message"])

    assert message(messages=[{"role": "tool", "tool_call_id": "c", "content": "x"}]) == (
        "Invalid parameter: messages with role 'tool' must be a response to a preceeding "
        "message with 'tool_calls'."
    )
    assert message(response_format={"type": "json_object"}) == (
        "'messages' must contain the word 'json' in some form, to use 'response_format' of "
        "type 'json_object'."
    )
    assert message(messages=call_turn(answer_id=None)).endswith(
        "The following tool_call_ids did not have response messages: call_1"
    )
    # Accepted: a full turn, tool_choice "none", explicit nulls, the word "JSON" in a system
    # message, the default text format.
    ok = [
        {"messages": call_turn()},
        {"tools": [TIME], "tool_choice": "none", "parallel_tool_calls": False},
        {"tools": None, "tool_choice": None, "n": None, "response_format": None},
        {
            "messages": [
                {"role": "system", "content": "Answer in JSON."},
                {"role": "user", "content": "hi"},
            ],
            "response_format": {"type": "json_object"},
        },
        {"response_format": {"type": "text"}},
    ]
    for extra in ok:
        assert client.post(CHAT, json=chat_body(**extra)).status_code == 200, extra


def test_tool_call(client: httpx.Client) -> None:
    data = client.post(CHAT, json=chat_body("weather in Paris?", tools=[WEATHER, TIME])).json()
    seq = data["id"].removeprefix("chatcmpl-mock-")
    [choice] = data["choices"]
    assert choice["finish_reason"] == "tool_calls"
    msg = choice["message"]
    assert msg["role"] == "assistant" and msg["content"] is None
    [call] = msg["tool_calls"]
    assert call["id"] == f"call_mock_{seq}_0" and call["type"] == "function"
    assert call["function"]["name"] == "get_weather"  # the first tool
    args = json.loads(call["function"]["arguments"])
    assert set(args) == set(WEATHER_PARAMS["required"])
    assert jsonschema_rs.validator_for(WEATHER_PARAMS).is_valid(args)
    assert data["usage"]["completion_tokens"] == len(call["function"]["arguments"].split())


@pytest.mark.parametrize(
    ("choice", "name"),
    [
        ("auto", "get_weather"),
        ("required", "get_weather"),
        (fn("get_time"), "get_time"),
        ("none", None),
    ],
)
def test_tool_choice(client: httpx.Client, choice: Any, name: str | None) -> None:
    body = chat_body("what now", tools=[WEATHER, TIME], tool_choice=choice)
    msg = client.post(CHAT, json=body).json()["choices"][0]["message"]
    if name is None:
        assert msg["content"] == "mock reply to: what now" and "tool_calls" not in msg
    else:
        assert msg["tool_calls"][0]["function"]["name"] == name
    if name == "get_time":  # no parameters schema: an empty object
        assert msg["tool_calls"][0]["function"]["arguments"] == "{}"


def test_tool_call_stream(client: httpx.Client) -> None:
    body = chat_body("weather?", tools=[WEATHER])
    plain = client.post(CHAT, json=body).json()
    r = client.post(CHAT, json={**body, "stream": True, "stream_options": {"include_usage": True}})
    *chunks, usage_chunk = chunks_of(r.content)
    seq = chunks[0]["id"].removeprefix("chatcmpl-mock-")
    assert chunks[0]["choices"][0]["delta"] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "index": 0,
                "id": f"call_mock_{seq}_0",
                "type": "function",
                "function": {"name": "get_weather", "arguments": ""},
            }
        ],
    }
    assert len(chunks) > 4  # the arguments arrive in several fragments
    assert chunks[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "tool_calls",
    }
    assert all(c["usage"] is None for c in chunks)
    [call] = reassemble(chunks)[0]["calls"].values()
    assert call["name"] == "get_weather"
    # Same arguments as the non-streamed answer, and valid against the schema.
    assert (
        call["arguments"]
        == plain["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    )
    assert jsonschema_rs.validator_for(WEATHER_PARAMS).is_valid(json.loads(call["arguments"]))
    assert usage_chunk["usage"]["completion_tokens"] == plain["usage"]["completion_tokens"]


@pytest.mark.parametrize("stream", [False, True])
def test_tool_loop_ends_in_text(client: httpx.Client, stream: bool) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "weather in Paris?"}]
    body: dict[str, Any] = {"model": "gpt-4o", "tools": [WEATHER], "tool_choice": "required"}
    first = client.post(CHAT, json={**body, "messages": messages}).json()
    msg = first["choices"][0]["message"]
    messages += [
        msg,
        {"role": "tool", "tool_call_id": msg["tool_calls"][0]["id"], "content": "sunny, 21 C"},
    ]
    r = client.post(CHAT, json={**body, "messages": messages, "stream": stream})
    if stream:
        answer = reassemble(chunks_of(r.content))[0]
        text, finish, calls = answer["content"], answer["finish"], answer["calls"]
    else:
        choice = r.json()["choices"][0]
        text, finish, calls = choice["message"]["content"], choice["finish_reason"], {}
        assert "tool_calls" not in choice["message"]
    assert (text, finish, calls) == ("mock reply to tool result: sunny, 21 C", "stop", {})


def test_n_choices(client: httpx.Client) -> None:
    body = chat_body("one two", n=3)
    data = client.post(CHAT, json=body).json()
    expected = ["mock reply to: one two", "mock reply to: one two #1", "mock reply to: one two #2"]
    assert [c["index"] for c in data["choices"]] == [0, 1, 2]
    assert [c["message"]["content"] for c in data["choices"]] == expected
    assert all(c["finish_reason"] == "stop" for c in data["choices"])
    assert data["usage"]["completion_tokens"] == 5 + 6 + 6

    usage = {"include_usage": True}
    raw = client.post(CHAT, json={**body, "stream": True, "stream_options": usage}).content
    *chunks, usage_chunk = chunks_of(raw)
    indexes = [c["choices"][0]["index"] for c in chunks]
    assert indexes[:3] == [0, 1, 2]  # interleaved, as parallel choices arrive
    answers = reassemble(chunks)
    assert [answers[i]["content"] for i in range(3)] == expected
    assert [answers[i]["finish"] for i in range(3)] == ["stop"] * 3
    firsts = [next(c for c in chunks if c["choices"][0]["index"] == i) for i in range(3)]
    assert all(f["choices"][0]["delta"] == {"role": "assistant", "content": ""} for f in firsts)
    assert usage_chunk["usage"] == data["usage"]

    tools = client.post(CHAT, json=chat_body(n=2, tools=[WEATHER])).json()
    seq = tools["id"].removeprefix("chatcmpl-mock-")
    ids = [c["message"]["tool_calls"][0]["id"] for c in tools["choices"]]
    assert ids == [f"call_mock_{seq}_0", f"call_mock_{seq}_1"]


@pytest.mark.parametrize("stream", [False, True])
def test_json_object(client: httpx.Client, stream: bool) -> None:
    body = chat_body("answer in JSON please", response_format={"type": "json_object"})
    r = client.post(CHAT, json={**body, "stream": stream})
    if stream:
        chunks = chunks_of(r.content)
        assert len(chunks) > 4  # split into deltas like any text
        content = reassemble(chunks)[0]["content"]
    else:
        content = r.json()["choices"][0]["message"]["content"]
    assert json.loads(content) == {"reply": "mock reply to: answer in JSON please"}


@pytest.mark.parametrize(
    "schema",
    [
        REPORT_SCHEMA,
        {
            "type": "object",
            "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
            "required": ["b"],
        },
        {"type": "array", "items": {"type": "number", "exclusiveMaximum": 0}, "minItems": 2},
        {
            "allOf": [
                {"type": "object", "properties": {"x": {"const": 3}}, "required": ["x"]},
                {"required": ["y"], "properties": {"y": {"type": "boolean"}}},
            ]
        },
    ],
    ids=["strict-report", "optional-keys", "array-root", "all-of"],
)
@pytest.mark.parametrize("stream", [False, True])
def test_json_schema(client: httpx.Client, schema: dict[str, Any], stream: bool) -> None:
    strict = schema is REPORT_SCHEMA
    spec = {"name": "report", "schema": schema, "strict": strict}
    body = chat_body(response_format={"type": "json_schema", "json_schema": spec}, stream=stream)
    r = client.post(CHAT, json=body)
    assert r.status_code == 200, r.text
    if stream:
        content = reassemble(chunks_of(r.content))[0]["content"]
    else:
        content = r.json()["choices"][0]["message"]["content"]
    value = json.loads(content)
    assert jsonschema_rs.validator_for(schema).is_valid(value), value


def test_openai_sdk_tools_and_json_schema(sdk: openai.OpenAI) -> None:
    ask: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
    resp = sdk.chat.completions.create(model="gpt-4o", messages=ask, tools=[WEATHER])
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert set(json.loads(call.function.arguments)) == {"city", "unit", "days"}

    stream = sdk.chat.completions.create(model="gpt-4o", messages=ask, tools=[WEATHER], stream=True)
    with stream:
        deltas = [c.choices[0].delta for c in stream if c.choices]
    streamed = "".join(
        d.tool_calls[0].function.arguments or ""
        for d in deltas
        if d.tool_calls
        if d.tool_calls[0].function
    )
    assert streamed == call.function.arguments

    reply = sdk.chat.completions.create(
        model="gpt-4o",
        messages=[
            *ask,
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "rain"},
        ],
        tools=[WEATHER],
    )
    assert reply.choices[0].message.content == "mock reply to tool result: rain"

    class Day(pydantic.BaseModel):
        date: str
        high: float
        sky: Literal["sun", "rain"]

    class Forecast(pydantic.BaseModel):
        city: str
        days: list[Day]
        alert: str | None

    # parse() sends the model as a strict json_schema, so this also proves the mock accepts
    # what the SDK generates, and that its answer parses back into the model.
    parsed = sdk.chat.completions.parse(model="gpt-4o", messages=ask, response_format=Forecast)
    forecast = parsed.choices[0].message.parsed
    assert isinstance(forecast, Forecast) and forecast.days[0].sky == "sun"
    tool = openai.pydantic_function_tool(Forecast, name="forecast")
    parsed = sdk.chat.completions.parse(model="gpt-4o", messages=ask, tools=[tool])
    calls = parsed.choices[0].message.tool_calls
    assert calls and isinstance(calls[0].function.parsed_arguments, Forecast)


# --- failure modes for the proxy's regression tests -------------------------------------------


def test_fail_redirect(client: httpx.Client, mock: MockUpstream) -> None:
    mock.fail("redirect")
    r = client.post(CHAT, json=chat_body())  # httpx does not follow redirects by default
    assert r.status_code == 302 and r.content == b""
    assert r.headers["location"] == "http://169.254.169.254/latest/meta-data/"
    assert r.headers["content-length"] == "0"

    cfg = client.post("/_mock/config", json={"redirect_location": "http://10.0.0.1/x"}).json()
    assert cfg["redirect_location"] == "http://10.0.0.1/x"
    mock.fail("redirect")
    r = client.post(CHAT, json=chat_body(stream=True))  # stream or not, any path
    assert r.status_code == 302 and r.headers["location"] == "http://10.0.0.1/x"
    mock.configure(redirect_location="https://example.com/elsewhere")
    mock.fail("redirect")
    assert client.get("/v1/models").headers["location"] == "https://example.com/elsewhere"
    assert client.post(CHAT, json=chat_body()).status_code == 200  # one failure, one call


@pytest.mark.parametrize("stream", [False, True])
def test_fail_not_json(client: httpx.Client, mock: MockUpstream, stream: bool) -> None:
    mock.fail("not_json")
    r = client.post(CHAT, json=chat_body(stream=stream))
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.content == b"<html><body>upstream hiccup</body></html>"


def test_fail_no_usage(client: httpx.Client, mock: MockUpstream) -> None:
    body = chat_body("a b", stream=True, stream_options={"include_usage": True})
    mock.fail("no_usage")
    raw = client.post(CHAT, json=body).content
    chunks = chunks_of(raw)
    assert b"usage" not in raw and all(c["choices"] for c in chunks)
    assert reassemble(chunks)[0] == {"content": "mock reply to: a b", "calls": {}, "finish": "stop"}
    assert chunks_of(client.post(CHAT, json=body).content)[-1]["usage"] is not None  # next: normal


def test_fail_trickle(mock: MockUpstream) -> None:
    mock.fail("trickle")
    mock.configure(chunk_delay_ms=20)
    with httpx.Client(base_url=mock.url, timeout=5) as c:
        got = b""
        with c.stream("POST", CHAT, json=chat_body(stream=True)) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            start = time.monotonic()
            for piece in r.iter_raw():
                got += piece
                if time.monotonic() - start > 0.3:
                    break  # the client gives up; closing the response disconnects
        assert set(got) == {ord("x")}  # never a newline, so never an event
        assert 5 <= len(got) <= 25  # one byte per ~20 ms
        mock.configure(chunk_delay_ms=0)
        assert c.post(CHAT, json=chat_body()).status_code == 200


def test_fail_stall_stream(mock: MockUpstream) -> None:
    mock.fail("stall_stream")
    received: list[str] = []
    with httpx.Client(base_url=mock.url, timeout=httpx.Timeout(5, read=0.4)) as c:
        with pytest.raises(httpx.ReadTimeout):
            with c.stream("POST", CHAT, json=chat_body(stream=True)) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    if line:
                        received.append(line)
        assert len(received) == 2  # two events, then silence with the connection open
        assert orjson.loads(received[0][6:])["choices"][0]["delta"]["role"] == "assistant"
        assert c.post(CHAT, json=chat_body()).status_code == 200


def test_held_streams_end_after_the_hold(
    client: httpx.Client, mock: MockUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("cognitude.mock_upstream.asgi.HOLD_S", 0.3)  # 60 s in real life
    mock.fail("trickle")
    start = time.monotonic()
    body = client.post(CHAT, json=chat_body(stream=True)).content
    assert 0.25 <= time.monotonic() - start < 3 and body and set(body) == {ord("x")}
    mock.fail("stall_stream")
    events = client.post(CHAT, json=chat_body(stream=True)).content.split(b"\n\n")
    assert len(events) == 3 and events[-1] == b""  # two events, then the body just ends


def test_fail_huge(client: httpx.Client, mock: MockUpstream) -> None:
    mock.fail("huge")
    data = client.post(CHAT, json=chat_body(max_tokens=5)).json()  # valid JSON, max_tokens ignored
    content = data["choices"][0]["message"]["content"]
    assert len(content) == 1 << 20 and content.startswith("huge huge")
    assert data["usage"]["completion_tokens"] == len(content.split())
    assert data["choices"][0]["finish_reason"] == "stop"
    mock.configure(huge_bytes=1000)
    mock.fail("huge")
    small = client.post(CHAT, json=chat_body()).json()
    assert len(small["choices"][0]["message"]["content"]) == 1000


@pytest.mark.parametrize(
    ("mode", "path", "body"),
    [
        ("trickle", CHAT, chat_body()),
        ("stall_stream", CHAT, chat_body()),
        ("no_usage", CHAT, chat_body()),
        ("no_usage", "/v1/messages", {**chat_body(stream=True), "max_tokens": 5}),
        ("huge", CHAT, chat_body(stream=True)),
        ("huge", "/v1/embeddings", {"model": "e", "input": "x"}),
    ],
)
def test_fail_mode_on_a_request_it_cannot_shape_is_a_500(
    client: httpx.Client, mock: MockUpstream, mode: str, path: str, body: dict[str, Any]
) -> None:
    mock.fail(mode)
    r = client.post(path, json=body)
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    assert f"'{mode}'" in r.text
    assert client.post(path, json=body).status_code == 200


def test_config_rejects_bad_values(client: httpx.Client, mock: MockUpstream) -> None:
    for bad in (
        {"latency_ms": -1},
        {"huge_bytes": -1},
        {"huge_bytes": "big"},
        {"huge_bytes": 1 << 40},
        {"redirect_location": ""},
        {"redirect_location": "http://x/\r\nset-cookie: a=b"},
        {"latencyms": 5},  # unknown keys are an error, not silently ignored
        [1, 2],
    ):
        r = client.post("/_mock/config", json=bad)
        assert r.status_code == 400 and r.json()["error"]["message"], bad
    cfg = mock.configure(huge_bytes=10)
    assert cfg == client.get("/_mock/config").json()
    assert cfg == {
        "latency_ms": 0.0,
        "chunk_delay_ms": 0.0,
        "redirect_location": DEFAULT_REDIRECT,
        "huge_bytes": 10,
    }


def test_serve_on_an_inherited_socket() -> None:
    """``serve(fd=...)``: the parent binds the port, the mock serves on the descriptor."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        code = f"from cognitude.mock_upstream import serve; serve(fd={sock.fileno()})"
        proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=[sock.fileno()])
    try:
        deadline = time.monotonic() + 20
        while True:
            try:  # the kernel queues connections from the start; this waits for the server
                r = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
        assert r.status_code == 200 and r.json()["object"] == "list"
    finally:
        proc.terminate()
        proc.wait(10)
    # uvicorn re-raises SIGTERM after its graceful shutdown (the CLI turns that into 0).
    assert proc.returncode in (0, -signal.SIGTERM)
