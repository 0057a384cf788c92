"""Anthropic's Messages API, as the adapter for ``kind = "anthropic"`` providers: an OpenAI
chat completion request is rewritten as a Messages request (``providers.anthropic_request``,
field by field), and the answer, its stream (``providers.anthropic_stream``) and its errors
are rewritten back.

The answer: text blocks joined into ``content`` (None without text), ``tool_use`` blocks →
``tool_calls``; the stop reason and usage rules (cache tokens counted inside
``prompt_tokens``, the cache reads as ``cached_tokens``) are ``anthropic_stream``'s.

Errors by status and type: 400 → 400 (``context_length_exceeded`` when the prompt is too
long), 401/403/404/413 → that status, 429 → 429 with Retry-After, 529 overloaded → 503
retryable, another 5xx → 502 retryable, a redirect → 502; always in OpenAI's shape, the key
scrubbed first.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import orjson

from cognitude.errors import UpstreamError, UpstreamHTTPError, error_body
from cognitude.providers.adapter import (
    redirected,
    retry_after_seconds,
    retryable_status,
    scrubbed,
)
from cognitude.providers.anthropic_request import to_messages
from cognitude.providers.anthropic_stream import AnthropicStream, finish_reason, openai_usage

VERSION = "2023-06-01"
_CODES = {401: "invalid_api_key", 403: "permission_denied", 404: "not_found",
          413: "request_too_large"}
# How Anthropic words a prompt over the context window (lower-cased).
_TOO_LONG = ("prompt is too long", "exceed context limit", "context window", "context length")


class _Block(msgspec.Struct):
    type: str
    text: str = ""
    id: str = ""
    name: str = ""
    input: Any = None


class _Message(msgspec.Struct):
    content: list[_Block]
    id: str = ""
    model: str = ""
    stop_reason: str | None = None
    usage: dict[str, Any] | None = None


_MESSAGE = msgspec.json.Decoder(_Message)


def _error_text(body: bytes) -> tuple[str | None, str]:
    """(Anthropic's error type, its message); a body not in its shape → its first 500 bytes."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        kind = err.get("type")
        return (kind if isinstance(kind, str) else None), err["message"]
    return None, body[:500].decode("utf-8", "replace")


class AnthropicAdapter:
    """``kind = "anthropic"``: Anthropic's Messages API."""

    __slots__ = ()
    kind = "anthropic"
    _PATHS = {"chat": "/messages"}  # Anthropic has no embeddings

    @staticmethod
    def headers(key: str) -> dict[str, str]:
        auth = {"x-api-key": key} if key else {}
        return {"Content-Type": "application/json", **auth, "anthropic-version": VERSION}

    def path(self, endpoint: str) -> str | None:
        return self._PATHS.get(endpoint)

    @staticmethod
    def upstream_body(doc: dict[str, Any], body: bytes, *, model: str, chat_stream: bool,
                      stream_usage: bool, max_output: int = 0) -> tuple[bytes, bool]:
        """The Messages request, and whether the usage chunk (which the stream translator
        always emits) must be left out for the client."""
        out = to_messages(doc, model, chat_stream, max_output)
        opts = doc.get("stream_options")
        asked = isinstance(opts, dict) and opts.get("include_usage") is True
        return orjson.dumps(out), chat_stream and not asked

    @staticmethod
    def answer(body: bytes, endpoint: str, provider: str
               ) -> tuple[bytes, dict[str, Any] | None]:
        """A Messages response as a ``chat.completion``, and its OpenAI usage."""
        try:
            msg = _MESSAGE.decode(body)
        except msgspec.DecodeError:
            raise UpstreamError(f"Upstream provider `{provider}` answered 200 with a body that "
                                "is not a valid Messages response.",
                                code="upstream_bad_response") from None
        text = "".join(b.text for b in msg.content if b.type == "text")
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        calls = [{"id": b.id, "type": "function",
                  "function": {"name": b.name, "arguments": orjson.dumps(
                      b.input if b.input is not None else {}).decode()}}
                 for b in msg.content if b.type == "tool_use"]
        if calls:
            message["tool_calls"] = calls
        doc: dict[str, Any] = {
            "id": msg.id, "object": "chat.completion", "created": int(time.time()),
            "model": msg.model, "choices": [{"index": 0, "message": message,
                                             "finish_reason": finish_reason(msg.stop_reason)}]}
        usage = openai_usage(msg.usage) if msg.usage is not None else None
        if usage is not None:
            doc["usage"] = usage
        return orjson.dumps(doc), usage

    @staticmethod
    def stream(provider: str) -> AnthropicStream:
        return AnthropicStream(provider)

    @staticmethod
    def error(name: str, secret: bytes, status: int, body: bytes,
              retry_after: str | None) -> UpstreamError:
        """An upstream non-200 as our error, in OpenAI's shape (rules in the docstring)."""
        body = scrubbed(body, secret)
        if 300 <= status < 400:
            return redirected(name, status)
        kind, text = _error_text(body)
        said = f"Upstream provider `{name}` returned {status}" \
               f"{f' ({kind})' if kind else ''}: {text}"
        wait = retry_after_seconds(retry_after)
        passed = [(b"retry-after", retry_after.encode())] if retry_after else []
        if status == 529 or (status >= 500 and kind == "overloaded_error"):
            return UpstreamHTTPError(503, error_body(said, "server_error", None,
                                                     "upstream_overloaded"),
                                     passed, retryable=True, retry_after_s=wait)
        if not 400 <= status < 500:
            return UpstreamError(said, code=f"upstream_{status}",
                                 retryable=retryable_status(status), retry_after_s=wait)
        if status == 429:
            out = error_body(said, "rate_limit_exceeded", None, "rate_limit_exceeded")
        elif status == 400 and any(s in text.lower() for s in _TOO_LONG):
            out = error_body(said, "invalid_request_error", "messages", "context_length_exceeded")
        else:
            out = error_body(said, "invalid_request_error", None,
                             _CODES.get(status, None if status == 400 else f"upstream_{status}"))
        return UpstreamHTTPError(status, out, passed, retryable=retryable_status(status),
                                 retry_after_s=wait)


ANTHROPIC = AnthropicAdapter()
