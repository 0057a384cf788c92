"""``messages`` of a Messages request: each turn, each content block, and the rules between
turns, as strict as the real API -- the translation from OpenAI chat is what tests prove,
so every shape a wrong translation produces must be refused here.

Per turn: ``role`` is ``user`` or ``assistant`` (no ``system`` turns: that is the top-level
``system``), ``content`` a non-empty string or a non-empty list of blocks (only the final
assistant turn, a prefill, may be empty; it may not end with whitespace). Blocks: ``text``
(non-blank), ``image`` (a ``base64`` source whose bytes really are the ``media_type`` it
names, or a ``url`` source), ``tool_use`` (assistant only; ``input`` an object, not
OpenAI's JSON string) and ``tool_result`` (user only, before any other block of its turn).

Between turns: the first is ``user`` and the sides alternate; every ``tool_use`` is answered
by a ``tool_result`` in the very next turn, and every ``tool_result`` answers a ``tool_use``
of the turn just before. The texts copy the real API's (``messages.3: `tool_use` ids were
found without `tool_result` blocks immediately after: ...``).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from cognitude.mock_upstream.anthropic_checks import (
    bad_cache_control,
    bad_object,
    bad_string,
    bad_tag,
    expected,
    invalid,
    one_of,
    required,
)
from cognitude.mock_upstream.protocol import Reply

ROLES = ("user", "assistant")
BLOCK_TYPES = ("text", "image", "tool_use", "tool_result")
RESULT_BLOCK_TYPES = ("text", "image")  # what a tool_result's own content may hold
MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
SOURCE_TYPES = ("base64", "url")
TOOL_USE_ID = re.compile(r"[a-zA-Z0-9_-]+")
_KEYS = {
    "text": ("type", "text", "cache_control", "citations"),
    "image": ("type", "source", "cache_control"),
    "tool_use": ("type", "id", "name", "input", "cache_control"),
    "tool_result": ("type", "tool_use_id", "content", "is_error", "cache_control"),
}
_SOURCE_KEYS = {"base64": ("type", "media_type", "data"), "url": ("type", "url")}
# The real API sniffs the decoded bytes: a data URL's media type that lies is a 400.
_MAGIC = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
}


def _is_webp(raw: bytes) -> bool:
    return raw[:4] == b"RIFF" and raw[8:12] == b"WEBP"


def _bad_image_bytes(source: dict[str, Any], at: str) -> Reply | None:
    try:
        raw = base64.b64decode(source["data"], validate=True)
    except (binascii.Error, ValueError):
        return invalid(f"{at}.data: The image data is not valid base64")
    media = source["media_type"]
    ok = _is_webp(raw) if media == "image/webp" else raw.startswith(_MAGIC[media])
    return None if ok else invalid(f"{at}: Image does not match the provided media type {media}")


def _bad_source(source: Any, at: str) -> Reply | None:
    if not isinstance(source, dict):
        return expected(at, "a valid dictionary")
    kind = source.get("type")
    if kind not in SOURCE_TYPES:
        return bad_tag(at, kind, SOURCE_TYPES)
    failed = bad_object(source, at, _SOURCE_KEYS[kind])
    if failed:
        return failed
    if kind == "url":
        return bad_string(source, "url", at)
    if "media_type" not in source:
        return required(f"{at}.media_type")
    if source["media_type"] not in MEDIA_TYPES:
        return one_of(f"{at}.media_type", MEDIA_TYPES)
    return bad_string(source, "data", at) or _bad_image_bytes(source, at)


def _bad_text(block: dict[str, Any], at: str) -> Reply | None:
    failed = bad_string(block, "text", at)
    if failed:
        return failed
    if not block["text"]:
        return invalid(f"{at}.text: text content blocks must be non-empty")
    if not block["text"].strip():
        return invalid(f"{at}.text: text content blocks must contain non-whitespace text")
    return None


def _bad_tool_use(block: dict[str, Any], at: str) -> Reply | None:
    failed = bad_string(block, "id", at) or bad_string(block, "name", at)
    if failed:
        return failed
    if not TOOL_USE_ID.fullmatch(block["id"]):
        return invalid(f"{at}.id: String should match pattern '^[a-zA-Z0-9_-]+$'")
    if "input" not in block:
        return required(f"{at}.input")
    if not isinstance(block["input"], dict):  # e.g. OpenAI's arguments string passed through
        return expected(f"{at}.input", "a valid dictionary")
    return None


def _bad_tool_result(block: dict[str, Any], at: str) -> Reply | None:
    failed = bad_string(block, "tool_use_id", at)
    if failed:
        return failed
    if "is_error" in block and not isinstance(block["is_error"], bool):
        return expected(f"{at}.is_error", "a valid boolean")
    content = block.get("content")
    if content is None or isinstance(content, str):
        return None
    if not isinstance(content, list):
        return expected(f"{at}.content", "a valid string or a list of content blocks")
    for k, inner in enumerate(content):
        failed = bad_block(inner, f"{at}.content.{k}", RESULT_BLOCK_TYPES)
        if failed:
            return failed
    return None


def _bad_image(block: dict[str, Any], at: str) -> Reply | None:
    if "source" not in block:
        return required(f"{at}.source")
    return _bad_source(block["source"], f"{at}.source")


_BLOCK_CHECKS = {
    "text": _bad_text,
    "image": _bad_image,
    "tool_use": _bad_tool_use,
    "tool_result": _bad_tool_result,
}


def bad_block(block: Any, at: str, types: tuple[str, ...] = BLOCK_TYPES) -> Reply | None:
    """One content block of one of ``types`` (an OpenAI ``image_url`` part is not one)."""
    if not isinstance(block, dict):
        return expected(at, "a valid dictionary")
    if "type" not in block:
        return required(f"{at}.type")
    kind = block["type"]
    if kind not in types:
        return bad_tag(at, kind, types)
    failed = bad_object(block, at, _KEYS[kind])
    if failed:
        return failed
    if "cache_control" in block:
        failed = bad_cache_control(block["cache_control"], at)
        if failed:
            return failed
    check = _BLOCK_CHECKS[kind]
    return check(block, at)


def _bad_placement(kind: str, role: str, at: str) -> Reply | None:
    if kind == "tool_use" and role != "assistant":
        return invalid(f"{at}: `tool_use` blocks can only be in `assistant` messages")
    if kind == "tool_result" and role != "user":
        return invalid(f"{at}: `tool_result` blocks can only be in `user` messages")
    return None


def _final_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    last = content[-1] if content else None
    return last["text"] if isinstance(last, dict) and last.get("type") == "text" else ""


def _bad_content(content: Any, role: str, at: str, final: bool) -> Reply | None:
    """The content's shape, then the emptiness rules (a final assistant turn is a prefill:
    it may be empty, but may not end with whitespace)."""
    if isinstance(content, list):
        failed = _bad_blocks(content, role, f"{at}.content")
        if failed:
            return failed
    elif not isinstance(content, str):
        return expected(f"{at}.content", "a valid string or a list of content blocks")
    if final and role == "assistant":
        if _final_text(content) != _final_text(content).rstrip():
            return invalid("messages: final assistant content cannot end with trailing whitespace")
        return None
    if not content:
        return invalid(
            f"{at}: all messages must have non-empty content except for the optional final "
            "assistant message"
        )
    if isinstance(content, str) and not content.strip():
        return invalid(f"{at}.content: text content blocks must contain non-whitespace text")
    return None


def _bad_blocks(blocks: list[Any], role: str, at: str) -> Reply | None:
    for j, block in enumerate(blocks):
        failed = bad_block(block, f"{at}.{j}") or _bad_placement(block["type"], role, f"{at}.{j}")
        if failed:
            return failed
    return None


def _bad_message(msg: Any, i: int, final: bool) -> Reply | None:
    at = f"messages.{i}"
    failed = bad_object(msg, at, ("role", "content"))
    if failed:
        return failed
    if "role" not in msg:
        return required(f"{at}.role")
    if msg["role"] not in ROLES:  # "system" included: it is a top-level field here
        return one_of(f"{at}.role", ROLES)
    if "content" not in msg:
        return required(f"{at}.content")
    return _bad_content(msg["content"], msg["role"], at, final)


def _bad_order(messages: list[dict[str, Any]]) -> Reply | None:
    if messages[0]["role"] != "user":
        return invalid('messages.0.role: the first message must use the "user" role')
    for i in range(1, len(messages)):
        role = messages[i]["role"]
        if role == messages[i - 1]["role"]:
            return invalid(
                f'messages.{i}: roles must alternate between "user" and "assistant", but found '
                f'multiple "{role}" roles in a row'
            )
    return None


def _blocks_of(msg: dict[str, Any], kind: str) -> list[tuple[int, dict[str, Any]]]:
    content = msg["content"]
    if isinstance(content, str):
        return []
    return [(j, b) for j, b in enumerate(content) if b["type"] == kind]


def _bad_results(messages: list[dict[str, Any]], i: int) -> Reply | None:
    """User turn ``i``: its tool_results come first and answer turn ``i - 1``'s tool_uses."""
    asked = {b["id"] for _, b in _blocks_of(messages[i - 1], "tool_use")} if i else set()
    content = messages[i]["content"]
    seen: set[str] = set()
    for j, block in enumerate(content if isinstance(content, list) else []):
        at = f"messages.{i}.content.{j}"
        if block["type"] != "tool_result":
            continue
        if any(b["type"] != "tool_result" for b in content[:j]):
            return invalid(
                f"{at}: `tool_result` blocks must come first in the content array, before any "
                "other content"
            )
        use_id = block["tool_use_id"]
        if use_id not in asked:
            return invalid(
                f"{at}: unexpected `tool_use_id` found in `tool_result` blocks: {use_id}. Each "
                "`tool_result` block must have a corresponding `tool_use` block in the previous "
                "message."
            )
        if use_id in seen:
            return invalid(f"{at}: multiple `tool_result` blocks with id: {use_id}")
        seen.add(use_id)
    return None


