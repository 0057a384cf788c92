"""What both API dialects share: the reply type and OpenAI's error envelope, request
validation, and the deterministic echo reply with its word-count "tokens".

Handlers return a ``Reply`` (one JSON response) or a list of ready-framed SSE events; only
the dispatcher (``app``) touches ASGI.
"""

from __future__ import annotations

import re
from typing import Any, TypeAlias

from cognitude.mock_upstream.asgi import Headers

MAX_ECHO_CHARS = 200
WORD = re.compile(r"\S+\s*")  # one "token" plus its trailing whitespace: pieces re-join exactly
NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")  # function and json_schema names


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


def missing(param: str) -> Reply:
    return error(
        400, f"Missing required parameter: '{param}'.", param, "missing_required_parameter"
    )


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return _JSON_TYPES.get(type(value), "a value")


def invalid_type(param: str, expected: str, value: Any) -> Reply:
    return error(
        400,
        f"Invalid type for '{param}': expected {expected}, but got {_kind(value)} instead.",
        param,
        "invalid_type",
    )


def empty_array(param: str) -> Reply:
    return error(
        400,
        f"Invalid '{param}': empty array. Expected an array with minimum length 1, "
        "but got an empty array instead.",
        param,
        "empty_array",
    )


def bad_name(param: str, name: Any) -> Reply | None:
    """The rule the real API applies to function and json_schema names."""
    if not isinstance(name, str):
        return invalid_type(param, "a string", name)
    if len(name) > 64:
        return error(
            400,
            f"Invalid '{param}': string too long. Expected a string with maximum length 64, "
            f"but got a string with length {len(name)} instead.",
            param,
            "string_above_max_length",
        )
    if not NAME.fullmatch(name):
        return error(
            400,
            f"Invalid '{param}': string does not match pattern. Expected a string that "
            "matches the pattern '^[a-zA-Z0-9_-]+$'.",
            param,
            "invalid_value",
        )
    return None


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


def echo_text(messages: list[Any]) -> str:
    """The reply to the last user message, or to the tool result that ends the conversation."""
    if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool":
        return "mock reply to tool result: " + text_of(messages[-1].get("content"))[:MAX_ECHO_CHARS]
    last = next(
        (m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None
    )
    return "mock reply to: " + text_of(last.get("content") if last else "")[:MAX_ECHO_CHARS]


def limit_words(text: str, limit: int | None) -> tuple[str, int, bool]:
    """(text, completion_tokens, truncated): ``text`` cut to ``limit`` words, as the real API
    cuts at max_tokens -- even mid-JSON, which is what a client then really receives."""
    pieces = WORD.findall(text)
    if limit is not None and len(pieces) > limit:
        return "".join(pieces[:limit]).rstrip(), limit, True
    return text, len(pieces), False


def echo_reply(messages: list[Any], limit: int | None) -> tuple[str, int, bool]:
    """(content, completion_tokens, truncated) for the last user message."""
    return limit_words(echo_text(messages), limit)


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
