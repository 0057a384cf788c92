"""What the mock answers a valid Messages request: content blocks, stop reason, token counts.

Deterministic, like the OpenAI side, so a test can predict the answer its request gets
through the proxy and check how the translation came back:

* text: ``"mock reply to: " + <the last user turn's text>[:200]``, or ``"mock reply to tool
  result: " + <its tool_result texts>[:200]`` when that turn carries tool results;
* ``stop_sequences``: the one complete earliest in the text cuts it just before and answers
  ``stop_reason: "stop_sequence"``, ``stop_sequence: <it>``;
* ``max_tokens``: counted in whitespace words (as everywhere in the mock); a longer answer is
  cut there with ``stop_reason: "max_tokens"`` (which wins over a stop sequence beyond it);
* ``tools``: unless ``tool_choice`` is ``none`` or the last user turn carries tool results
  (so agent loops end, as on the OpenAI side -- even under ``any``), one ``tool_use`` per
  tool in order -- only the first with ``disable_parallel_tool_use``, only the named one
  under ``{"type": "tool"}`` -- ids ``toolu_mock_<seq>_<i>``, ``input`` built from its
  ``input_schema`` (``schema_values``), ``stop_reason: "tool_use"``. Their tokens are the
  words of the inputs' JSON; when ``max_tokens`` cuts one, its ``input`` is ``{}`` in the
  JSON body and its stream stops mid-JSON, the later calls are left out, and the stop reason
  is ``max_tokens``;
* input tokens: the words of ``system``, of every text and tool_result, and of every
  tool_use input's JSON (min 1).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from cognitude.mock_upstream.protocol import MAX_ECHO_CHARS, WORD, limit_words, text_of, words
from cognitude.mock_upstream.schema_values import example
from cognitude.mock_upstream.tools import fragments


class Answer(NamedTuple):
    blocks: list[dict[str, Any]]  # the content, as the JSON body carries it
    pieces: list[list[str]]  # per block, the stream's delta texts (text or partial_json)
    stop_reason: str
    stop_sequence: str | None
    output_tokens: int


def _blocks(content: Any) -> list[dict[str, Any]]:
    return content if isinstance(content, list) else []


def _last_user(messages: list[dict[str, Any]]) -> dict[str, Any]:
    # Validation guarantees the first turn is a user turn.
    return next(m for m in reversed(messages) if m["role"] == "user")


def _results(msg: dict[str, Any]) -> list[dict[str, Any]]:
    return [b for b in _blocks(msg["content"]) if b["type"] == "tool_result"]


def echo_text(messages: list[dict[str, Any]]) -> str:
    last = _last_user(messages)
    results = _results(last)
    if results:
        said = " ".join(text_of(b.get("content")) for b in results)
        return "mock reply to tool result: " + said[:MAX_ECHO_CHARS]
    return "mock reply to: " + text_of(last["content"])[:MAX_ECHO_CHARS]


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, str | None]:
    """Generation stops at the first sequence to be complete: the one ending earliest."""
    found = [(text.find(s) + len(s), s) for s in stops if s in text]
    if not found:
        return text, None
    _, stop = min(found, key=lambda f: f[0])
    return text[: text.find(stop)], stop


def _text_answer(req: dict[str, Any]) -> Answer:
    text, stop = _cut_at_stop(echo_text(req["messages"]), req.get("stop_sequences") or [])
    text, tokens, truncated = limit_words(text, req["max_tokens"])
    if truncated:
        reason, stop = "max_tokens", None
    else:
        reason = "stop_sequence" if stop is not None else "end_turn"
    block = {"type": "text", "text": text}
    return Answer([block], [WORD.findall(text)], reason, stop, tokens)


def _called(req: dict[str, Any]) -> list[dict[str, Any]]:
    """The tools the mock "decides" to call (none: answer text)."""
    tools: list[dict[str, Any]] = req.get("tools") or []
    choice = req.get("tool_choice") or {"type": "auto"}
    if not tools or choice["type"] == "none" or _results(_last_user(req["messages"])):
        return []
    if choice["type"] == "tool":
        return [t for t in tools if t["name"] == choice["name"]]
    return tools[:1] if choice.get("disable_parallel_tool_use") is True else tools


def _tool_answer(req: dict[str, Any], seq: int, called: list[dict[str, Any]]) -> Answer:
    limit: int = req["max_tokens"]
    blocks: list[dict[str, Any]] = []
    pieces: list[list[str]] = []
    used = 0
    for i, tool in enumerate(called):
        if used >= limit:
            return Answer(blocks, pieces, "max_tokens", None, used)
        value = example(tool["input_schema"])
        value = value if isinstance(value, dict) else {}
        json_text, tokens, truncated = limit_words(orjson.dumps(value).decode(), limit - used)
        used += tokens
        block = {"type": "tool_use", "id": f"toolu_mock_{seq}_{i}", "name": tool["name"]}
        blocks.append({**block, "input": {} if truncated else value})
        pieces.append(fragments(json_text))
        if truncated:
            return Answer(blocks, pieces, "max_tokens", None, used)
    return Answer(blocks, pieces, "tool_use", None, used)


def answer(req: dict[str, Any], seq: int) -> Answer:
    """The answer to a validated request; ``seq`` (the request's number) makes ids unique."""
    called = _called(req)
    return _tool_answer(req, seq, called) if called else _text_answer(req)


def _content_words(content: Any) -> int:
    if isinstance(content, str):
        return words(content)
    total = 0
    for block in _blocks(content):
        if block["type"] == "text":
            total += words(block["text"])
        elif block["type"] == "tool_result":
            total += words(text_of(block.get("content")))
        elif block["type"] == "tool_use":
            total += words(orjson.dumps(block["input"]).decode())
    return total


def input_tokens(req: dict[str, Any]) -> int:
    system = req.get("system")
    total = words(text_of(system)) if system is not None else 0
    return max(total + sum(_content_words(m["content"]) for m in req["messages"]), 1)
