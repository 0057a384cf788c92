"""The small vocabulary every Anthropic request check speaks: pydantic-style messages that
name the field by its dotted path (``messages.1.content.0.input: Input should be a valid
dictionary``), as the real API words them, and the JSON type tests behind them.

Each error is built in OpenAI's envelope like every other mock error; ``routes.respond``
re-shapes it as Anthropic's ``{"type": "error", ...}`` on ``/v1/messages``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cognitude.mock_upstream.protocol import Reply, error

CACHE_CONTROL_TYPES = ("ephemeral",)
CACHE_TTLS = ("5m", "1h")


def invalid(message: str) -> Reply:
    return error(400, message)


def is_int(value: Any) -> bool:
    # bool is an int subclass; the real API rejects true/false for integers, so do we.
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def required(at: str) -> Reply:
    return invalid(f"{at}: Field required")


def expected(at: str, what: str) -> Reply:
    """``what`` as pydantic says it: "a valid string", "a valid list", ..."""
    return invalid(f"{at}: Input should be {what}")


def one_of(at: str, values: Iterable[str]) -> Reply:
    quoted = [f"'{v}'" for v in values]
    listed = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
    return invalid(f"{at}: Input should be {listed}")


def bad_tag(at: str, tag: Any, tags: Iterable[str]) -> Reply:
    """A tagged union (content blocks, image sources, tool choices) given an unknown tag."""
    listed = ", ".join(f"'{t}'" for t in tags)
    return invalid(
        f"{at}: Input tag '{tag}' found using 'type' does not match any of the expected "
        f"tags: {listed}"
    )


def extra_key(obj: dict[str, Any], allowed: Iterable[str], at: str) -> Reply | None:
    """The real API forbids unknown fields at every level (``extra="forbid"``)."""
    allowed = frozenset(allowed)
    for key in obj:
        if key not in allowed:
            return invalid(f"{at}{key}: Extra inputs are not permitted")
    return None


def bad_object(value: Any, at: str, allowed: Iterable[str]) -> Reply | None:
    """Not an object, or an object with a field outside ``allowed``."""
    if not isinstance(value, dict):
        return expected(at, "a valid dictionary")
    return extra_key(value, allowed, f"{at}.")


def bad_cache_control(value: Any, at: str) -> Reply | None:
    """``cache_control`` may sit on any block or tool: ``{"type": "ephemeral", "ttl"?}``."""
    at = f"{at}.cache_control"
    failed = bad_object(value, at, ("type", "ttl"))
    if failed:
        return failed
    if "type" not in value:
        return required(f"{at}.type")
    if value["type"] not in CACHE_CONTROL_TYPES:
        return one_of(f"{at}.type", CACHE_CONTROL_TYPES)
    if "ttl" in value and value["ttl"] not in CACHE_TTLS:
        return one_of(f"{at}.ttl", CACHE_TTLS)
    return None


def bad_string(obj: dict[str, Any], key: str, at: str, *, optional: bool = False) -> Reply | None:
    if key not in obj:
        return None if optional else required(f"{at}.{key}")
    if not isinstance(obj[key], str):
        return expected(f"{at}.{key}", "a valid string")
    return None
