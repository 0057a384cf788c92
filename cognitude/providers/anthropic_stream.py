"""Anthropic's Messages stream as OpenAI ``chat.completion.chunk`` events, and the two rules
the stream and the whole answer (``providers.anthropic``) share: stop reasons and usage.

- **Stop reasons**: ``end_turn`` and ``stop_sequence`` → ``stop``, ``max_tokens`` →
  ``length``, ``tool_use`` → ``tool_calls``, ``refusal`` → ``content_filter``; anything else
  (``pause_turn``, reasons added later) → ``stop``, the one every client handles.
- **Usage**: OpenAI counts cached prompt tokens inside ``prompt_tokens``; Anthropic counts
  them beside ``input_tokens``. So ``prompt_tokens = input_tokens + cache_read_input_tokens +
  cache_creation_input_tokens``, ``completion_tokens = output_tokens``, ``total_tokens`` the
  sum, and ``prompt_tokens_details.cached_tokens = cache_read_input_tokens``: the prompt a
  client is billed for is the whole prompt, whichever part a cache served.
- **Events**: ``message_start`` → the role chunk; text deltas → content deltas; each
  ``tool_use`` block → a tool-call delta with its own counter (0, 1, …: OpenAI's ``index``
  counts tool calls, Anthropic's counts every block, text and thinking included), its
  ``input_json_delta`` pieces → argument deltas; ``message_delta`` holds the stop reason and
  output usage; ``message_stop`` → the final chunk, the usage chunk (always: the accumulator
  drops it for a client that did not ask), ``[DONE]``. ``ping``, ``content_block_stop``,
  thinking blocks and event types added later are dropped; an ``error`` event raises
  ``UpstreamError``. Events already translated in the same ``feed`` are then not returned:
  the stream is failing anyway, and the caller ends it with its error event.
- **Framing**: events end with a blank line, ``\\n\\n`` or ``\\r\\n\\r\\n`` (decided by the
  first line, as ``hotpath.sse`` does); chunks may cut anywhere. The chunk prefix (id,
  created, model) is serialised once per stream, so a text delta costs one small
  ``orjson.dumps``.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from cognitude.errors import UpstreamError

FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                  "tool_use": "tool_calls", "refusal": "content_filter"}
DONE = b"data: [DONE]\n\n"
_TEXT = -1  # the block-kind marker for a text block (tool calls are 0, 1, …)
_OPEN = b',"finish_reason":null}]}\n\n'
# Error types worth another attempt (before the first byte reached the client).
_TRANSIENT = frozenset({"overloaded_error", "api_error", "rate_limit_error"})
_USAGE_KEYS = ("input_tokens", "output_tokens", "cache_read_input_tokens",
               "cache_creation_input_tokens")


def finish_reason(stop_reason: object) -> str:
    """OpenAI's ``finish_reason`` for an Anthropic ``stop_reason``."""
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def openai_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's ``usage`` for Anthropic's (the rule in the module docstring)."""
    cached = _count(usage.get("cache_read_input_tokens"))
    prompt = (_count(usage.get("input_tokens")) + cached
              + _count(usage.get("cache_creation_input_tokens")))
    completion = _count(usage.get("output_tokens"))
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


class AnthropicStream:
    """One Messages stream; ``feed`` takes its bytes and returns whole OpenAI SSE events."""

    __slots__ = ("_provider", "_max_pending", "_buf", "_sep", "_base", "_head", "_blocks",
                 "_calls", "_stop", "_usage", "_done")

    def __init__(self, provider: str, *, max_pending: int = 1 << 25) -> None:
        self._provider = provider
        self._max_pending = max_pending  # bytes without an event's end: not an SSE stream
        self._buf = b""
        self._sep = b""
        self._base: dict[str, Any] = {}
        self._head = b""  # every choice chunk's bytes up to its delta, from message_start
        self._blocks: dict[Any, int] = {}  # Anthropic block index -> _TEXT or tool call k
        self._calls = 0
        self._stop: object = None
        self._usage: dict[str, Any] = {}
        self._done = False

    def feed(self, chunk: bytes) -> bytes:
        if self._done:
            return b""  # after message_stop nothing is left to say
        buf = self._buf + chunk if self._buf else chunk
        sep = self._sep
        if not sep:
            first = buf.find(b"\n")
            if first < 0:
                return self._keep(buf)
            sep = self._sep = b"\r\n\r\n" if first and buf[first - 1] == 13 else b"\n\n"
        out: list[bytes] = []
        start = 0
        while not self._done and (end := buf.find(sep, start)) >= 0:
            event = self._event(buf[start:end])
            if event:
                out.append(event)
            start = end + len(sep)
        self._keep(b"" if self._done else buf[start:])
        return b"".join(out)

    def _keep(self, rest: bytes) -> bytes:
        if len(rest) > self._max_pending:
            raise self._bad(f"sent {len(rest)} bytes without ending an event")
        self._buf = rest
        return b""

    def _bad(self, what: str) -> UpstreamError:
        return UpstreamError(f"Upstream provider `{self._provider}` {what} in its Messages "
                             "stream.", code="upstream_bad_response")

    def _event(self, event: bytes) -> bytes:
        data = [line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")]
        if not data:
            return b""  # comments, a lone event: line
        try:
            obj = orjson.loads(b"\n".join(data))
        except orjson.JSONDecodeError:
            raise self._bad("sent an event whose data is not JSON") from None
        kind = obj.get("type") if isinstance(obj, dict) else None
        if not isinstance(kind, str):
            raise self._bad("sent an event without a type")
        try:
            return self._dispatch(kind, obj)
        except (KeyError, TypeError, AttributeError):
            raise self._bad(f"sent a malformed `{kind}` event") from None

    def _dispatch(self, kind: str, obj: dict[str, Any]) -> bytes:
        if kind == "error":
            raise self._error(obj)
        if kind == "message_start":
            return self._start(obj["message"])
        if kind in ("content_block_delta", "content_block_start", "message_stop") \
                and not self._head:
            raise self._bad(f"sent `{kind}` before `message_start`")
        if kind == "content_block_delta":
            return self._delta(obj["index"], obj["delta"])
        if kind == "content_block_start":
            return self._block(obj["index"], obj["content_block"])
        if kind == "message_delta":
            self._stop = obj["delta"].get("stop_reason") or self._stop
            self._merge(obj.get("usage"))
            return b""
        if kind == "message_stop":
            return self._end()
        return b""  # ping, content_block_stop, event types added later

    def _chunk(self, delta: dict[str, Any]) -> bytes:
        return self._head + orjson.dumps(delta) + _OPEN

    def _start(self, message: dict[str, Any]) -> bytes:
        self._base = {"id": message.get("id", ""), "object": "chat.completion.chunk",
                      "created": int(time.time()), "model": message.get("model", "")}
        self._head = (b"data: " + orjson.dumps(self._base)[:-1]
                      + b',"choices":[{"index":0,"delta":')
        self._merge(message.get("usage"))
        return self._chunk({"role": "assistant", "content": ""})

    def _merge(self, usage: object) -> None:
        # message_delta's counts are cumulative: a later count replaces an earlier one.
        if isinstance(usage, dict):
            for key in _USAGE_KEYS:
                if usage.get(key) is not None:
                    self._usage[key] = usage[key]

    def _block(self, index: Any, block: dict[str, Any]) -> bytes:
        kind = block["type"]
        if kind == "text":
            self._blocks[index] = _TEXT
            text = block.get("text")
            return self._chunk({"content": text}) if isinstance(text, str) and text else b""
        if kind != "tool_use":
            return b""  # thinking, redacted_thinking, server tools: not the client's to see
        k = self._blocks[index] = self._calls
        self._calls += 1
        given = block.get("input")  # {} in a stream: the input follows as JSON pieces
        call = {"index": k, "id": block["id"], "type": "function",
                "function": {"name": block["name"],
                             "arguments": orjson.dumps(given).decode() if given else ""}}
        return self._chunk({"tool_calls": [call]})

    def _delta(self, index: Any, delta: dict[str, Any]) -> bytes:
        slot = self._blocks.get(index)
        if slot is None:
            return b""  # a dropped block's delta (thinking, signature)
        if slot == _TEXT:
            text = delta.get("text")
            return self._chunk({"content": text}) if isinstance(text, str) and text else b""
        part = delta.get("partial_json")
        if not isinstance(part, str) or not part:
            return b""
        return self._chunk({"tool_calls": [{"index": slot, "function": {"arguments": part}}]})

    def _end(self) -> bytes:
        self._done = True
        final = (self._head + b'{},"finish_reason":"' + finish_reason(self._stop).encode()
                 + b'"}]}\n\n')
        usage = {**self._base, "choices": [], "usage": openai_usage(self._usage)}
        return final + b"data: " + orjson.dumps(usage) + b"\n\n" + DONE

    def _error(self, obj: dict[str, Any]) -> UpstreamError:
        err = obj.get("error")
        err = err if isinstance(err, dict) else {}
        kind = str(err.get("type") or "error")
        code = "upstream_overloaded" if kind == "overloaded_error" else "upstream_error"
        return UpstreamError(f"Upstream provider `{self._provider}` sent an error in its "
                             f"stream ({kind}): {err.get('message') or 'no message'}",
                             code=code, retryable=kind in _TRANSIENT)
