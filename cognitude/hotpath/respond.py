"""The respond stage: response headers, and the writers of JSON, SSE and error responses.

Every response of the hot route starts in one of these writers, and each sets
``req.headers_sent`` right before its start message: from then on an error can no longer
be a JSON response (a stream ends with an error event instead, ``stream_error``). Nothing
else infers whether the response started.
"""

from __future__ import annotations

import os
from time import perf_counter
from typing import Any

from cognitude.errors import ProxyError, RateLimited
from cognitude.gate.gate import Admission
from cognitude.hotpath import sse
from cognitude.ledger.accounting import RequestLog

Headers = list[tuple[bytes, bytes]]

JSON_CT = (b"content-type", b"application/json")
SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    # Tell nginx-style buffers in front of us not to hold chunks back.
    (b"x-accel-buffering", b"no"),
]
_WINDOW_NAMES = ("minute", "hour", "day")


class RequestIds:
    """X-Request-ID (and ``usage_log.request_id``): 24 hex digits, unique per request.

    A random 64-bit prefix per instance (so per worker process) and a 32-bit counter, the
    prefix renewed when the counter wraps: unique without a ``getrandom`` syscall per
    request. Consecutive ids of one worker are guessable, which nothing relies on: an id
    only correlates a response with logs and the ledger, and grants nothing.
    """

    __slots__ = ("_prefix", "_next")

    def __init__(self) -> None:
        self._renew()

    def _renew(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._next = 0

    def __call__(self) -> str:
        n = self._next
        if n > 0xFFFFFFFF:
            self._renew()
            n = 0
        self._next = n + 1
        return f"{self._prefix}{n:08x}"


def timing(gate: float, upstream: float, total: float) -> tuple[bytes, bytes]:
    # One %-format: a third of the instructions of three f-strings joined.
    return (b"server-timing", b"gate;dur=%.3f, upstream;dur=%.3f, total;dur=%.3f"
            % (gate * 1000, upstream * 1000, total * 1000))


def limit_headers(adm: Admission | None) -> Headers:
    if adm is None:
        return []
    return [
        (b"x-ratelimit-limit", b"%d" % adm.limit),
        (b"x-ratelimit-remaining", b"%d" % adm.remaining),
        (b"x-ratelimit-reset", b"%d" % adm.reset_s),
    ]


def rate_limited(adm: Admission, limits: Headers) -> RateLimited:
    whose = "this API key" if adm.window > 3 else "your organization"
    span = _WINDOW_NAMES[(adm.window - 1) % 3]
    return RateLimited(
        f"Rate limit reached for {whose}: {adm.limit} requests per {span}. "
        f"Retry after {adm.retry_after_s} s.",
        headers=[(b"retry-after", str(adm.retry_after_s).encode()), *limits],
    )


async def send_json(send: Any, req: RequestLog, data: bytes, common: Headers,
                    upstream_s: float) -> None:
    req.status = 200
    req.headers_sent = True
    await send({"type": "http.response.start", "status": 200, "headers": [
        JSON_CT, (b"content-length", str(len(data)).encode()),
        (b"x-cognitude-cache", req.cache_status), *common,
        timing(req.gate_s, upstream_s, perf_counter() - req.t0)]})
    await send({"type": "http.response.body", "body": data})


async def send_replay(send: Any, req: RequestLog, completion: bytes, common: Headers,
                      upstream_s: float) -> None:
    """A whole ``chat.completion`` sent as the SSE stream the client asked for, usage
    included when it asked for it. ValueError (nothing sent) for a body that is not one."""
    opts = req.doc.get("stream_options") if req.doc is not None else None
    include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
    events = sse.replay(completion, include_usage)
    await start_sse(send, req, common, upstream_s)
    await send({"type": "http.response.body", "body": b"".join(events)})


async def send_hit(send: Any, req: RequestLog, stored: bytes, common: Headers) -> bool:
    """A stored response in the shape the client asked for; False (a miss) for one this
    version cannot serve."""
    if stored[:1] != b"{":
        return False  # not JSON: an entry written before 200s were checked
    req.cache_status = b"HIT"
    req.response = stored
    if not req.stream:
        await send_json(send, req, stored, common, 0.0)
        return True
    try:
        await send_replay(send, req, stored, common, 0.0)
    except ValueError:
        req.cache_status, req.response = b"MISS", None
        return False
    return True


async def start_sse(send: Any, req: RequestLog, common: Headers, upstream_s: float) -> None:
    req.status = 200
    req.headers_sent = True
    await send({"type": "http.response.start", "status": 200, "headers": [
        *SSE_HEADERS, (b"x-cognitude-cache", req.cache_status), *common,
        timing(req.gate_s, upstream_s, perf_counter() - req.t0)]})


async def send_error(send: Any, exc: ProxyError, headers: Headers) -> None:
    body = exc.body()
    await send({
        "type": "http.response.start",
        "status": exc.status_code,
        "headers": [JSON_CT, (b"content-length", str(len(body)).encode()), *headers,
                    *exc.headers],
    })
    await send({"type": "http.response.body", "body": body})


async def stream_error(send: Any, exc: ProxyError) -> None:
    """Headers are out already: end the stream with an error event the OpenAI SDK raises on."""
    await send({"type": "http.response.body",
                "body": b"data: " + exc.body() + b"\n\n", "more_body": False})
