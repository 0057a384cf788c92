"""The mock's Anthropic side (``POST /v1/messages``) over real HTTP: strict as the real
Messages API, so the proxy's OpenAI -> Anthropic translation can be proven against it."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema_rs
import orjson
import pytest

from cognitude.mock_upstream import MockUpstream
from cognitude.mock_upstream.state import DEFAULT_HUGE_BYTES, DEFAULT_REDIRECT

MESSAGES = "/v1/messages"
CHAT = "/v1/chat/completions"
VERSION = {"anthropic-version": "2023-06-01"}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\0" * 16).decode()
CITY_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit", "days"],
}
WEATHER = {"name": "get_weather", "description": "Weather", "input_schema": CITY_SCHEMA}
TIME = {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}
ZERO_CACHE = {"cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


def msg_body(text: str = "hello there world", **extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-3-haiku",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def use(*ids: str, name: str = "get_weather") -> dict[str, Any]:
    """An assistant turn calling ``name`` once per id."""
    return assistant(
        [{"type": "tool_use", "id": i, "name": name, "input": {"city": "Paris"}} for i in ids]
    )


def result(*ids: str, text: str | None = None) -> dict[str, Any]:
    """A user turn answering those ids (and then saying ``text``)."""
    blocks: list[dict[str, Any]] = [
        {"type": "tool_result", "tool_use_id": i, "content": "sunny"} for i in ids
    ]
    return user(blocks + ([{"type": "text", "text": text}] if text else []))


def turns(*messages: Any, **extra: Any) -> dict[str, Any]:
    return {**msg_body(), "messages": list(messages), **extra}


def image(source: dict[str, Any]) -> dict[str, Any]:
    return {"type": "image", "source": source}


def b64_image(data: str = PNG, media_type: str = "image/png") -> dict[str, Any]:
    return image({"type": "base64", "media_type": media_type, "data": data})


def events_of(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(name, data) per SSE event, asserting the framing ``event: N\\ndata: {json}\\n\\n``
    and that each data's ``type`` is its event name."""
    assert raw.endswith(b"\n\n")
    out = []
    for ev in raw[:-2].split(b"\n\n"):
        name_line, data_line = ev.split(b"\n")
        assert name_line.startswith(b"event: ") and data_line.startswith(b"data: "), ev
        name, data = name_line[len(b"event: ") :].decode(), orjson.loads(data_line[6:])
        assert data["type"] == name
        out.append((name, data))
    return out


def reassemble(events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The content blocks the stream builds, as an SDK puts them together."""
    blocks: list[dict[str, Any]] = []
    partial: list[str] = []
    for name, data in events:
        if name == "content_block_start":
            assert data["index"] == len(blocks)
            blocks.append(dict(data["content_block"]))
            partial.append("")
        elif name == "content_block_delta":
            i, delta = data["index"], data["delta"]
            if delta["type"] == "text_delta":
                blocks[i]["text"] += delta["text"]
            else:
                assert delta["type"] == "input_json_delta" and blocks[i]["type"] == "tool_use"
                partial[i] += delta["partial_json"]
    for block, json_text in zip(blocks, partial, strict=True):
        if block["type"] == "tool_use":
            block["input"] = orjson.loads(json_text) if json_text else {}
    return blocks


def tool_inputs(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Each tool_use block's ``partial_json`` pieces, joined."""
    pieces: dict[int, str] = {}
    for name, data in events:
        if name == "content_block_delta" and data["delta"]["type"] == "input_json_delta":
            pieces[data["index"]] = pieces.get(data["index"], "") + data["delta"]["partial_json"]
    return [pieces[i] for i in sorted(pieces)]


@pytest.fixture(scope="module")
def mock() -> Iterator[MockUpstream]:
    with MockUpstream(require_anthropic_version=True) as m:
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
    with httpx.Client(base_url=mock.url, timeout=10, headers=VERSION) as c:
        yield c


def assert_invalid(r: httpx.Response, message: str) -> None:
    """A 400 in Anthropic's envelope whose message starts with ``message``."""
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"type", "error"} and body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith(message), body["error"]["message"]


# --- a valid request, and the plain text answer ---------------------------------------------


