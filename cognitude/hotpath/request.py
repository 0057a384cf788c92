"""The request stage: the headers the proxy acts on (``Head``), then the body under its size
cap, parsed into the document every later stage reads (``Inbound``).

The two are read apart on purpose: the key in the headers is resolved before the body is
read, so a bad key never makes the proxy buffer megabytes.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from cognitude.errors import InvalidRequest, PayloadTooLarge
from cognitude.identity.apikeys import token_from_headers
from cognitude.ledger.accounting import RequestLog


class Head(NamedTuple):
    """What the proxy reads of the request headers (everything else passes through)."""

    token: str | None  # the API key (Authorization: Bearer, or X-API-Key)
    cache_control: bytes | None  # lower-cased: no-cache / no-store
    ttl: bytes | None  # X-Cognitude-Cache-TTL, unparsed (parse_ttl: after the key is known)


class Inbound(NamedTuple):
    """The request as every later stage reads it."""

    body: bytes  # exactly as received: what an unchanged request sends upstream
    doc: dict[str, Any]
    model: str
    stream: bool


def read_head(raw: list[tuple[bytes, bytes]], max_body: int) -> Head:
    """The headers in one pass; 413 at once for a declared body over ``max_body``."""
    authorization = x_api_key = cache_control = ttl = None
    for name, value in raw:
        if name == b"authorization":
            authorization = value
        elif name == b"x-api-key":
            x_api_key = value
        elif name == b"content-length":
            if value.isdigit() and int(value) > max_body:
                raise PayloadTooLarge(f"Request body exceeds {max_body} bytes.")
        elif name == b"cache-control":
            cache_control = value.lower()
        elif name == b"x-cognitude-cache-ttl":
            ttl = value
    return Head(token_from_headers(authorization, x_api_key), cache_control, ttl)


def inbound(body: bytes, endpoint: str, streamable: bool, req: RequestLog) -> Inbound:
    """The parsed request (400 naming what is wrong), noted in ``req`` for the ledger."""
    req.doc = doc = parse_doc(body, endpoint)
    req.model = req.model_used = model = doc["model"]
    user = doc.get("user")
    if isinstance(user, str):
        req.end_user = user
    req.stream = stream = streamable and doc.get("stream") is True
    return Inbound(body, doc, model, stream)


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


def parse_doc(body: bytes, endpoint: str) -> dict[str, Any]:
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


def parse_ttl(value: bytes, max_ttl: int) -> int:
    if not value.strip().isdigit():
        raise InvalidRequest("X-Cognitude-Cache-TTL must be a whole number of seconds.",
                             param="X-Cognitude-Cache-TTL")
    ttl = int(value)
    if ttl > max_ttl:
        raise InvalidRequest(f"X-Cognitude-Cache-TTL must be at most {max_ttl} seconds.",
                             param="X-Cognitude-Cache-TTL")
    return ttl
