"""The respond stage: the response headers, and the writers of JSON, SSE and error responses.
"""

from __future__ import annotations

import os
from typing import Any

from cognitude.errors import ProxyError
from cognitude.gate.gate import GateResult

JSON_CT = (b"content-type", b"application/json")


SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    # Tell nginx-style buffers in front of us not to hold chunks back.
    (b"x-accel-buffering", b"no"),
]


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


def _timing(gate: float, upstream: float, total: float) -> tuple[bytes, bytes]:
    # One %-format: a third of the instructions of three f-strings joined.
    return (b"server-timing", b"gate;dur=%.3f, upstream;dur=%.3f, total;dur=%.3f"
            % (gate * 1000, upstream * 1000, total * 1000))


def _limit_headers(g: GateResult | None) -> list[tuple[bytes, bytes]]:
    if g is None:
        return []
    return [
        (b"x-ratelimit-limit", b"%d" % g.limit),
        (b"x-ratelimit-remaining", b"%d" % g.remaining),
        (b"x-ratelimit-reset", b"%d" % g.reset_s),
    ]


async def send_error(send: Any, exc: ProxyError, headers: list[tuple[bytes, bytes]]) -> None:
    body = exc.body()
    await send({
        "type": "http.response.start",
        "status": exc.status_code,
        "headers": [JSON_CT, (b"content-length", str(len(body)).encode()), *headers,
                    *exc.headers],
    })
    await send({"type": "http.response.body", "body": body})


async def _stream_error(send: Any, exc: ProxyError) -> None:
    """Headers are out already: end the stream with an error event the OpenAI SDK raises on."""
    await send({"type": "http.response.body",
                "body": b"data: " + exc.body() + b"\n\n", "more_body": False})