def test_text_answer_shape_and_usage(client: httpx.Client) -> None:
    body = msg_body("hey claude", system=[{"type": "text", "text": "be nice"}])
    data = client.post(MESSAGES, json=body).json()
    assert data == {
        "id": data["id"],
        "type": "message",
        "role": "assistant",
        "model": "claude-3-haiku",
        "content": [{"type": "text", "text": "mock reply to: hey claude"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 4, **ZERO_CACHE, "output_tokens": 5},
    }
    assert data["id"].startswith("msg_mock_")
    assert client.post(MESSAGES, json=body).json()["id"] != data["id"]


def test_every_allowed_field_at_once_is_accepted(client: httpx.Client) -> None:
    body = {
        "model": "claude-3-5-sonnet",
        "max_tokens": 2048,
        "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            user(
                [
                    {"type": "text", "text": "look", "cache_control": {"type": "ephemeral"}},
                    b64_image(),
                    b64_image(JPEG, "image/jpeg"),
                    image({"type": "url", "url": "https://example.com/cat.png"}),
                ]
            ),
            use("toolu_1", "toolu_2"),
            user(
                [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "content": [{"type": "text", "text": "rain"}, b64_image()],
                        "is_error": True,
                    },
                    {"type": "text", "text": "and tomorrow?"},
                ]
            ),
            assistant("Tomorrow"),  # a prefill: the final assistant turn
        ],
        "stop_sequences": ["\n\nHuman:"],
        "stream": False,
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 5,
        "tools": [{**WEATHER, "cache_control": {"type": "ephemeral", "ttl": "1h"}}, TIME],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "metadata": {"user_id": "u-1"},
        "thinking": {"type": "disabled"},
        "service_tier": "auto",
    }
    r = client.post(MESSAGES, json=body)
    assert r.status_code == 200, r.text
    # The last user turn carries tool results, so the answer is text about them.
    assert r.json()["content"] == [
        {"type": "text", "text": "mock reply to tool result: sunny rain"}
    ]


@pytest.mark.parametrize(
    "body",
    [
        turns(user("hi"), assistant("")),  # an empty prefill
        turns(user("hi"), assistant([])),
        msg_body(temperature=None, tools=None, system=None, stop_sequences=None),
        msg_body(tools=[], system="plain"),
        msg_body(thinking={"type": "disabled"}, tool_choice=None),
        msg_body(tools=[{**TIME, "type": "custom"}], tool_choice={"type": "none"}),
        msg_body(temperature=0, top_p=1, top_k=0, metadata={"user_id": None}),
        msg_body(
            max_tokens=2048,
            thinking={"type": "enabled", "budget_tokens": 1024},
            temperature=1,
            top_p=0.95,
            tools=[WEATHER],
            tool_choice={"type": "auto"},
        ),
    ],
    ids=[
        "empty-prefill",
        "empty-prefill-list",
        "nulls",
        "no-tools",
        "no-thinking",
        "custom",
        "bounds",
        "thinking",
    ],
)
def test_edge_requests_are_accepted(client: httpx.Client, body: dict[str, Any]) -> None:
    r = client.post(MESSAGES, json=body)
    assert r.status_code == 200, r.text


# --- strictness ------------------------------------------------------------------------------

_OPENAI_TOOL = {"type": "function", "function": {"name": "f", "parameters": CITY_SCHEMA}}
_THINK = {"type": "enabled", "budget_tokens": 1024}
_NO_MODEL = {k: v for k, v in msg_body().items() if k != "model"}
_NO_MAX = {k: v for k, v in msg_body().items() if k != "max_tokens"}
_NO_MESSAGES = {k: v for k, v in msg_body().items() if k != "messages"}

