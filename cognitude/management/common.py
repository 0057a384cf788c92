"""What every management route shares: JSON in, validated fields, JSON out; the app's state;
Postgres and Redis failures as 503; the OpenAPI error entries.

Every failure is a ``ProxyError`` (rendered as OpenAI JSON by the app's handler) whose
``param`` names the offending field, so a client learns exactly what to fix.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from functools import wraps
from typing import Any

import asyncpg
import orjson
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from cognitude.db import DB_UNREACHABLE
from cognitude.errors import InvalidRequest, PayloadTooLarge, ProxyError, ServiceUnavailable
from cognitude.hotpath.request import parse_object
from cognitude.state import AppState

# Management bodies are small; a cap keeps a hostile client from making us buffer megabytes.
MAX_JSON_BYTES = 64 * 1024

_MISSING = object()


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


async def json_body(request: Request) -> dict[str, Any]:
    """The request body as a JSON object; 400/413 in OpenAI shape otherwise."""
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_JSON_BYTES:
            raise PayloadTooLarge(f"Request body exceeds {MAX_JSON_BYTES} bytes.")
        chunks.append(chunk)
    return parse_object(b"".join(chunks))


def reject_unknown(doc: dict[str, Any], known: set[str] | frozenset[str]) -> None:
    for key in doc:
        if key not in known:
            raise InvalidRequest(
                f"Unknown field `{key}` (expected: {', '.join(sorted(known))}).", param=key)


def field(doc: dict[str, Any], name: str, type_: type, *, required: bool = True,
          default: Any = None, min_value: int | float | None = None,
          max_value: int | float | None = None, max_len: int | None = None,
          choices: tuple[Any, ...] | None = None, nullable: bool = False) -> Any:
    """``doc[name]`` checked against ``type_`` and bounds; 400 naming ``name`` otherwise.

    bool is not accepted where int is asked (JSON ``true`` is not a number), and ints are
    accepted where float is.
    """
    value = doc.get(name, _MISSING)
    if value is _MISSING or (value is None and nullable):
        if required and value is _MISSING:
            raise InvalidRequest(f"`{name}` is required.", param=name)
        return None if value is None else default
    ok = isinstance(value, type_) and not (type_ in (int, float) and isinstance(value, bool))
    if type_ is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        raise InvalidRequest(f"`{name}` must be {_TYPE_NAMES.get(type_, type_.__name__)}.",
                             param=name)
    if min_value is not None and value < min_value:
        raise InvalidRequest(f"`{name}` must be at least {min_value}.", param=name)
    if max_value is not None and value > max_value:
        raise InvalidRequest(f"`{name}` must be at most {max_value}.", param=name)
    # Postgres text cannot hold NUL (asyncpg raises, which was a 500 for /rate-limits/reset
    # and every other text field): refuse it for every string field here.
    if isinstance(value, str) and "\x00" in value:
        raise InvalidRequest(f"`{name}` must not contain NUL characters.", param=name)
    if max_len is not None and len(value) > max_len:
        raise InvalidRequest(f"`{name}` must be at most {max_len} characters.", param=name)
    if isinstance(value, str) and type_ is str and not value.strip() and required:
        raise InvalidRequest(f"`{name}` must not be empty.", param=name)
    if choices is not None and value not in choices:
        raise InvalidRequest(f"`{name}` must be one of {', '.join(map(str, choices))}.",
                             param=name)
    return value


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "a boolean",
               dict: "an object", list: "an array"}


def pool(st: AppState) -> asyncpg.Pool:
    if st.pg is None:
        raise ServiceUnavailable("This endpoint needs Postgres, which is not configured.")
    return st.pg


@contextlib.contextmanager
def db_errors() -> Iterator[None]:
    """Postgres unreachable → 503 (retryable), not an opaque 500."""
    try:
        yield
    except DB_UNREACHABLE as exc:
        raise ServiceUnavailable(
            f"The database is unavailable ({type(exc).__name__}); retry shortly.") from None


@contextlib.contextmanager
def redis_errors() -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError):
        raise ServiceUnavailable("Redis is unavailable; retry shortly.") from None


_ERROR_TEXT = {400: "Invalid request", 401: "Missing or invalid API key",
               403: "Forbidden", 404: "Not found", 413: "Request body too large",
               503: "A backing service is unavailable"}


def error_responses(*statuses: int) -> dict[str, Any]:
    """OpenAPI responses for our error statuses, all the OpenAI error envelope."""
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {str(s): {"description": _ERROR_TEXT[s], "content": ref} for s in statuses}


def state(request: Request) -> AppState:
    """The resources the lifespan created (``AppState``), for a route."""
    st: AppState = request.app.state.cognitude
    return st


Handler = Callable[[Request], Awaitable[Response]]


def with_db_errors(handler: Handler) -> Handler:
    """``db_errors`` around a whole route."""

    @wraps(handler)
    async def wrapper(request: Request) -> Response:
        with db_errors():
            return await handler(request)

    return wrapper


def error_response(exc: ProxyError) -> Response:
    headers = {k.decode(): v.decode() for k, v in exc.headers}
    return Response(exc.body(), status_code=exc.status_code, media_type="application/json",
                    headers=headers)
