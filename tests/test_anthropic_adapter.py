"""The Anthropic adapter: OpenAI chat requests become Messages requests, and Messages answers,
streams and errors come back in OpenAI's shape -- pure functions, no servers."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from cognitude.errors import InvalidRequest, UpstreamError, UpstreamHTTPError
from cognitude.hotpath.sse import StreamAccumulator
from cognitude.mock_upstream import anthropic_api, anthropic_validate
from cognitude.providers import anthropic, anthropic_stream
from cognitude.providers.anthropic import ANTHROPIC, AnthropicAdapter
from cognitude.providers.anthropic_stream import AnthropicStream

NOW = 1_700_000_000
# Every top-level field a Messages request may carry; anything else the API refuses.
MESSAGES_FIELDS = {"model", "messages", "system", "max_tokens", "stop_sequences", "stream",
                   "temperature", "top_p", "metadata", "tools", "tool_choice"}


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = SimpleNamespace(time=lambda: NOW + 0.7)
    monkeypatch.setattr(anthropic, "time", clock)
    monkeypatch.setattr(anthropic_stream, "time", clock)


def send(doc: dict[str, Any], *, stream: bool = False, max_output: int = 8192,
         model: str = "claude-3-5-haiku", valid: bool = True) -> tuple[dict[str, Any], bool]:
    body, strip = ANTHROPIC.upstream_body({"model": "smart", **doc}, b"", model=model,
                                          chat_stream=stream, stream_usage=True,
                                          max_output=max_output)
    out = orjson.loads(body)
    assert set(out) <= MESSAGES_FIELDS
    if valid:  # the bundled mock's checks are as strict as the real API's
        assert anthropic_validate.validate(out) is None
    return out, strip


def user(text: Any) -> dict[str, Any]:
    return {"role": "user", "content": text}


def refused(doc: dict[str, Any]) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as exc:
        send(doc)
    return exc.value


# --- headers and paths ----------------------------------------------------------------------

def test_headers_and_paths():
    assert ANTHROPIC.kind == "anthropic" and isinstance(ANTHROPIC, AnthropicAdapter)
    assert ANTHROPIC.headers("sk-ant-1") == {"Content-Type": "application/json",
                                             "x-api-key": "sk-ant-1",
                                             "anthropic-version": "2023-06-01"}
    assert ANTHROPIC.headers("") == {"Content-Type": "application/json",
                                     "anthropic-version": "2023-06-01"}
    assert ANTHROPIC.path("chat") == "/messages"
    assert ANTHROPIC.path("embeddings") is None


# --- the request ----------------------------------------------------------------------------

def test_a_plain_request_carries_exactly_model_messages_and_max_tokens():
    out, strip = send({"messages": [user("hi")]}, model="claude-sonnet-4")
    assert out == {"model": "claude-sonnet-4", "messages": [{"role": "user", "content": "hi"}],
                   "max_tokens": 8192}
    assert strip is False


def test_system_and_developer_messages_become_one_system_prompt():
    out, _ = send({"messages": [
        {"role": "system", "content": "Be brief."},
        user("hi"),
        {"role": "developer", "content": [{"type": "text", "text": "Use French."},
                                          {"type": "text", "text": "No emoji."}]},
        {"role": "system", "content": "Sign as Bot."},
    ]})
    assert out["system"] == "Be brief.\n\nUse French.\n\nNo emoji.\n\nSign as Bot."
    assert out["messages"] == [{"role": "user", "content": "hi"}]


def test_consecutive_messages_of_one_side_merge_into_one_turn():
    out, _ = send({"messages": [
        user("one"), user([{"type": "text", "text": "two"}]),
        {"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"},
        user("three"),
    ]})
    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "one"},
                                     {"type": "text", "text": "two"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a"},
                                          {"type": "text", "text": "b"}]},
        {"role": "user", "content": "three"},
    ]


def test_a_conversation_starting_with_the_assistant_is_sent_as_it_is():
    out, _ = send({"messages": [{"role": "assistant", "content": "Hello!"}, user("hi")]},
                  valid=False)
    assert [t["role"] for t in out["messages"]] == ["assistant", "user"]
    refusal = anthropic_validate.validate(out)  # the upstream says what is wrong
    assert refusal is not None and refusal[0] == 400


def test_images_become_base64_and_url_sources():
    out, _ = send({"messages": [user([
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg",
                                            "detail": "high"}},
    ])]})
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


@pytest.mark.parametrize("url", ["ftp://example.com/a.png", "data:image/png,rawbytes",
                                 "file:///etc/passwd"])
def test_an_image_anthropic_cannot_fetch_is_refused(url):
    err = refused({"messages": [user([{"type": "image_url", "image_url": {"url": url}}])]})
    assert err.param == "messages[0].content[0]"


def test_other_content_parts_are_refused():
    err = refused({"messages": [user([{"type": "input_audio", "input_audio": {}}])]})
    assert err.param == "messages[0].content[0]" and "input_audio" in err.message


WEATHER = {"type": "function", "function": {
    "name": "weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def test_tools_become_input_schemas():
    out, _ = send({"messages": [user("hi")], "tools": [
        WEATHER, {"type": "function", "function": {"name": "now"}}]})
    assert out["tools"] == [
        {"name": "weather", "description": "Weather in a city",
         "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in out


@pytest.mark.parametrize(("choice", "parallel", "expected"), [
    ("auto", None, {"type": "auto"}),
    ("required", None, {"type": "any"}),
    ("none", None, {"type": "none"}),
    ({"type": "function", "function": {"name": "weather"}}, None,
     {"type": "tool", "name": "weather"}),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
    ({"type": "function", "function": {"name": "weather"}}, False,
     {"type": "tool", "name": "weather", "disable_parallel_tool_use": True}),
    ("none", False, {"type": "none"}),
    ("auto", True, {"type": "auto"}),
])
def test_tool_choice(choice, parallel, expected):
    doc: dict[str, Any] = {"messages": [user("hi")], "tools": [WEATHER]}
    if choice is not None:
        doc["tool_choice"] = choice
    if parallel is not None:
        doc["parallel_tool_calls"] = parallel
    assert send(doc)[0]["tool_choice"] == expected


@pytest.mark.parametrize("fields", [{"parallel_tool_calls": False}, {"tool_choice": "auto"},
                                    {"tool_choice": "none"}, {"tools": []}])
def test_tool_fields_without_tools_are_dropped(fields):
    out, _ = send({"messages": [user("hi")], **fields})
    assert set(out) == {"model", "messages", "max_tokens"}


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "f"}}])
def test_a_tool_choice_that_needs_tools_without_tools_is_refused(choice):
    assert refused({"messages": [user("hi")], "tool_choice": choice}).param == "tool_choice"


@pytest.mark.parametrize("choice", ["always", {"type": "function"}, {"type": "allowed_tools"}])
def test_a_tool_choice_anthropic_cannot_express_is_refused(choice):
    err = refused({"messages": [user("hi")], "tools": [WEATHER], "tool_choice": choice})
    assert err.param == "tool_choice"


def test_multi_turn_tool_use_puts_parallel_results_in_one_user_turn():
    out, _ = send({"tools": [WEATHER], "messages": [
        {"role": "system", "content": "You report weather."},
        user("Weather in Paris and Rome?"),
        {"role": "assistant", "content": "Checking both.", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function",
             "function": {"name": "weather", "arguments": '{"city":"Rome"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
        {"role": "tool", "tool_call_id": "call_2",
         "content": [{"type": "text", "text": "22C"}, {"type": "text", "text": "cloudy"}]},
        user("And which is warmer?"),
    ]})
    assert out["system"] == "You report weather."
    assert out["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking both."},
            {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_2", "name": "weather", "input": {"city": "Rome"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "18C, sunny"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "22C\n\ncloudy"},
            {"type": "text", "text": "And which is warmer?"},
        ]},
    ]


def test_an_assistant_turn_with_only_tool_calls_and_null_content():
    out, _ = send({"messages": [user("time?"), {"role": "assistant", "content": None,
                                                 "tool_calls": [{"id": "c", "type": "function",
                                                                 "function": {"name": "now",
                                                                              "arguments": ""}}]},
                                {"role": "tool", "tool_call_id": "c", "content": "12:00"}]})
    assert out["messages"][1] == {"role": "assistant", "content": [
        {"type": "tool_use", "id": "c", "name": "now", "input": {}}]}
    assert out["messages"][2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "c", "content": "12:00"}]}


@pytest.mark.parametrize("arguments", ['{"city": "Par', "[1, 2]", '"text"'])
def test_tool_arguments_that_are_not_a_json_object_are_refused(arguments):
    err = refused({"messages": [user("hi"), {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "w", "arguments": arguments}}]}]})
    assert err.param == "messages[1].tool_calls[0].function.arguments"
    assert "message 1" in err.message


def test_a_tool_message_without_its_call_id_is_refused():
    err = refused({"messages": [user("hi"), {"role": "tool", "content": "x"}]})
    assert err.param == "messages[1].tool_call_id"


def test_an_unknown_role_is_refused():
    err = refused({"messages": [{"role": "function", "name": "f", "content": "x"}]})
    assert err.param == "messages[0].role"


@pytest.mark.parametrize(("stop", "expected"), [
    ("END", ["END"]), (["a", "b"], ["a", "b"]), ([], None), (None, None), ("", None)])
def test_stop_becomes_stop_sequences(stop, expected):
    out, _ = send({"messages": [user("hi")], "stop": stop})
    assert out.get("stop_sequences") == expected


def test_a_stop_of_the_wrong_type_is_refused():
    assert refused({"messages": [user("hi")], "stop": [1, 2]}).param == "stop"


@pytest.mark.parametrize(("fields", "max_output", "expected"), [
    ({}, 8192, 8192),
    ({}, 0, 4096),
    ({"max_tokens": 50}, 8192, 50),
    ({"max_completion_tokens": 70}, 8192, 70),
    ({"max_completion_tokens": 70, "max_tokens": 50}, 8192, 70),
])
def test_max_tokens_from_the_request_else_the_models_output_limit(fields, max_output, expected):
    out, _ = send({"messages": [user("hi")], **fields}, max_output=max_output)
    assert out["max_tokens"] == expected


@pytest.mark.parametrize(("fields", "expected"), [
    ({"temperature": 0.3}, {"temperature": 0.3}),
    ({"temperature": 1.7}, {"temperature": 1}),
    ({"temperature": -0.5}, {"temperature": 0}),
    ({"top_p": 0.9}, {"top_p": 0.9}),
    ({"temperature": 0.2, "top_p": 0.9}, {"temperature": 0.2}),
    ({"temperature": 2, "top_p": 0.5}, {"temperature": 1}),
])
def test_sampling_rule_clamps_temperature_and_never_sends_both(fields, expected):
    out, _ = send({"messages": [user("hi")], **fields})
    assert {k: out[k] for k in ("temperature", "top_p") if k in out} == expected


def test_user_becomes_metadata_user_id():
    out, _ = send({"messages": [user("hi")], "user": "u-42", "metadata": {"k": "v"}})
    assert out["metadata"] == {"user_id": "u-42"}


@pytest.mark.parametrize(("field", "value"), [
    ("n", 2), ("logprobs", True), ("top_logprobs", 3),
    ("response_format", {"type": "json_object"}),
    ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}),
    ("audio", {"voice": "alloy", "format": "wav"}), ("modalities", ["text", "audio"]),
    ("functions", [{"name": "f"}]),
])
def test_fields_anthropic_cannot_honour_are_refused(field, value):
    err = refused({"messages": [user("hi")], field: value})
    assert err.param == field and "Anthropic models cannot" in err.message
    assert err.status_code == 400


def test_fields_without_an_equivalent_are_dropped():
    out, _ = send({"messages": [user("hi")], "frequency_penalty": 0.5, "presence_penalty": 0.1,
                   "seed": 7, "logit_bias": {"50256": -100}, "stream_options": {},
                   "store": True, "metadata": {"a": "b"}, "service_tier": "auto", "n": 1,
                   "reasoning_effort": "low", "logprobs": False, "modalities": ["text"],
                   "response_format": {"type": "text"}, "top_k": 5, "vendor_extra": 1})
    assert set(out) == {"model", "messages", "max_tokens"}


def test_every_translated_field_and_nothing_else():
    out, strip = send({"messages": [{"role": "system", "content": "s"}, user("hi")],
                       "stream": True, "stream_options": {"include_usage": True},
                       "temperature": 0.5, "stop": "x", "user": "u", "tools": [WEATHER],
                       "tool_choice": "auto", "max_tokens": 9, "seed": 1}, stream=True)
    assert set(out) == {"model", "messages", "system", "max_tokens", "stop_sequences",
                        "stream", "temperature", "metadata", "tools", "tool_choice"}
    assert out["stream"] is True and strip is False


@pytest.mark.parametrize(("stream", "options", "strip"), [
    (True, None, True), (True, {"include_usage": False}, True),
    (True, {"include_usage": True}, False), (False, None, False),
    (False, {"include_usage": True}, False),
])
def test_the_usage_chunk_is_stripped_unless_the_client_asked(stream, options, strip):
    doc: dict[str, Any] = {"messages": [user("hi")], "stream": stream}
    if options is not None:
        doc["stream_options"] = options
    out, stripped = send(doc, stream=stream)
    assert stripped is strip and out.get("stream") is (True if stream else None)


def test_the_bundled_mock_accepts_the_translation():
    body, _ = ANTHROPIC.upstream_body(
        {"model": "x", "messages": [{"role": "system", "content": "s"}, user("hello there")],
         "temperature": 1.5, "seed": 3}, b"", model="claude-3-5-haiku", chat_stream=False,
        stream_usage=True, max_output=100)
    status, reply, _ = anthropic_api.messages(orjson.loads(body), 1, False)
    assert status == 200
    answer, usage = ANTHROPIC.answer(orjson.dumps(reply), "chat", "anthropic")
    doc = orjson.loads(answer)
    assert doc["choices"][0]["message"]["content"] == "mock reply to: hello there"
    assert doc["model"] == "claude-3-5-haiku" and doc["choices"][0]["finish_reason"] == "stop"
    assert usage is not None and usage["prompt_tokens"] == 3


# --- the answer -----------------------------------------------------------------------------

def message(content: list[dict[str, Any]], stop: str | None = "end_turn",
            **usage: int) -> dict[str, Any]:
    return {"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-x",
            "content": content, "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 4, **usage}}


def answer(msg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    body, usage = ANTHROPIC.answer(orjson.dumps(msg), "chat", "anthropic")
    return orjson.loads(body), usage


def test_a_text_answer():
    doc, usage = answer(message([{"type": "text", "text": "Hello"},
                                 {"type": "text", "text": " world"}]))
    assert doc == {"id": "msg_01", "object": "chat.completion", "created": NOW,
                   "model": "claude-x",
                   "choices": [{"index": 0, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": "Hello world"}}],
                   "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14,
                             "prompt_tokens_details": {"cached_tokens": 0}}}
    assert usage == doc["usage"]


def test_a_tool_use_answer():
    doc, _ = answer(message([
        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}},
    ], "tool_use"))
    choice = doc["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "toolu_1", "type": "function",
         "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
        {"id": "toolu_2", "type": "function", "function": {"name": "now", "arguments": "{}"}},
    ]}


@pytest.mark.parametrize(("stop", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
    ("tool_use", "tool_calls"), ("refusal", "content_filter"), ("pause_turn", "stop"),
    ("something_new", "stop"), (None, "stop"),
])
def test_every_stop_reason(stop, finish):
    doc, _ = answer(message([{"type": "text", "text": "x"}], stop))
    assert doc["choices"][0]["finish_reason"] == finish


def test_cache_tokens_count_inside_prompt_tokens():
    _, usage = answer(message([{"type": "text", "text": "x"}], cache_read_input_tokens=100,
                              cache_creation_input_tokens=20))
    assert usage == {"prompt_tokens": 130, "completion_tokens": 4, "total_tokens": 134,
                     "prompt_tokens_details": {"cached_tokens": 100}}


def test_null_cache_counts_are_zero():
    msg = message([{"type": "text", "text": "x"}])
    msg["usage"]["cache_read_input_tokens"] = None
    _, usage = answer(msg)
    assert usage is not None and usage["prompt_tokens"] == 10


@pytest.mark.parametrize("body", [b"<html>502 Bad Gateway</html>", b"", b"[]", b"{}",
                                  b'{"content": "text"}', b'{"content": [{"text": "x"}]}',
                                  b'{"type": "error", "error": {"type": "api_error"}}'])
def test_a_body_that_is_not_a_message_is_a_bad_response(body):
    with pytest.raises(UpstreamError) as exc:
        ANTHROPIC.answer(body, "chat", "claude-eu")
    assert exc.value.instance_code == "upstream_bad_response"
    assert exc.value.status_code == 502 and "`claude-eu`" in exc.value.message


# --- the stream -----------------------------------------------------------------------------

def ev(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def block_start(i: int, block: dict[str, Any]) -> bytes:
    return ev("content_block_start",
              {"type": "content_block_start", "index": i, "content_block": block})


def block_delta(i: int, delta: dict[str, Any]) -> bytes:
    return ev("content_block_delta", {"type": "content_block_delta", "index": i,
                                      "delta": delta})


PARIS = {"city": "Paris", "units": "metric", "note": "naïve \"quoted\""}
ROME = {"city": "Rome"}


def tool_stream(ping: bool = True) -> bytes:
    """Thinking, text and two tool calls, as Anthropic streams them (blocks 0..3)."""
    start: dict[str, Any] = {
        "id": "msg_s1", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [], "stop_reason": None,
        "usage": {"input_tokens": 12, "output_tokens": 1, "cache_read_input_tokens": 40,
                  "cache_creation_input_tokens": 3}}
    out = [ev("message_start", {"type": "message_start", "message": start})]
    if ping:
        out.append(ev("ping", {"type": "ping"}))
    out += [block_start(0, {"type": "thinking", "thinking": ""}),
            block_delta(0, {"type": "thinking_delta", "thinking": "secret plan"}),
            block_delta(0, {"type": "signature_delta", "signature": "abc"}),
            ev("content_block_stop", {"type": "content_block_stop", "index": 0}),
            block_start(1, {"type": "text", "text": ""})]
    out += [block_delta(1, {"type": "text_delta", "text": w}) for w in ("Let ", "me ", "check.")]
    for i, (cid, args) in enumerate((("toolu_a", PARIS), ("toolu_b", ROME)), start=2):
        out.append(block_start(i, {"type": "tool_use", "id": cid, "name": "weather",
                                   "input": {}}))
        text = orjson.dumps(args).decode()
        out += [block_delta(i, {"type": "input_json_delta", "partial_json": text[j:j + 5]})
                for j in range(0, len(text), 5)]
        out.append(ev("content_block_stop", {"type": "content_block_stop", "index": i}))
        if ping:
            out.append(ev("ping", {"type": "ping"}))
    out += [ev("message_delta", {"type": "message_delta",
                                 "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                                 "usage": {"output_tokens": 31}}),
            ev("message_stop", {"type": "message_stop"})]
    return b"".join(out)


def translate(stream: bytes, cuts: list[int]) -> bytes:
    translator = ANTHROPIC.stream("anthropic")
    out, at = [], 0
    for cut in [*cuts, len(stream)]:
        out.append(translator.feed(stream[at:cut]))
        at = cut
    return b"".join(out)


def events_of(out: bytes) -> list[Any]:
    assert out.endswith(b"data: [DONE]\n\n")
    frames = out.split(b"\n\n")
    assert frames[-1] == b"" and all(f.startswith(b"data: ") for f in frames[:-1])
    return [orjson.loads(f[6:]) for f in frames[:-2]]


def random_cuts(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return sorted(rng.sample(range(1, n), min(n - 1, 40)))


def test_the_same_output_however_the_stream_is_cut():
    stream = tool_stream()
    whole = translate(stream, [])
    assert translate(stream, list(range(1, len(stream)))) == whole
    for seed in range(5):
        assert translate(stream, random_cuts(len(stream), seed)) == whole
    crlf = stream.replace(b"\n", b"\r\n")
    assert translate(crlf, []) == whole
    assert translate(crlf, list(range(1, len(crlf)))) == whole


def test_the_stream_events_in_order():
    events = events_of(translate(tool_stream(), []))
    base = {"id": "msg_s1", "object": "chat.completion.chunk", "created": NOW,
            "model": "claude-x"}
    assert all({k: e[k] for k in base} == base for e in events)
    deltas = [e["choices"][0]["delta"] for e in events[:-1]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert deltas[1:4] == [{"content": "Let "}, {"content": "me "}, {"content": "check."}]
    assert deltas[4] == {"tool_calls": [{"index": 0, "id": "toolu_a", "type": "function",
                                         "function": {"name": "weather", "arguments": ""}}]}
    assert deltas[5]["tool_calls"][0] == {"index": 0, "function": {"arguments": '{"cit'}}
    assert events[-2]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]
    assert events[-1]["choices"] == [] and events[-1]["usage"] == {
        "prompt_tokens": 55, "completion_tokens": 31, "total_tokens": 86,
        "prompt_tokens_details": {"cached_tokens": 40}}
    assert all(e["choices"][0]["finish_reason"] is None for e in events[:-2])
    assert b"secret plan" not in translate(tool_stream(), [])


def test_tool_call_deltas_reassemble_to_the_arguments():
    calls: dict[int, dict[str, Any]] = {}
    for e in events_of(translate(tool_stream(), [])):
        for tc in (e["choices"][0]["delta"].get("tool_calls") or []) if e["choices"] else []:
            slot = calls.setdefault(tc["index"], {"id": None, "arguments": ""})
            slot["id"] = tc.get("id") or slot["id"]
            slot["arguments"] += tc["function"]["arguments"]
    assert sorted(calls) == [0, 1]  # its own counter, not the Anthropic block index (2, 3)
    assert calls[0]["id"] == "toolu_a" and json.loads(calls[0]["arguments"]) == PARIS
    assert calls[1]["id"] == "toolu_b" and json.loads(calls[1]["arguments"]) == ROME


def test_pings_are_dropped():
    assert translate(tool_stream(ping=True), []) == translate(tool_stream(ping=False), [])


def test_nothing_is_said_after_message_stop():
    translator = AnthropicStream("anthropic")
    out = translator.feed(tool_stream())
    assert out.endswith(b"data: [DONE]\n\n")
    assert translator.feed(ev("ping", {"type": "ping"})) == b""


def test_a_stream_folds_into_the_same_completion_as_the_answer():
    """Translator → StreamAccumulator(strip_usage=True) gives the non-stream translation."""
    content = [{"type": "text", "text": "Let me check."},
               {"type": "tool_use", "id": "toolu_a", "name": "weather", "input": PARIS},
               {"type": "tool_use", "id": "toolu_b", "name": "weather", "input": ROME}]
    whole = {"id": "msg_s1", "type": "message", "role": "assistant", "model": "claude-x",
             "content": content, "stop_reason": "tool_use",
             "usage": {"input_tokens": 12, "output_tokens": 31, "cache_read_input_tokens": 40,
                       "cache_creation_input_tokens": 3}}
    expected, usage = answer(whole)
    acc = StreamAccumulator(strip_usage=True)
    translator = ANTHROPIC.stream("anthropic")
    stream = tool_stream()
    forwarded = b"".join(acc.feed(translator.feed(stream[i:i + 7]))
                         for i in range(0, len(stream), 7))
    assert acc.cacheable and acc.usage == usage
    assert orjson.loads(acc.completion()) == expected
    assert b'"choices":[]' not in forwarded and forwarded.endswith(b"data: [DONE]\n\n")


def test_the_mock_upstreams_stream_folds_into_its_answer():
    req = {"model": "claude-3-5-haiku", "max_tokens": 100,
           "messages": [{"role": "user", "content": "one two three four"}]}
    events = anthropic_api.messages(req, 5, True)
    _, reply, _ = anthropic_api.messages(req, 5, False)
    acc = StreamAccumulator(strip_usage=False)
    translator = ANTHROPIC.stream("mock")
    forwarded = b"".join(acc.feed(translator.feed(e)) for e in events)
    assert orjson.loads(acc.completion()) == answer(reply)[0]
    assert forwarded.count(b'"choices":[]') == 1  # the client asked: the usage chunk stays


@pytest.mark.parametrize(("kind", "code", "retryable"), [
    ("overloaded_error", "upstream_overloaded", True), ("api_error", "upstream_error", True),
    ("invalid_request_error", "upstream_error", False)])
def test_an_error_event_raises(kind, code, retryable):
    first = b"\n\n".join(tool_stream().split(b"\n\n")[:8]) + b"\n\n"  # into the text
    stream = first + ev("error", {"type": "error", "error": {
        "type": kind, "message": "Overloaded"}})
    with pytest.raises(UpstreamError) as exc:
        translate(stream, list(range(1, len(stream))))
    err = exc.value
    assert err.instance_code == code and err.retryable is retryable
    assert "`anthropic`" in err.message and kind in err.message and "Overloaded" in err.message


@pytest.mark.parametrize("stream", [
    b"event: message_start\ndata: {not json\n\n",
    b'data: ["a list"]\n\n',
    ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                               "delta": {"type": "text_delta", "text": "x"}}),
    ev("message_start", {"type": "message_start"}),
])
def test_unparsable_or_out_of_order_events_are_a_bad_response(stream):
    with pytest.raises(UpstreamError) as exc:
        AnthropicStream("anthropic").feed(stream)
    assert exc.value.instance_code == "upstream_bad_response"


def test_a_stream_that_never_ends_an_event_is_a_bad_response():
    translator = AnthropicStream("anthropic", max_pending=1000)
    translator.feed(b"event: x\n")
    with pytest.raises(UpstreamError) as exc:
        translator.feed(b"data: " + b"x" * 2000)
    assert exc.value.instance_code == "upstream_bad_response"


# --- errors ---------------------------------------------------------------------------------

def anthropic_error(kind: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


def mapped(status: int, body: bytes, retry_after: str | None = None) -> UpstreamError:
    return ANTHROPIC.error("claude-eu", b"sk-ant-secret", status, body, retry_after)


def openai_error(err: UpstreamError) -> dict[str, Any]:
    doc = orjson.loads(err.body())
    assert set(doc) == {"error"} and set(doc["error"]) == {"message", "type", "param", "code"}
    return doc["error"]


def test_a_400_is_passed_through_in_openai_shape():
    err = mapped(400, anthropic_error("invalid_request_error", "max_tokens: too big"))
    assert isinstance(err, UpstreamHTTPError) and err.status_code == 400
    assert err.retryable is False
    body = openai_error(err)
    assert body["type"] == "invalid_request_error" and body["code"] is None
    assert body["message"].startswith("Upstream provider `claude-eu` returned 400")
    assert "max_tokens: too big" in body["message"]


@pytest.mark.parametrize("message", [
    "prompt is too long: 210000 tokens > 200000 maximum",
    "input length and `max_tokens` exceed context limit: 198000 + 8192 > 200000",
    "The request exceeds the model's context window."])
def test_a_prompt_too_long_is_context_length_exceeded(message):
    body = openai_error(mapped(400, anthropic_error("invalid_request_error", message)))
    assert body["code"] == "context_length_exceeded" and body["param"] == "messages"
    assert body["type"] == "invalid_request_error"


@pytest.mark.parametrize(("status", "kind", "code"), [
    (401, "authentication_error", "invalid_api_key"),
    (403, "permission_error", "permission_denied"),
    (404, "not_found_error", "not_found"),
    (413, "request_too_large", "request_too_large"),
    (409, "conflict", "upstream_409"),
])
def test_client_errors_keep_their_status(status, kind, code):
    err = mapped(status, anthropic_error(kind, "no"))
    assert isinstance(err, UpstreamHTTPError) and err.status_code == status
    assert not err.retryable
    body = openai_error(err)
    assert body["type"] == "invalid_request_error" and body["code"] == code
    assert kind in body["message"]


def test_a_429_is_retryable_with_its_retry_after():
    err = mapped(429, anthropic_error("rate_limit_error", "slow down"), "7")
    assert isinstance(err, UpstreamHTTPError) and err.status_code == 429
    assert err.retryable is True and err.retry_after_s == 7.0
    assert err.headers == [(b"retry-after", b"7")]
    body = openai_error(err)
    assert body["type"] == "rate_limit_exceeded" and "slow down" in body["message"]


def test_a_529_overloaded_is_a_retryable_503():
    err = mapped(529, anthropic_error("overloaded_error", "Overloaded"), "2")
    assert isinstance(err, UpstreamHTTPError) and err.status_code == 503
    assert err.retryable is True and err.retry_after_s == 2.0
    body = openai_error(err)
    assert body["type"] == "server_error" and body["code"] == "upstream_overloaded"


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_other_5xx_are_a_retryable_502(status):
    err = mapped(status, anthropic_error("api_error", "Internal server error"))
    assert not isinstance(err, UpstreamHTTPError)
    assert err.status_code == 502 and err.instance_code == f"upstream_{status}"
    assert err.retryable is True and "`claude-eu`" in err.message


@pytest.mark.parametrize("status", [301, 302, 307])
def test_a_redirect_is_not_followed_nor_retried(status):
    err = mapped(status, b"")
    assert err.status_code == 502 and err.instance_code == "upstream_redirect"
    assert err.retryable is False


def test_a_body_that_is_not_json_goes_in_the_message_cut_to_500_bytes():
    err = mapped(400, b"<html>" + b"x" * 1000 + b"</html>")
    body = openai_error(err)
    assert err.status_code == 400 and "<html>" + "x" * 494 in body["message"]
    assert "x" * 495 not in body["message"]
    err = mapped(500, b"gateway down")
    assert err.status_code == 502 and "gateway down" in err.message


def test_the_key_is_scrubbed_from_every_error():
    for status in (400, 401, 429, 500, 529):
        err = mapped(status, anthropic_error("authentication_error", "bad key sk-ant-secret"))
        text = err.body().decode() + err.message
        assert "sk-ant-secret" not in text and "[redacted]" in err.body().decode() + text


def test_tool_results_come_first_in_their_user_turn():
    out, _ = send({"messages": [
        user("time?"),
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                              "function": {"name": "now", "arguments": "{}"}}]},
        user("(use UTC)"),
        {"role": "tool", "tool_call_id": "c", "content": "12:00"},
    ]})
    assert out["messages"][2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "c", "content": "12:00"},
        {"type": "text", "text": "(use UTC)"}]}


def test_the_mock_upstreams_mid_stream_error_raises():
    translator = AnthropicStream("mock")
    translator.feed(tool_stream().split(b"event: ping")[0])  # message_start only
    with pytest.raises(UpstreamError) as exc:
        translator.feed(anthropic_api.stream_error())
    assert exc.value.instance_code == "upstream_overloaded" and exc.value.retryable
