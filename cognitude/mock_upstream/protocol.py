"""What both API dialects share: the reply type and OpenAI's error envelope, request
validation, and the deterministic echo reply with its word-count "tokens".

Handlers return a ``Reply`` (one JSON response) or a list of ready-framed SSE events; only
the dispatcher (``app``) touches ASGI.
"""

from __future__ import annotations

import re
from typing import Any, TypeAlias

from .asgi import Headers

MAX_ECHO_CHARS = 200
WORD = re.compile(r"\S+\s*")  # one "token" plus its trailing whitespace: pieces re-join exactly


# (status, JSON payload, extra headers): a plain tuple, not a NamedTuple, because building
# one is ~10x cheaper and this is on every request's path.
Reply: TypeAlias = tuple[int, dict[str, Any], Headers]
Response: TypeAlias = Reply | list[bytes]  # a JSON body, or SSE events for ``asgi.send_events``


def error(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    *,
    kind: str = "invalid_request_error",
    headers: Headers = (),
) -> Reply:
    """An error in OpenAI's envelope (``anthropic_api.as_anthropic`` converts it)."""
    payload = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return status, payload, headers


def missing_model() -> Reply:
    return error(400, "you must provide a model parameter", "model", "missing_required_parameter")


def text_of(content: Any) -> str:
    """Message content is either a string or a list of parts; only text parts count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def words(text: str) -> int:
    return len(text.split())


def prompt_tokens(messages: list[Any], system: Any = None) -> int:
    total = words(text_of(system)) if system is not None else 0
    for m in messages:
        if isinstance(m, dict):
            total += words(text_of(m.get("content")))
    return max(total, 1)


def echo_reply(messages: list[Any], limit: int | None) -> tuple[str, int, bool]:
    """(content, completion_tokens, truncated) for the last user message."""
    last = next(
        (m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None
    )
    content = "mock reply to: " + text_of(last.get("content") if last else "")[:MAX_ECHO_CHARS]
    pieces = WORD.findall(content)
    if limit is not None and len(pieces) > limit:
        return "".join(pieces[:limit]).rstrip(), limit, True
    return content, len(pieces), False


def bad_limit(req: dict[str, Any], *names: str) -> Reply | None:
    for name in names:
        value = req.get(name)
        # bool is an int subclass; the real API rejects it, so do we.
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            return error(
                400,
                f"Invalid '{name}': expected an integer >= 1, got {value!r}.",
                name,
                "integer_below_min_value",
            )
    return None


def validate_messages(req: Any) -> Reply | None:
    if not isinstance(req, dict):
        return error(
            400,
            "We could not parse the JSON body of your request. The API expects a JSON object.",
        )
    if not isinstance(req.get("model"), str) or not req["model"]:
        return missing_model()
    if "messages" not in req:
        return error(
            400,
            "Missing required parameter: 'messages'.",
            "messages",
            "missing_required_parameter",
        )
    msgs = req["messages"]
    if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
        return error(
            400,
            "Invalid 'messages': expected a non-empty array of message objects.",
            "messages",
            "invalid_value",
        )
    return None
