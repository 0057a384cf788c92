"""A TCP relay on loopback between the proxy and a real server, to make that server slow or
gone on demand: ``pause()`` holds every byte in both directions (a server that stopped
answering: the connection stays open, nothing comes back), ``sever()`` cuts every connection
and refuses new ones (a server that went away), ``resume()`` undoes either.

The servers themselves stay untouched, so other tests of the session keep using them.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any


class TcpRelay:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-relay",
                                        daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._open = asyncio.Event()  # set: bytes flow
        self._severed = False
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> TcpRelay:
        self._thread.start()
        self._call(self._start())
        return self

    def stop(self) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def pause(self) -> None:
        self._call(self._set(open_=False))

    def resume(self) -> None:
        self._severed = False
        self._call(self._set(open_=True))

    def sever(self) -> None:
        self._severed = True
        self._call(self._cut())

    def __enter__(self) -> TcpRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- in the relay's loop

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _start(self) -> None:
        self._open.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        self._open.set()  # release pumps held by a pause, so that they can end
        self._severed = True
        await self._cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _set(self, *, open_: bool) -> None:
        if open_:
            self._open.set()
        else:
            self._open.clear()

    async def _cut(self) -> None:
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._severed:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer),
                             return_exceptions=True)
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            await self._open.wait()
            if self._severed:
                return
            writer.write(data)
            await writer.drain()
        writer.transport.abort()
