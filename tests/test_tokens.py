"""cognitude.tokens: exact offline counts.

Expected values are tiktoken's own (``len(enc.encode_ordinary(text))``), computed with
OpenAI's published cl100k_base / o200k_base files (sha256-checked against tiktoken's
expected hashes), plus the openai-cookbook's published chat example: 129 tokens for
gpt-4 / gpt-3.5-turbo, 124 for gpt-4o.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

from cognitude.ledger import tokens

# text -> (cl100k_base, o200k_base)
KNOWN: dict[str, tuple[int, int]] = {
    "hello world": (2, 2),
    "tiktoken is great!": (6, 6),
    "Hello, world!": (4, 4),
    "<|endoftext|>": (7, 7),  # special-token text counts as ordinary text
    "こんにちは世界": (4, 2),
    "🙂👍🏽": (8, 4),
    "def f(x):\n    return x * 2\n": (11, 11),
    "  leading and trailing  ": (5, 5),
    "1234567890": (4, 4),
    "antidisestablishmentarianism": (6, 6),
    "x" * 1000: (125, 125),
}

# openai-cookbook "How to count tokens with tiktoken", example_messages.
COOKBOOK: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a helpful, pattern-following assistant that "
     "translates corporate jargon into plain English."},
    {"role": "system", "name": "example_user",
     "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant",
     "content": "Things working well together will increase revenue."},
    {"role": "system", "name": "example_user",
     "content": "Let's circle back when we have more bandwidth to touch base on "
     "opportunities for increased leverage."},
    {"role": "system", "name": "example_assistant",
     "content": "Let's talk later when we're less busy about how to do better."},
    {"role": "user", "content": "This late pivot means we don't have time to boil the ocean "
     "for the client deliverable."},
]


@pytest.fixture(scope="module", autouse=True)
def _no_network() -> Any:
    """Loading and counting must not touch the network (the data ships in the wheel)."""
    real = socket.socket.connect

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("tokenizer tried to use the network")

    socket.socket.connect = refuse  # type: ignore[method-assign]
    try:
        tokens.warm()
        yield
    finally:
        socket.socket.connect = real  # type: ignore[method-assign]


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", tokens.O200K), ("gpt-4o-mini-2024-07-18", tokens.O200K),
        ("chatgpt-4o-latest", tokens.O200K), ("gpt-4.1-nano", tokens.O200K),
        ("o1-mini", tokens.O200K), ("o3", tokens.O200K), ("o4-mini", tokens.O200K),
        ("gpt-5", tokens.O200K), ("GPT-4O", tokens.O200K), ("openai/gpt-4o", tokens.O200K),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", tokens.O200K),
        ("gpt-4", tokens.CL100K), ("gpt-4-turbo", tokens.CL100K), ("gpt-4-0613", tokens.CL100K),
        ("gpt-3.5-turbo", tokens.CL100K), ("gpt-35-turbo", tokens.CL100K),
        ("text-embedding-3-small", tokens.CL100K), ("text-embedding-ada-002", tokens.CL100K),
        ("ft:gpt-3.5-turbo-0125:acme::x", tokens.CL100K),
        ("claude-3-5-sonnet", tokens.O200K), ("llama-3.1-70b", tokens.O200K),
        ("", tokens.O200K), (None, tokens.O200K),
    ],
)
def test_encoding_for(model: Any, encoding: str) -> None:
    assert tokens.encoding_for(model) == encoding


@pytest.mark.parametrize(("text", "expected"), KNOWN.items())
def test_count_text_exact(text: str, expected: tuple[int, int]) -> None:
    cl100k, o200k = expected
    assert tokens.count_text("gpt-4", text) == cl100k
    assert tokens.count_text("gpt-3.5-turbo", text) == cl100k
    assert tokens.count_text("text-embedding-3-large", text) == cl100k
    assert tokens.count_text("gpt-4o", text) == o200k
    assert tokens.count_text("o3-mini", text) == o200k
    assert tokens.count_text("claude-3-5-sonnet", text) == o200k  # documented fallback


def test_count_text_odd_input_never_raises() -> None:
    assert tokens.count_text("gpt-4o", "") == 0
    assert tokens.count_text("gpt-4o", None) == 0  # type: ignore[arg-type]
    assert tokens.count_text("gpt-4o", 42) == 0  # type: ignore[arg-type]
    assert tokens.count_text("gpt-4o", ["hello"]) == 0  # type: ignore[arg-type]
    assert tokens.count_text("gpt-4o", b"hello world") == 2  # type: ignore[arg-type]
    assert tokens.count_text(None, "hello world") == 2  # type: ignore[arg-type]
    # A lone surrogate can't be UTF-8 encoded; it is replaced (U+FFFD), as tiktoken does.
    assert tokens.count_text("gpt-4", "a\ud800b") == 3
    assert tokens.count_text("gpt-4o", "a\x00b") == 3


def test_long_repetitive_text_is_fast() -> None:
    # Pathological for naive BPE (one huge pre-token); must stay linear-ish.
    assert tokens.count_text("gpt-4o", "a" * 200_000) == 25_000
    assert tokens.count_text("gpt-4", " " * 200_000) == 1_563


def test_count_messages_cookbook() -> None:
    assert tokens.count_messages("gpt-4", COOKBOOK) == 129
    assert tokens.count_messages("gpt-3.5-turbo", COOKBOOK) == 129
    assert tokens.count_messages("gpt-4o", COOKBOOK) == 124
    assert tokens.count_messages("gpt-4o-mini", COOKBOOK) == 124


def test_count_messages_formula() -> None:
    # 3 per message + role + content (+1 and the name for a name), +3 reply priming.
    user = tokens.count_text("gpt-4o", "user")
    hello = tokens.count_text("gpt-4o", "hello world")
    assert tokens.count_messages("gpt-4o", []) == 3
    assert tokens.count_messages("gpt-4o", [{"role": "user", "content": "hello world"}]) == (
        3 + user + hello + 3
    )
    named = [{"role": "user", "name": "bob", "content": "hello world"}]
    bob = tokens.count_text("gpt-4o", "bob")
    assert tokens.count_messages("gpt-4o", named) == 3 + user + bob + 1 + hello + 3


def test_count_messages_content_parts() -> None:
    as_string = [{"role": "user", "content": "hello world"}]
    as_parts = [{"role": "user", "content": [
        {"type": "text", "text": "hello world"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},  # ignored
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},  # ignored
    ]}]
    assert tokens.count_messages("gpt-4o", as_parts) == tokens.count_messages("gpt-4o", as_string)
    two = [{"role": "user", "content": [{"type": "text", "text": "hello"},
                                       {"type": "text", "text": " world"}]}]
    assert tokens.count_messages("gpt-4o", two) == 3 + 1 + 1 + 1 + 3  # user, hello, " world"


def test_count_messages_tool_calls_count_their_strings() -> None:
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
    ]}
    strings = ["assistant", "call_1", "function", "get_weather", '{"city": "Paris"}']
    expected = 3 + sum(tokens.count_text("gpt-4o", s) for s in strings) + 3
    assert tokens.count_messages("gpt-4o", [call]) == expected


@pytest.mark.parametrize(
    "messages",
    [None, "hello", 42, {"role": "user"}, [None, 1, "x", []],
     [{"role": None, "content": 7}], [{"role": "user", "content": [None, 3, {"type": "text"}]}]],
)
def test_count_messages_odd_input_never_raises(messages: Any) -> None:
    n = tokens.count_messages("gpt-4o", messages)
    assert isinstance(n, int) and n >= 3


def test_count_messages_skips_non_dicts_but_counts_the_rest() -> None:
    good = {"role": "user", "content": "hello world"}
    assert tokens.count_messages("gpt-4o", [None, good, 5]) == tokens.count_messages(
        "gpt-4o", [good]
    )


def test_backend_failure_falls_back_to_estimate(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any, **kwargs: Any) -> list[int]:
        raise RuntimeError("boom")

    monkeypatch.setattr(tokens.toktok, "batch_count", broken)
    assert tokens.count_text("gpt-4o", "hello world") == 3  # ceil(11 bytes / 4)
    assert "token counting failed" in caplog.text
