"""Running the mock under uvicorn: ``serve()`` in the foreground, ``MockUpstream`` in a thread."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from typing import Any

import uvicorn

from cognitude.mock_upstream.app import MockApp, build_app


def _config(app: MockApp, **kw: Any) -> uvicorn.Config:
    try:
        import uvloop  # noqa: F401  (absent on Windows)

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    return uvicorn.Config(
        app,
        loop=loop,
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
        # Else uvicorn wraps the app in ProxyHeadersMiddleware: pure overhead for a fake.
        proxy_headers=False,
        # Backstop only: stalled requests already end on should_exit.
        timeout_graceful_shutdown=3,
        **kw,
    )


def serve(
    host: str = "127.0.0.1",
    port: int = 9100,
    latency_ms: float = 0.0,
    *,
    require_key: str | None = None,
    require_anthropic_version: bool = True,
    fd: int | None = None,
) -> None:
    """Run the mock upstream in the foreground (``cognitude mock-upstream``).

    With ``fd``, serve on that already-bound, listening socket (``host``/``port`` unused):
    a parent that binds the port itself knows it is ours, with no free-port race.
    """
    app = build_app(
        latency_ms=latency_ms,
        require_key=require_key,
        require_anthropic_version=require_anthropic_version,
    )
    if fd is None:
        server = uvicorn.Server(_config(app, host=host, port=port))
        app.state.server = server
        server.run()
        return
    sock = socket.socket(fileno=fd)  # family and type are read from the descriptor
    server = uvicorn.Server(_config(app))
    app.state.server = server
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


class MockUpstream:
    """The real server on a loopback port, run in a daemon thread (for tests)."""

    def __init__(
        self,
        *,
        latency_ms: float = 0.0,
        require_key: str | None = None,
        require_anthropic_version: bool = True,
        port: int = 0,
    ) -> None:
        self.app = build_app(
            latency_ms=latency_ms,
            require_key=require_key,
            require_anthropic_version=require_anthropic_version,
        )
        self.port = port
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("MockUpstream already started")
        # Binding ourselves (port 0 = kernel's choice) and handing the socket to uvicorn
        # avoids the find-a-free-port-then-bind race.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        # log_config=None: don't reconfigure the host process's (pytest's) logging.
        server = uvicorn.Server(_config(self.app, log_config=None))
        self.app.state.server = server
        # uvicorn only installs signal handlers on the main thread, so a thread is safe.
        thread = threading.Thread(
            target=server.run,
            kwargs={"sockets": [sock]},
            name=f"mock-upstream-{self.port}",
            daemon=True,
        )
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + 10.0
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                sock.close()
                raise RuntimeError("mock upstream failed to start")
            time.sleep(0.005)
        self.url = f"http://127.0.0.1:{self.port}"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:  # "started" means listening; one round trip proves it answers
            conn.request("GET", "/_mock/stats")
            conn.getresponse().read()
        finally:
            conn.close()

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout=10)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5)
        self._server = self._thread = None

    def stats(self) -> dict[str, Any]:
        return self.app.state.stats()

    def reset(self) -> None:
        self.app.state.reset()

    def fail(self, mode: str, count: int = 1) -> None:
        self.app.state.fail(mode, count)

    def configure(
        self,
        *,
        latency_ms: float | None = None,
        chunk_delay_ms: float | None = None,
        redirect_location: str | None = None,
        huge_bytes: int | None = None,
    ) -> dict[str, Any]:
        """Change what is given (None = keep); returns the whole config."""
        return self.app.state.configure(
            latency_ms=latency_ms,
            chunk_delay_ms=chunk_delay_ms,
            redirect_location=redirect_location,
            huge_bytes=huge_bytes,
        )

    def __enter__(self) -> MockUpstream:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