def _bad_uses(messages: list[dict[str, Any]], i: int) -> Reply | None:
    """Assistant turn ``i``: unique tool_use ids, each answered in turn ``i + 1``."""
    ids: list[str] = []
    for j, block in _blocks_of(messages[i], "tool_use"):
        if block["id"] in ids:
            return invalid(f"messages.{i}.content.{j}: `tool_use` ids must be unique")
        ids.append(block["id"])
    nxt = messages[i + 1] if i + 1 < len(messages) else None
    answered = {b["tool_use_id"] for _, b in _blocks_of(nxt, "tool_result")} if nxt else set()
    unanswered = [x for x in ids if x not in answered]
    if unanswered:
        return invalid(
            f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately "
            f"after: {', '.join(unanswered)}. Each `tool_use` block must have a corresponding "
            "`tool_result` block in the next message."
        )
    return None


def _bad_pairing(messages: list[dict[str, Any]]) -> Reply | None:
    for i, msg in enumerate(messages):
        failed = _bad_results(messages, i) if msg["role"] == "user" else _bad_uses(messages, i)
        if failed:
            return failed
    return None


def bad_messages(messages: Any) -> Reply | None:
    """Every turn's shape first, then the order of turns, then tool pairing."""
    if not isinstance(messages, list):
        return expected("messages", "a valid list")
    if not messages:
        return invalid("messages: at least one message is required")
    last = len(messages) - 1
    for i, msg in enumerate(messages):
        failed = _bad_message(msg, i, i == last)
        if failed:
            return failed
    return _bad_order(messages) or _bad_pairing(messages)
