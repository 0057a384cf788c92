"""The request stage: the body under its size cap, parsed into the document the later stages
read, and the request headers the proxy itself acts on.
"""

from __future__ import annotations

from typing import Any

import orjson

from cognitude.errors import InvalidRequest, PayloadTooLarge


def parse_object(raw: bytes) -> dict[str, Any]:
    """``raw`` as a JSON object; 400 saying what is wrong otherwise (management routes and
    the hot route alike)."""
    if not raw:
        raise InvalidRequest("Request body is empty; expected a JSON object.")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidRequest("Request body must be a JSON object.")
    return doc


class ClientGone(Exception):
    """The client disconnected before we answered; nothing to send."""


async def read_body(receive: Any, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` bytes."""
    msg = await receive()
    if msg["type"] == "http.disconnect":
        raise ClientGone
    body = msg.get("body", b"")
    if not msg.get("more_body"):
        if len(body) > limit:
            raise PayloadTooLarge(f"Request body exceeds {limit} bytes.")
        return body
    parts = [body]
    size = len(body)
    while True:
        if size > limit:
            raise PayloadTooLarge(f"Request body exceeds {limit} bytes.")
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ClientGone
        chunk = msg.get("body", b"")
        parts.append(chunk)
        size += len(chunk)
        if not msg.get("more_body"):
            break
    if size > limit:
        raise PayloadTooLarge(f"Request body exceeds {limit} bytes.")
    return b"".join(parts)


def _parse(body: bytes, endpoint: str) -> dict:
    doc = parse_object(body)
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("`model` is required and must be a non-empty string.",
                             param="model")
    if endpoint == "chat":
        messages = doc.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("`messages` is required and must be a non-empty array.",
                                 param="messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise InvalidRequest(f"`messages[{i}]` must be an object with a string `role`.",
                                     param=f"messages[{i}]")
        stream = doc.get("stream")
        if stream is not None and not isinstance(stream, bool):
            raise InvalidRequest("`stream` must be a boolean.", param="stream")
    elif "input" not in doc:
        raise InvalidRequest("`input` is required.", param="input")
    return doc


def _parse_ttl(value: bytes, max_ttl: int) -> int:
    if not value.strip().isdigit():
        raise InvalidRequest("X-Cognitude-Cache-TTL must be a whole number of seconds.",
                             param="X-Cognitude-Cache-TTL")
    ttl = int(value)
    if ttl > max_ttl:
        raise InvalidRequest(f"X-Cognitude-Cache-TTL must be at most {max_ttl} seconds.",
                             param="X-Cognitude-Cache-TTL")
    return ttl
