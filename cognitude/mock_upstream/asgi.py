"""Raw ASGI plumbing: type aliases, reading the body, JSON and SSE responses, held-open and
dropped connections.

No framework on purpose: the mock is benchmarked against, so each response is exactly one
``http.response.start`` plus its body message(s).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from cognitude.mock_upstream.state import MockState

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = tuple[tuple[bytes, bytes], ...]

_CT_JSON = (b"content-type", b"application/json")
_CT_SSE = (b"content-type", b"text/event-stream; charset=utf-8")
_NO_CACHE = (b"cache-control", b"no-cache")

# How long a held-open response lasts at most: longer than any sane proxy timeout, and it
# still ends early on disconnect or server shutdown.
HOLD_S = 60.0
_POLL_S = 0.05  # how often a silent hold checks for server shutdown
_TRICKLE_S = 0.01  # the trickle's byte interval when chunk_delay_ms is 0


class _DroppedConnection(Exception):
    """Raised only when the server gives us no transport to close (not uvicorn)."""


async def read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            break
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body", False):
            break
    return b"".join(chunks)


async def send_json(send: Send, status: int, payload: Any, extra: Headers = ()) -> None:
    body = orjson.dumps(payload)
    headers = [_CT_JSON, (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_raw(send: Send, status: int, body: bytes, headers: Headers) -> None:
    """Any status and body, verbatim (content-length added)."""
    length = (b"content-length", str(len(body)).encode())
    await send({"type": "http.response.start", "status": status, "headers": [*headers, length]})
    await send({"type": "http.response.body", "body": body})


async def start_events(send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [_CT_SSE, _NO_CACHE]})


async def send_events(
    events: list[bytes], state: MockState, send: Send, *, stop_at: int | None = None
) -> None:
    """Send SSE events, each as its own ASGI body message so they hit the wire separately.

    ``state.chunk_delay_s`` is re-read before every event, so a config change applies at
    once. With ``stop_at``, only ``events[:stop_at]`` go out and the body stays open: the
    caller then drops or holds the connection.
    """
    await start_events(send)
    last = len(events) - 1 if stop_at is None else len(events)
    for i, event in enumerate(events[:stop_at]):
        if i and state.chunk_delay_s > 0:
            await asyncio.sleep(state.chunk_delay_s)
        await send({"type": "http.response.body", "body": event, "more_body": i < last})


async def end_body(send: Send) -> None:
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def hold_open(
    state: MockState, receive: Receive, tick: Callable[[], Awaitable[None]] | None = None
) -> bool:
    """Wait up to HOLD_S, calling ``tick`` every chunk delay (10 ms when 0) if given.

    Returns False if the client disconnected meanwhile (nobody left to answer), True on
    timeout or server shutdown -- polled, so a held request never holds up stop()/Ctrl-C.
    Watching for disconnect also keeps held tasks from piling up after clients give up.
    """
    watcher = asyncio.ensure_future(wait_disconnect(receive))
    try:
        deadline = time.monotonic() + HOLD_S
        while time.monotonic() < deadline and not state.stopping():
            if tick is not None:
                await tick()
            interval = (state.chunk_delay_s or _TRICKLE_S) if tick is not None else _POLL_S
            await asyncio.wait({watcher}, timeout=interval)
            if watcher.done():
                return False
        return True
    finally:
        watcher.cancel()


async def wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def drop(receive: Receive) -> None:
    """Kill the connection without a clean end of response.

    ASGI has no "abort" message. Under uvicorn (httptools and h11 alike) ``receive`` is a
    bound method of the request cycle, which holds the asyncio transport. ``close()`` flushes
    what was already written (headers, the chunks the client should see) and then sends FIN
    without the terminating zero-length chunk, so the client sees an incomplete chunked body
    (or, before any response, "server disconnected without sending a response").
    """
    transport = getattr(getattr(receive, "__self__", None), "transport", None)
    if transport is None:
        # Other servers: an exception makes them close the connection (noisier logs).
        raise _DroppedConnection("mock upstream: injected connection drop")
    transport.close()
    # Return only once uvicorn has seen connection_lost: it then treats the cycle as
    # disconnected instead of logging "returned without completing response" or writing a
    # 500 onto the dead socket.
    try:
        await asyncio.wait_for(wait_disconnect(receive), 5.0)
    except TimeoutError:
        pass
