"""Anthropic's Messages API (``POST /v1/messages``), JSON and SSE, plus its error envelope."""

from __future__ import annotations

from typing import Any

import orjson

from cognitude.mock_upstream.protocol import (
    WORD,
    Reply,
    Response,
    bad_limit,
    echo_reply,
    error,
    prompt_tokens,
    validate_messages,
)

# Anthropic's names for OpenAI's error classes, by HTTP status.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
}


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


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def messages(req: Any, n: int, stream: bool) -> Response:
    """``POST /v1/messages``; ``n`` makes the message id unique."""
    failed = validate_messages(req)
    if failed is None and req.get("max_tokens") is None:
        # Unlike OpenAI, Anthropic's API requires max_tokens.
        failed = error(
            400, "max_tokens: Field required", "max_tokens", "missing_required_parameter"
        )
    failed = failed or bad_limit(req, "max_tokens")
    if failed:
        return failed
    content, output, truncated = echo_reply(req["messages"], req["max_tokens"])
    usage = {
        "input_tokens": prompt_tokens(req["messages"], req.get("system")),
        "output_tokens": output,
    }
    stop_reason = "max_tokens" if truncated else "end_turn"
    msg: dict[str, Any] = {
        "id": f"msg_mock_{n}",
        "type": "message",
        "role": "assistant",
        "model": req["model"],
    }
    if not stream:
        body = {
            **msg,
            "content": [{"type": "text", "text": content}],
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }
        return 200, body, ()

    start = {
        **msg,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 0},
    }
    events = [
        _event("message_start", {"type": "message_start", "message": start}),
        _event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
    ]
    events += [
        _event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": piece},
            },
        )
        for piece in WORD.findall(content)
    ]
    events += [
        _event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": output},
            },
        ),
        _event("message_stop", {"type": "message_stop"}),
    ]
    return events