INVALID: list[tuple[str, Any, str]] = [
    # top level
    ("not-an-object", [msg_body()], "body: Input should be a valid dictionary"),
    ("no-model", _NO_MODEL, "model: Field required"),
    ("model-type", msg_body(model=5), "model: Input should be a valid string"),
    ("model-empty", msg_body(model=""), "model: String should have at least 1 character"),
    ("no-max-tokens", _NO_MAX, "max_tokens: Field required"),
    ("max-tokens-zero", msg_body(max_tokens=0), "max_tokens: Input should be greater than"),
    ("max-tokens-bool", msg_body(max_tokens=True), "max_tokens: Input should be a valid integer"),
    ("max-tokens-str", msg_body(max_tokens="9"), "max_tokens: Input should be a valid integer"),
    ("no-messages", _NO_MESSAGES, "messages: Field required"),
    ("messages-type", msg_body() | {"messages": "hi"}, "messages: Input should be a valid list"),
    ("messages-empty", msg_body() | {"messages": []}, "messages: at least one message"),
    ("extra-user", msg_body(user="u-1"), "user: Extra inputs are not permitted"),
    ("extra-n", msg_body(n=1), "n: Extra inputs are not permitted"),
    (
        "extra-stream-options",
        msg_body(stream_options={"include_usage": True}),
        "stream_options: Extra inputs are not permitted",
    ),
    ("stream-type", msg_body(stream="yes"), "stream: Input should be a valid boolean"),
    ("system-type", msg_body(system=5), "system: Input should be a valid string or a list"),
    ("system-block", msg_body(system=[b64_image()]), "system.0: Input tag 'image' found"),
    ("temperature-high", msg_body(temperature=1.5), "temperature: Input should be less than"),
    ("temperature-low", msg_body(temperature=-0.1), "temperature: Input should be greater"),
    ("temperature-type", msg_body(temperature="hot"), "temperature: Input should be a valid"),
    ("top-p-high", msg_body(top_p=2), "top_p: Input should be less than or equal to 1"),
    ("top-k-negative", msg_body(top_k=-1), "top_k: Input should be a valid integer"),
    ("stop-string", msg_body(stop_sequences="END"), "stop_sequences: Input should be a valid"),
    ("stop-item", msg_body(stop_sequences=[1]), "stop_sequences.0: Input should be a valid"),
    ("stop-blank", msg_body(stop_sequences=[" "]), "stop_sequences.0: stop sequences must"),
    ("metadata-extra", msg_body(metadata={"user": "u"}), "metadata.user: Extra inputs"),
    ("metadata-type", msg_body(metadata={"user_id": 5}), "metadata.user_id: Input should be"),
    ("service-tier", msg_body(service_tier="priority"), "service_tier: Input should be 'auto'"),
    ("thinking-tag", msg_body(thinking={"type": "on"}), "thinking: Input tag 'on' found"),
    (
        "thinking-budget",
        msg_body(thinking={"type": "enabled", "budget_tokens": 100}),
        "thinking.budget_tokens: Input should be greater than or equal to 1024",
    ),
    (
        "thinking-over-max",
        msg_body(thinking={"type": "enabled", "budget_tokens": 1024}, max_tokens=1024),
        "max_tokens: must be greater than thinking.budget_tokens",
    ),
    (
        "thinking-temperature",
        msg_body(max_tokens=2048, thinking=_THINK, temperature=0.5),
        "temperature: may only be set to 1 when thinking is enabled",
    ),
    (
        "thinking-top-k",
        msg_body(max_tokens=2048, thinking=_THINK, top_k=5),
        "top_k: may not be set when thinking is enabled",
    ),
    (
        "thinking-top-p",
        msg_body(max_tokens=2048, thinking=_THINK, top_p=0.5),
        "top_p: must be between 0.95 and 1 when thinking is enabled",
    ),
    (
        "thinking-forced-tool",
        msg_body(max_tokens=2048, thinking=_THINK, tools=[TIME], tool_choice={"type": "any"}),
        "tool_choice: Thinking may not be enabled when tool_choice forces tool use.",
    ),
    # turns
    (
        "system-role",
        turns({"role": "system", "content": "x"}, user("hi")),
        "messages.0.role: Input should be 'user' or 'assistant'",
    ),
    ("first-assistant", turns(assistant("hi"), user("hi")), "messages.0.role: the first message"),
    ("two-users", turns(user("a"), user("b")), 'messages.1: roles must alternate between "user"'),
    (
        "two-assistants",
        turns(user("a"), assistant("b"), assistant("c")),
        "messages.2: roles must alternate",
    ),
    ("message-extra", turns({**user("x"), "name": "bob"}), "messages.0.name: Extra inputs"),
    ("message-type", turns("hi"), "messages.0: Input should be a valid dictionary"),
    ("no-role", turns({"content": "x"}), "messages.0.role: Field required"),
    ("no-content", turns({"role": "user"}), "messages.0.content: Field required"),
    ("content-empty", turns(user("")), "messages.0: all messages must have non-empty content"),
    ("content-list-empty", turns(user([])), "messages.0: all messages must have non-empty"),
    ("content-blank", turns(user("  ")), "messages.0.content: text content blocks must contain"),
    ("content-type", turns(user(5)), "messages.0.content: Input should be a valid string"),
    (
        "assistant-empty-midway",
        turns(user("a"), assistant(""), user("b")),
        "messages.1: all messages must have non-empty content",
    ),
    (
        "prefill-trailing-space",
        turns(user("a"), assistant("Sure, ")),
        "messages: final assistant content cannot end with trailing whitespace",
    ),
    # blocks
    (
        "openai-image-url",
        turns(user([{"type": "image_url", "image_url": {"url": "https://x/y.png"}}])),
        "messages.0.content.0: Input tag 'image_url' found using 'type' does not match",
    ),
    ("block-no-type", turns(user([{"text": "x"}])), "messages.0.content.0.type: Field required"),
    (
        "block-extra",
        turns(user([{"type": "text", "text": "x", "image_url": {}}])),
        "messages.0.content.0.image_url: Extra inputs are not permitted",
    ),
    ("text-type", turns(user([{"type": "text", "text": 5}])), "messages.0.content.0.text: Input"),
    (
        "text-empty",
        turns(user([{"type": "text", "text": ""}])),
        "messages.0.content.0.text: text content blocks must be non-empty",
    ),
    (
        "text-blank",
        turns(user([{"type": "text", "text": " \n"}])),
        "messages.0.content.0.text: text content blocks must contain non-whitespace text",
    ),
    (
        "cache-control",
        turns(user([{"type": "text", "text": "x", "cache_control": {"type": "forever"}}])),
        "messages.0.content.0.cache_control.type: Input should be 'ephemeral'",
    ),
    ("image-no-source", turns(user([{"type": "image"}])), "messages.0.content.0.source: Field"),
    (
        "image-source-tag",
        turns(user([image({"type": "file", "file_id": "f"})])),
        "messages.0.content.0.source: Input tag 'file' found",
    ),
    (
        "image-media-type",
        turns(user([b64_image(media_type="image/bmp")])),
        "messages.0.content.0.source.media_type: Input should be 'image/jpeg', 'image/png', "
        "'image/gif' or 'image/webp'",
    ),
    (
        "image-data-url",  # the OpenAI data URL passed through whole
        turns(user([b64_image("data:image/png;base64," + PNG)])),
        "messages.0.content.0.source.data: The image data is not valid base64",
    ),
    (
        "image-media-type-lies",
        turns(user([b64_image(JPEG, "image/png")])),
        "messages.0.content.0.source: Image does not match the provided media type image/png",
    ),
    (
        "image-no-data",
        turns(user([image({"type": "base64", "media_type": "image/png"})])),
        "messages.0.content.0.source.data: Field required",
    ),
    ("image-no-url", turns(user([image({"type": "url"})])), "messages.0.content.0.source.url:"),
    # tool turns
    (
        "tool-use-in-user",
        turns(use("toolu_1") | {"role": "user"}),
        "messages.0.content.0: `tool_use` blocks can only be in `assistant` messages",
    ),
    (
        "tool-result-in-assistant",
        turns(user("a"), result("toolu_1") | {"role": "assistant"}),
        "messages.1.content.0: `tool_result` blocks can only be in `user` messages",
    ),
    (
        "tool-use-input-string",  # OpenAI's arguments string passed through
        turns(
            user("a"),
            assistant([{"type": "tool_use", "id": "t", "name": "f", "input": '{"a": 1}'}]),
            result("t"),
        ),
        "messages.1.content.0.input: Input should be a valid dictionary",
    ),
    (
        "tool-use-no-id",
        turns(user("a"), assistant([{"type": "tool_use", "name": "f", "input": {}}])),
        "messages.1.content.0.id: Field required",
    ),
    (
        "tool-use-id-pattern",
        turns(user("a"), use("call 1"), result("call 1")),
        "messages.1.content.0.id: String should match pattern",
    ),
    (
        "tool-use-unanswered",
        turns(user("a"), use("toolu_1"), user("and?")),
        "messages.1: `tool_use` ids were found without `tool_result` blocks immediately "
        "after: toolu_1. Each `tool_use` block must have a corresponding `tool_result` block "
        "in the next message.",
    ),
    (
        "tool-use-unanswered-at-end",
        turns(user("a"), use("toolu_1")),
        "messages.1: `tool_use` ids were found without `tool_result` blocks",
    ),
    (
        "tool-use-partly-answered",
        turns(user("a"), use("toolu_1", "toolu_2"), result("toolu_1")),
        "messages.1: `tool_use` ids were found without `tool_result` blocks immediately "
        "after: toolu_2.",
    ),
    (
        "tool-use-answered-too-late",
        turns(user("a"), use("toolu_1"), user("wait"), assistant("ok"), result("toolu_1")),
        "messages.1: `tool_use` ids were found without `tool_result` blocks",
    ),
    (
        "tool-result-wrong-id",
        turns(user("a"), use("toolu_1"), result("toolu_1", "toolu_9")),
        "messages.2.content.1: unexpected `tool_use_id` found in `tool_result` blocks: toolu_9. "
        "Each `tool_result` block must have a corresponding `tool_use` block in the previous "
        "message.",
    ),
    (
        "tool-result-first-turn",
        turns(result("toolu_1")),
        "messages.0.content.0: unexpected `tool_use_id` found in `tool_result` blocks",
    ),
    (
        "tool-result-after-text",
        turns(
            user("a"),
            use("toolu_1"),
            user([{"type": "text", "text": "here"}, *result("toolu_1")["content"]]),
        ),
        "messages.2.content.1: `tool_result` blocks must come first",
    ),
    (
        "tool-use-duplicate-id",
        turns(user("a"), use("toolu_1", "toolu_1"), result("toolu_1")),
        "messages.1.content.1: `tool_use` ids must be unique",
    ),
    (
        "tool-result-duplicate",
        turns(user("a"), use("toolu_1"), result("toolu_1", "toolu_1")),
        "messages.2.content.1: multiple `tool_result` blocks with id: toolu_1",
    ),
    (
        "tool-result-is-error",
        turns(
            user("a"),
            use("t"),
            user([{"type": "tool_result", "tool_use_id": "t", "is_error": "yes"}]),
        ),
        "messages.2.content.0.is_error: Input should be a valid boolean",
    ),
    (
        "tool-result-nested-tool-use",
        turns(
            user("a"),
            use("t"),
            user([{"type": "tool_result", "tool_use_id": "t", "content": use("u")["content"]}]),
        ),
        "messages.2.content.0.content.0: Input tag 'tool_use' found using 'type' does not match "
        "any of the expected tags: 'text', 'image'",
    ),
    # tools and tool_choice
    ("tools-type", msg_body(tools=WEATHER), "tools: Input should be a valid list"),
    ("tools-openai", msg_body(tools=[_OPENAI_TOOL]), "tools.0.function: Extra inputs are not"),
    (
        "tool-type-function",
        msg_body(tools=[{**WEATHER, "type": "function"}]),
        "tools.0.type: Input should be 'custom'",
    ),
    ("tool-no-name", msg_body(tools=[{"input_schema": CITY_SCHEMA}]), "tools.0.name: Field"),
    (
        "tool-name-pattern",
        msg_body(tools=[{**WEATHER, "name": "get weather"}]),
        "tools.0.name: String should match pattern",
    ),
    (
        "tool-description",
        msg_body(tools=[TIME, {**WEATHER, "description": 5}]),
        "tools.1.description: Input should be a valid string",
    ),
    ("tool-no-schema", msg_body(tools=[{"name": "f"}]), "tools.0.input_schema: Field required"),
    (
        "tool-schema-no-type",
        msg_body(tools=[{"name": "f", "input_schema": {"properties": {}}}]),
        "tools.0.input_schema.type: Field required",
    ),
    (
        "tool-schema-not-object",
        msg_body(tools=[{"name": "f", "input_schema": {"type": "array"}}]),
        "tools.0.input_schema.type: Input should be 'object'",
    ),
    ("tool-names-unique", msg_body(tools=[TIME, TIME]), "tools: Tool names must be unique."),
    (
        "tool-choice-string",
        msg_body(tools=[WEATHER], tool_choice="auto"),
        "tool_choice: Input should be a valid dictionary",
    ),
    (
        "tool-choice-required",
        msg_body(tools=[WEATHER], tool_choice={"type": "required"}),
        "tool_choice: Input tag 'required' found",
    ),
    (
        "tool-choice-unknown-tool",
        msg_body(tools=[WEATHER], tool_choice={"type": "tool", "name": "nope"}),
        "tool_choice.name: tool 'nope' not found in tools",
    ),
    (
        "tool-choice-no-name",
        msg_body(tools=[WEATHER], tool_choice={"type": "tool"}),
        "tool_choice.name: Field required",
    ),
    (
        "tool-choice-parallel-type",
        msg_body(tools=[WEATHER], tool_choice={"type": "any", "disable_parallel_tool_use": 1}),
        "tool_choice.disable_parallel_tool_use: Input should be a valid boolean",
    ),
    (
        "tool-choice-none-parallel",
        msg_body(tools=[WEATHER], tool_choice={"type": "none", "disable_parallel_tool_use": True}),
        "tool_choice.disable_parallel_tool_use: Extra inputs are not permitted",
    ),
    (
        "tool-choice-without-tools",
        msg_body(tool_choice={"type": "auto"}),
        "tool_choice: tool_choice may only be specified while providing tools",
    ),
]


