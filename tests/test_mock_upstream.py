"""The bundled fake upstream, exercised over real HTTP (httpx and the official openai SDK)."""

from __future__ import annotations

import base64
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from cognitude.mock_upstream import MODELS, MockUpstream, build_app

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


@pytest.fixture(autouse=True)
def _clean(mock: MockUpstream) -> Iterator[None]:
    mock.reset()
    mock.configure(latency_ms=0, chunk_delay_ms=0)
    yield
    mock.reset()
    mock.configure(latency_ms=0, chunk_delay_ms=0)


@pytest.fixture
def client(mock: MockUpstream) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mock.url, timeout=10) as c:
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
    assert data["usage"] == {"input_tokens": 4, "output_tokens": 5}

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


def test_stop_is_prompt_with_a_stalled_request() -> None:
    m = MockUpstream()
    m.start()
    m.fail("timeout")
    outcome: list[object] = []

    def call() -> None:
        with httpx.Client(base_url=m.url, timeout=30) as c:
            try:
                outcome.append(c.post(CHAT, json=chat_body()).status_code)
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
