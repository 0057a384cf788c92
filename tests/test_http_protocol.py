"""The coalescing uvicorn protocol: one write per plain response, prompt heads for streams.

The protocol is driven directly with a transport that records every write, so the tests see
exactly the syscalls uvicorn would make; one test also serves real HTTP over loopback.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import pytest
import uvicorn
from uvicorn.server import ServerState

from cognitude.http_protocol import CoalescingHttpToolsProtocol


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def writelines(self, parts: Any) -> None:
        self.writes.append(b"".join(parts))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, *a: Any, **k: Any) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


async def drive(app: Any, request: bytes, settle: float = 0.05) -> RecordingTransport:
    config = uvicorn.Config(app, http=CoalescingHttpToolsProtocol, lifespan="off",
                            log_level="warning", server_header=False, date_header=False)
    config.load()
    proto = CoalescingHttpToolsProtocol(config, ServerState(), app_state={})
    transport = RecordingTransport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    proto.data_received(request)
    await asyncio.sleep(settle)
    return transport


GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def plain(body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode()), *(extra or [])]})
        await send({"type": "http.response.body", "body": body})
    return app


async def test_head_and_body_go_out_in_one_write() -> None:
    t = await drive(plain(b'{"ok":true}'), GET)
    assert len(t.writes) == 1
    assert t.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert t.writes[0].endswith(b'\r\n\r\n{"ok":true}')
    assert not t.closed


async def test_large_bodies_are_written_without_a_copy_but_still_once() -> None:
    body = b"x" * (256 * 1024)
    t = await drive(plain(body), GET)
    assert len(t.writes) == 1 and t.writes[0].endswith(body)


async def test_a_stream_gets_its_head_before_its_first_chunk() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        await asyncio.sleep(0.05)  # the upstream's first token is not there yet
        seen.append(len(t_ref[0].writes))
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    seen: list[int] = []
    t_ref: list[RecordingTransport] = []
    config = uvicorn.Config(app, http=CoalescingHttpToolsProtocol, lifespan="off",
                            log_level="warning")
    config.load()
    proto = CoalescingHttpToolsProtocol(config, ServerState(), app_state={})
    t = RecordingTransport()
    t_ref.append(t)
    proto.connection_made(t)  # type: ignore[arg-type]
    proto.data_received(GET)
    await asyncio.sleep(0.15)
    assert seen == [1]  # the head was out while the app still waited for its first chunk
    assert t.writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and t.writes[0].endswith(b"\r\n\r\n")
    assert t.writes[1:] == [b"9\r\ndata: 1\n\n\r\n", b"0\r\n\r\n"]


async def test_head_request_and_connection_close_still_send_the_head() -> None:
    t = await drive(plain(b"abc"), b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert len(t.writes) == 1 and t.writes[0].endswith(b"content-length: 3\r\n\r\n")
    t = await drive(plain(b"abc", [(b"connection", b"close")]), GET)
    assert len(t.writes) == 1 and t.writes[0].endswith(b"\r\n\r\nabc")
    assert t.closed  # closed after the write, not before it


async def test_pipelined_requests_each_get_one_write() -> None:
    t = await drive(plain(b"one"), GET + GET + GET)
    assert len(t.writes) == 3 and all(w.endswith(b"\r\n\r\none") for w in t.writes)


async def test_an_app_error_after_the_head_drops_it_and_closes() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"10")]})
        raise RuntimeError("boom")

    t = await drive(app, GET)
    # uvicorn closes a connection whose response was started but not finished; the held
    # head is dropped, not written after the close: the client sees the connection closed
    # (without coalescing it saw a 200 head and then the close).
    assert t.closed and t.writes == []


@pytest.mark.parametrize("n", [1, 20])
async def test_real_loopback_server(n: int) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(plain(b"hello"), host="127.0.0.1", port=port, lifespan="off",
                            http=CoalescingHttpToolsProtocol, log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            rs = await asyncio.gather(*(c.get("/") for _ in range(n)))
        assert [r.text for r in rs] == ["hello"] * n
    finally:
        server.should_exit = True
        await task
