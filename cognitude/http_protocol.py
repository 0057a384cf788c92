"""uvicorn's httptools protocol, with the response head sent in the same write as the body.

uvicorn writes the status line and headers (``http.response.start``) and the body
(``http.response.body``) with two ``transport.write`` calls. On loopback with ``TCP_NODELAY``
each write is a ``send`` syscall that runs the whole TCP path and wakes the client, so every
response costs two packets, two syscalls and often two client wake-ups where one would do.
This subclass holds the head back and writes it together with the first body chunk.

The head is held only until the end of the current event-loop iteration: a body sent right
after the head (every non-streaming response here: cache hits, misses, errors) goes out with
it in one write; a stream whose first chunk is not ready yet gets its head flushed on the next
iteration, so headers are never delayed behind a slow upstream.

Everything else (parsing, keep-alive, flow control, pipelining, errors) is uvicorn's own; the
change is confined to ``RequestResponseCycle.send``. Selected with ``uvicorn.run(http=...)``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

# Bodies at least this large go out with writelines() (one writev) instead of being copied
# into a single bytes object with the head.
_JOIN_LIMIT = 64 * 1024


class _Capture:
    """Stands in for the transport while uvicorn renders the head: keeps the bytes."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


class _Prefixed:
    """Stands in for the transport while uvicorn sends the first body chunk: the held head
    goes out in the same write, or before a close, whichever comes first."""

    __slots__ = ("_transport", "head")

    def __init__(self, transport: Any, head: bytes) -> None:
        self._transport = transport
        self.head: bytes | None = head

    def write(self, data: bytes) -> None:
        head, self.head = self.head, None
        if head is None:
            self._transport.write(data)
        elif len(data) < _JOIN_LIMIT:
            self._transport.write(head + data)
        else:
            self._transport.writelines((head, data))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def flush(self) -> None:
        head, self.head = self.head, None
        if head is not None:
            self._transport.write(head)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingCycle(RequestResponseCycle):
    """One request/response of a connection; see the module doc."""

    held: bytes | None = None  # the rendered head, not yet written

    async def send(self, message: Any) -> None:
        if self.held is not None:
            head, self.held = self.held, None
            transport = self.transport
            prefixed = _Prefixed(transport, head)
            self.transport = prefixed  # type: ignore[assignment]
            try:
                await super().send(message)
            finally:
                self.transport = transport
                # HEAD responses and the like write no body: the head still goes out.
                if not self.disconnected:
                    prefixed.flush()
            return
        if message["type"] != "http.response.start" or self.response_started:
            await super().send(message)
            return
        transport = self.transport
        capture = _Capture()
        self.transport = capture  # type: ignore[assignment]
        try:
            await super().send(message)
        finally:
            self.transport = transport
        if capture.data:
            self.held = capture.data
            asyncio.get_running_loop().call_soon(self._flush_held)

    def _flush_held(self) -> None:
        """End of the loop iteration that sent the head and no body: send the head alone.

        Unless uvicorn closed the connection meanwhile (the app failed after starting its
        response): then the head is dropped and the client sees a closed connection instead
        of a truncated 200."""
        head, self.held = self.held, None
        if head is not None and not self.disconnected and not self.transport.is_closing():
            self.transport.write(head)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol whose request/response cycles are CoalescingCycles."""

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        # The cycle was just created (its ASGI task has not run yet, or it waits in the
        # pipeline queue): give it the coalescing send. CoalescingCycle adds no state but a
        # class-level default, so the instance is valid as either class.
        if type(self.cycle) is RequestResponseCycle:
            self.cycle.__class__ = CoalescingCycle
