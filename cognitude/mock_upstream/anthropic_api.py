"""Anthropic's Messages API (``POST /v1/messages``) on the wire: the JSON body, the SSE event
sequence, and Anthropic's error envelope.

What is checked is ``anthropic_validate``; what is answered, ``anthropic_answer``. The
stream is the real event sequence: ``message_start`` (usage with the input tokens and
``output_tokens: 1``), then per content block ``content_block_start``, its deltas
(``text_delta`` per word; ``input_json_delta`` pieces of a few characters that split the
tool input's JSON anywhere) and ``content_block_stop`` -- a ``ping`` right after the first
block starts, where the real API sends it -- then ``message_delta`` (stop reason, stop
sequence, ``usage.output_tokens``) and ``message_stop``.

``usage`` carries ``cache_creation_input_tokens`` and ``cache_read_input_tokens`` (always 0:
the mock caches nothing) when the request names its ``anthropic-version``, as every real
client does; a request without the header (accepted unless the mock runs with
``require_anthropic_version``) gets the bare ``{input_tokens, output_tokens}`` older callers
of the mock expect.
"""

from __future__ import annotations

from typing import Any

import orjson

from cognitude.mock_upstream import anthropic_validate
from cognitude.mock_upstream.anthropic_answer import Answer, answer, input_tokens
from cognitude.mock_upstream.protocol import Reply, Response

# Anthropic's names for the error classes, by HTTP status.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


def as_anthropic(reply: Reply) -> Reply:
    """An OpenAI-envelope error re-shaped as Anthropic's ``{"type": "error", "error": ...}``,
    so both dialects look like their real API (status and extra headers unchanged)."""
    status, payload, headers = reply
    kind = _ERROR_TYPES.get(status, "api_error")
    return (
        status,
        {"type": "error", "error": {"type": kind, "message": payload["error"]["message"]}},
        headers,
    )


def event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _usage(req: dict[str, Any], output: int, versioned: bool) -> dict[str, int]:
    prompt = input_tokens(req)
    if not versioned:
        return {"input_tokens": prompt, "output_tokens": output}
    return {
        "input_tokens": prompt,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output,
    }


def messages(req: Any, seq: int, stream: bool, *, version: str | None = None) -> Response:
    """``POST /v1/messages``; ``seq`` makes ids unique, ``version`` is the request's
    ``anthropic-version`` header (already checked by ``header_refusal``)."""
    failed = anthropic_validate.validate(req)
    if failed:
        return failed
    result = answer(req, seq)
    usage = _usage(req, result.output_tokens, version is not None)
    msg: dict[str, Any] = {
        "id": f"msg_mock_{seq}",
        "type": "message",
        "role": "assistant",
        "model": req["model"],
    }
    if stream:
        return _events(msg, result, usage)
    body = {
        **msg,
        "content": result.blocks,
        "stop_reason": result.stop_reason,
        "stop_sequence": result.stop_sequence,
        "usage": usage,
    }
    return 200, body, ()


def _block_start(block: dict[str, Any]) -> dict[str, Any]:
    """A block as ``content_block_start`` announces it: empty, filled in by the deltas."""
    if block["type"] == "text":
        return {"type": "text", "text": ""}
    return {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}


def _delta(block: dict[str, Any], piece: str) -> dict[str, str]:
    if block["type"] == "text":
        return {"type": "text_delta", "text": piece}
    return {"type": "input_json_delta", "partial_json": piece}


def _block_events(index: int, block: dict[str, Any], pieces: list[str]) -> list[bytes]:
    start = {"type": "content_block_start", "index": index, "content_block": _block_start(block)}
    events = [event("content_block_start", start)]
    if index == 0:
        events.append(event("ping", {"type": "ping"}))
    events += [
        event(
            "content_block_delta",
            {"type": "content_block_delta", "index": index, "delta": _delta(block, piece)},
        )
        for piece in pieces
    ]
    events.append(event("content_block_stop", {"type": "content_block_stop", "index": index}))
    return events


def _events(msg: dict[str, Any], result: Answer, usage: dict[str, int]) -> list[bytes]:
    start = {
        **msg,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 1},
    }
    events = [event("message_start", {"type": "message_start", "message": start})]
    for index, (block, pieces) in enumerate(zip(result.blocks, result.pieces, strict=True)):
        events += _block_events(index, block, pieces)
    delta = {"stop_reason": result.stop_reason, "stop_sequence": result.stop_sequence}
    events.append(
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": delta,
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
    )
    events.append(event("message_stop", {"type": "message_stop"}))
    return events


def stream_error() -> bytes:
    """The ``error`` event the real API sends when it is overloaded mid-stream."""
    return event("error", OVERLOADED)