@pytest.mark.parametrize(("body", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_requests_are_refused(client: httpx.Client, body: Any, message: str) -> None:
    assert_invalid(client.post(MESSAGES, json=body), message)
    if isinstance(body, dict) and "stream" not in body:  # a stream is refused the same way
        assert_invalid(client.post(MESSAGES, json={**body, "stream": True}), message)


def test_unparsable_json_is_an_anthropic_400(client: httpx.Client) -> None:
    r = client.post(MESSAGES, content=b"{nope", headers={"content-type": "application/json"})
    assert_invalid(r, "We could not parse the JSON body")


# --- headers and auth ------------------------------------------------------------------------


def test_anthropic_version_is_required(mock: MockUpstream) -> None:
    with httpx.Client(base_url=mock.url) as c:
        assert_invalid(c.post(MESSAGES, json=msg_body()), "anthropic-version: header is required")
        r = c.post(MESSAGES, json=msg_body(), headers={"anthropic-version": "2024-01-01"})
        assert_invalid(r, "anthropic-version: invalid version '2024-01-01'")
        assert c.post(MESSAGES, json=msg_body(), headers=VERSION).status_code == 200
        assert c.post(CHAT, json=msg_body()).status_code == 200  # OpenAI paths need no header


def test_a_header_refusal_leaves_a_queued_failure_in_place(mock: MockUpstream) -> None:
    mock.fail("529")
    with httpx.Client(base_url=mock.url) as c:
        assert c.post(MESSAGES, json=msg_body()).status_code == 400
        assert c.post(MESSAGES, json=msg_body(), headers=VERSION).status_code == 529


def test_without_the_requirement_a_headerless_request_gets_the_bare_usage() -> None:
    with MockUpstream(require_anthropic_version=False) as m, httpx.Client(base_url=m.url) as c:
        bare = c.post(MESSAGES, json=msg_body("a b")).json()["usage"]
        assert bare == {"input_tokens": 2, "output_tokens": 5}
        full = c.post(MESSAGES, json=msg_body("a b"), headers=VERSION).json()["usage"]
        assert full == {"input_tokens": 2, **ZERO_CACHE, "output_tokens": 5}
        r = c.post(MESSAGES, json=msg_body(), headers={"anthropic-version": "2023-01-01"})
        assert_invalid(r, "anthropic-version: invalid version")  # a wrong one is still wrong


def test_the_key_goes_in_x_api_key_only() -> None:
    with MockUpstream(require_key="sk-ant-right") as m, httpx.Client(base_url=m.url) as c:

        def refused(r: httpx.Response, message: str) -> None:
            assert r.status_code == 401
            assert r.json() == {
                "type": "error",
                "error": {"type": "authentication_error", "message": message},
            }

        bearer = {**VERSION, "authorization": "Bearer sk-ant-right"}
        refused(c.post(MESSAGES, json=msg_body(), headers=bearer), "x-api-key header is required")
        wrong = {**VERSION, "x-api-key": "sk-ant-wrong"}
        refused(c.post(MESSAGES, json=msg_body(), headers=wrong), "invalid x-api-key")
        right = {**VERSION, "x-api-key": "sk-ant-right"}
        assert c.post(MESSAGES, json=msg_body(), headers=right).status_code == 200
        # OpenAI paths unchanged: a Bearer token (or x-api-key) is fine there.
        chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}
        bearer_chat = {"authorization": "Bearer sk-ant-right"}
        assert c.post(CHAT, json=chat, headers=bearer_chat).status_code == 200


# --- stop sequences and max_tokens -----------------------------------------------------------


def test_stop_sequences_cut_the_text(client: httpx.Client) -> None:
    body = msg_body("alpha beta gamma", stop_sequences=["gamma", " beta"])
    data = client.post(MESSAGES, json=body).json()
    assert data["content"] == [{"type": "text", "text": "mock reply to: alpha"}]
    assert data["stop_reason"] == "stop_sequence" and data["stop_sequence"] == " beta"
    assert data["usage"]["output_tokens"] == 4

    none_found = client.post(MESSAGES, json=msg_body("alpha", stop_sequences=["zeta"])).json()
    assert none_found["stop_reason"] == "end_turn" and none_found["stop_sequence"] is None

    events = events_of(client.post(MESSAGES, json=body | {"stream": True}).content)
    assert reassemble(events)[0]["text"] == "mock reply to: alpha"
    assert events[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": " beta"}


def test_the_earliest_completed_stop_sequence_wins(client: httpx.Client) -> None:
    # In "mock reply to: x", "reply to" is complete (at 13) before "to:" is (at 14): the
    # longer one wins, though listed second, and the text is cut where it starts.
    data = client.post(MESSAGES, json=msg_body("x", stop_sequences=["to:", "reply to"])).json()
    assert data["content"][0]["text"] == "mock "
    assert data["stop_sequence"] == "reply to"


def test_max_tokens_truncates(client: httpx.Client) -> None:
    data = client.post(MESSAGES, json=msg_body("a b c d e f", max_tokens=4)).json()
    assert data["content"] == [{"type": "text", "text": "mock reply to: a"}]
    assert data["stop_reason"] == "max_tokens" and data["stop_sequence"] is None
    assert data["usage"]["output_tokens"] == 4
    # A stop sequence beyond the limit is never reached.
    late = client.post(MESSAGES, json=msg_body("a b c", max_tokens=3, stop_sequences=["b c"]))
    assert late.json()["stop_reason"] == "max_tokens"
    assert late.json()["content"][0]["text"] == "mock reply to:"


# --- tools ------------------------------------------------------------------------------------


def test_tool_use_round_trip(client: httpx.Client) -> None:
    ask = user("weather in Paris?")
    first = client.post(MESSAGES, json=turns(ask, tools=[WEATHER])).json()
    seq = first["id"].removeprefix("msg_mock_")  # the request's number, in both ids
    assert first["stop_reason"] == "tool_use" and first["stop_sequence"] is None
    (block,) = first["content"]
    assert block["type"] == "tool_use" and block["name"] == "get_weather"
    assert block["id"] == f"toolu_mock_{seq}_0"
    jsonschema_rs.validate(CITY_SCHEMA, block["input"])
    assert first["usage"]["output_tokens"] == len(orjson.dumps(block["input"]).split())

    answer = user([{"type": "tool_result", "tool_use_id": block["id"], "content": "sunny 21C"}])
    body = turns(ask, assistant(first["content"]), answer, tools=[WEATHER])
    second = client.post(MESSAGES, json=body).json()
    assert second["content"] == [{"type": "text", "text": "mock reply to tool result: sunny 21C"}]
    assert second["stop_reason"] == "end_turn"
    # Even a forced tool choice answers text after a result, so agent loops end.
    forced = client.post(MESSAGES, json=body | {"tool_choice": {"type": "any"}}).json()
    assert forced["stop_reason"] == "end_turn"


@pytest.mark.parametrize(
    ("choice", "names"),
    [
        (None, ["get_weather", "get_time"]),
        ({"type": "auto"}, ["get_weather", "get_time"]),
        ({"type": "any"}, ["get_weather", "get_time"]),
        ({"type": "auto", "disable_parallel_tool_use": True}, ["get_weather"]),
        ({"type": "any", "disable_parallel_tool_use": True}, ["get_weather"]),
        ({"type": "tool", "name": "get_time"}, ["get_time"]),
        ({"type": "none"}, []),
    ],
)
def test_tool_choice(client: httpx.Client, choice: Any, names: list[str]) -> None:
    body = msg_body("what now?", tools=[WEATHER, TIME])
    if choice is not None:
        body["tool_choice"] = choice
    data = client.post(MESSAGES, json=body).json()
    if not names:
        assert data["content"] == [{"type": "text", "text": "mock reply to: what now?"}]
        assert data["stop_reason"] == "end_turn"
        return
    assert [b["name"] for b in data["content"]] == names
    assert [b["id"].rsplit("_", 1)[1] for b in data["content"]] == [
        str(i) for i in range(len(names))
    ]
    assert data["stop_reason"] == "tool_use"
    # The ids it gave answer back fine: every call paired with its result.
    ids = [b["id"] for b in data["content"]]
    follow = turns(
        user("what now?"), assistant(data["content"]), result(*ids), tools=[WEATHER, TIME]
    )
    assert client.post(MESSAGES, json=follow).status_code == 200


def test_max_tokens_cuts_a_tool_call(client: httpx.Client) -> None:
    body = msg_body(tools=[WEATHER, TIME], max_tokens=1)
    data = client.post(MESSAGES, json=body).json()
    assert data["stop_reason"] == "max_tokens"
    assert data["content"] == [
        {"type": "tool_use", "id": data["content"][0]["id"], "name": "get_weather", "input": {}}
    ]
    streamed = events_of(client.post(MESSAGES, json=body | {"stream": True}).content)
    (partial,) = tool_inputs(streamed)
    full = orjson.dumps(
        client.post(MESSAGES, json=msg_body(tools=[WEATHER])).json()["content"][0]["input"]
    ).decode()
    assert full.startswith(partial) and partial != full  # cut mid-JSON, as the real API does
    assert streamed[-2][1]["delta"]["stop_reason"] == "max_tokens"


# --- streams ----------------------------------------------------------------------------------


def test_text_stream_event_sequence(client: httpx.Client) -> None:
    body = msg_body("one two three", system="be nice")
    r = client.post(MESSAGES, json=body | {"stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = events_of(r.content)
    words = 6  # "mock reply to: one two three"
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * words,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    plain = client.post(MESSAGES, json=body).json()
    assert start["id"].startswith("msg_mock_") and start["content"] == []
    assert start["stop_reason"] is None and start["stop_sequence"] is None
    assert start["usage"] == {"input_tokens": 5, **ZERO_CACHE, "output_tokens": 1}
    assert events[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert all(d["delta"]["type"] == "text_delta" for n, d in events if n == "content_block_delta")
    assert reassemble(events) == [{"type": "text", "text": plain["content"][0]["text"]}]
    assert events[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": plain["usage"]["output_tokens"]},
    }


def test_tool_stream_splits_the_input_json(client: httpx.Client) -> None:
    body = msg_body(tools=[WEATHER, TIME])
    plain = client.post(MESSAGES, json=body).json()
    events = events_of(client.post(MESSAGES, json=body | {"stream": True}).content)
    names = [n for n, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_start") == names.count("content_block_stop") == 2
    starts = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert [s["type"] for s in starts] == ["tool_use", "tool_use"]
    assert all(s["input"] == {} for s in starts)
    seq = events[0][1]["message"]["id"].removeprefix("msg_mock_")
    assert [s["id"] for s in starts] == [f"toolu_mock_{seq}_0", f"toolu_mock_{seq}_1"]
    assert reassemble(events) == [
        {**b, "id": s["id"]} for b, s in zip(plain["content"], starts, strict=True)
    ]
    pieces = [
        d["delta"]["partial_json"]
        for n, d in events
        if n == "content_block_delta" and d["index"] == 0
    ]
    assert len(pieces) > 2  # split into several deltas, not one
    joined = tool_inputs(events)
    assert [orjson.loads(j) for j in joined] == [b["input"] for b in plain["content"]]
    assert events[-2][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}


def test_stream_events_are_sent_separately(client: httpx.Client, mock: MockUpstream) -> None:
    mock.configure(chunk_delay_ms=50)
    arrivals: list[float] = []
    start = time.monotonic()
    with client.stream("POST", MESSAGES, json=msg_body("a", stream=True)) as r:
        for line in r.iter_lines():
            if line.startswith("event: "):
                arrivals.append(time.monotonic() - start)
    assert len(arrivals) == 10  # start, block start, ping, 4 words, block stop, delta, stop
    assert arrivals[-1] - arrivals[0] >= 9 * 0.05 * 0.9


# --- failure modes ----------------------------------------------------------------------------


def test_fail_529(client: httpx.Client, mock: MockUpstream) -> None:
    for stream in (False, True):
        mock.fail("529")
        r = client.post(MESSAGES, json=msg_body(stream=stream))
        assert r.status_code == 529
        assert r.json() == {
            "type": "error",
            "error": {"type": "overloaded_error", "message": "Overloaded"},
        }
    mock.fail("529")
    r = client.post(CHAT, json={"model": "gpt-4o", "messages": [user("x")]})
    assert r.status_code == 503
    assert r.json()["error"]["type"] == "server_error" and "overloaded" in r.text
    assert client.post(MESSAGES, json=msg_body()).status_code == 200


def test_fail_429_and_500_and_400(client: httpx.Client, mock: MockUpstream) -> None:
    for mode, status, kind in (
        ("429", 429, "rate_limit_error"),
        ("500", 500, "api_error"),
        ("400", 400, "invalid_request_error"),
    ):
        mock.fail(mode)
        r = client.post(MESSAGES, json=msg_body())
        assert r.status_code == status
        body = r.json()
        assert body["type"] == "error" and body["error"]["type"] == kind
        assert set(body["error"]) == {"type", "message"}
        if mode == "429":
            assert r.headers["retry-after"] == "1"


def test_fail_stream_error(client: httpx.Client, mock: MockUpstream) -> None:
    mock.fail("stream_error")
    r = client.post(MESSAGES, json=msg_body("a b", stream=True))
    assert r.status_code == 200  # the stream began; the error comes inside it
    events = events_of(r.content)  # the body ends cleanly after the error event
    assert [n for n, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "error",
    ]
    assert events[-1][1] == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
    assert client.post(MESSAGES, json=msg_body(stream=True)).content.endswith(
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )


def test_fail_stream_error_on_other_requests_is_a_500(
    client: httpx.Client, mock: MockUpstream
) -> None:
    for path, body in (
        (MESSAGES, msg_body()),
        (CHAT, {"model": "gpt-4o", "messages": [user("x")], "stream": True}),
    ):
        mock.fail("stream_error")
        r = client.post(path, json=body)
        assert r.status_code == 500 and "'stream_error'" in r.text
    # An invalid stream request gets its 400 and uses the failure up.
    mock.fail("stream_error")
    assert_invalid(client.post(MESSAGES, json=msg_body(stream=True, n=1)), "n: Extra")
    assert mock.stats()["pending_failures"] == []


def test_fail_drop_stream(client: httpx.Client, mock: MockUpstream) -> None:
    mock.fail("drop")
    received: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        with client.stream("POST", MESSAGES, json=msg_body(stream=True)) as r:
            assert r.status_code == 200
            for line in r.iter_lines():  # a loop: what arrived before the cut is kept
                if line.startswith("event: "):
                    received.append(line)
    assert received == ["event: message_start", "event: content_block_start"]
    mock.fail("drop")
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(MESSAGES, json=msg_body())


def test_fail_stall_stream(mock: MockUpstream) -> None:
    mock.fail("stall_stream")
    received: list[str] = []
    timeout = httpx.Timeout(5, read=0.4)
    with httpx.Client(base_url=mock.url, timeout=timeout, headers=VERSION) as c:
        with pytest.raises(httpx.ReadTimeout):
            with c.stream("POST", MESSAGES, json=msg_body(stream=True)) as r:
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        received.append(line)
        assert received == ["event: message_start", "event: content_block_start"]
        assert c.post(MESSAGES, json=msg_body()).status_code == 200


def test_fail_timeout(mock: MockUpstream) -> None:
    mock.fail("timeout")
    with httpx.Client(base_url=mock.url, timeout=0.3, headers=VERSION) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.post(MESSAGES, json=msg_body(stream=True))
        assert c.post(MESSAGES, json=msg_body()).status_code == 200


# --- the OpenAI side's stream_options ---------------------------------------------------------


@pytest.mark.parametrize("stream", [None, False])
def test_stream_options_need_a_stream(client: httpx.Client, stream: bool | None) -> None:
    body: dict[str, Any] = {
        "model": "gpt-4o",
        "messages": [user("x")],
        "stream_options": {"include_usage": True},
    }
    if stream is not None:
        body["stream"] = stream
    r = client.post(CHAT, json=body)
    assert r.status_code == 400
    assert r.json()["error"] == {
        "message": "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
        "type": "invalid_request_error",
        "param": "stream_options",
        "code": None,
    }
    assert client.post(CHAT, json=body | {"stream_options": None}).status_code == 200
    assert client.post(CHAT, json=body | {"stream": True}).status_code == 200
    bad = client.post(CHAT, json=body | {"stream": True, "stream_options": "usage"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "stream_options"


# --- the official SDK -------------------------------------------------------------------------


def test_anthropic_sdk(mock: MockUpstream) -> None:
    anthropic = pytest.importorskip("anthropic")
    with anthropic.Anthropic(base_url=mock.url, api_key="sk-ant", max_retries=0) as sdk:
        msg = sdk.messages.create(
            model="claude-3-haiku", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        )
        assert msg.content[0].text == "mock reply to: hi"
        with sdk.messages.stream(
            model="claude-3-haiku",
            max_tokens=50,
            tools=[WEATHER],
            messages=[{"role": "user", "content": "weather?"}],
        ) as stream:
            final = stream.get_final_message()
        assert final.stop_reason == "tool_use" and final.content[0].input["city"]
