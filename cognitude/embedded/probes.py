"""Readiness checks: is the server up, and is it *our* child answering on the port?

The port was free when we picked it, but someone may have taken it before our server bound
it; a stranger answering must not pass for our server. Valkey reports its pid in ``INFO``;
a PostgreSQL session's backend is a child of our postmaster.

PostgreSQL sessions go through asyncpg, on an event loop of their own in a short-lived
thread: ``start()`` may be called from inside a running loop, where ``asyncio.run()`` is
refused, and the caller's thread keeps its own loop and signal handlers untouched.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from cognitude.embedded.errors import EmbeddedServiceError, _log_tail, _StartupFailed
from cognitude.embedded.postgres import PG_DATABASE, PG_USER

READY_TIMEOUT = 30.0
_IO_TIMEOUT = 2.0  # per connection attempt and per query

_T = TypeVar("_T")
_ASYNCPG_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


class _NotOurs(ConnectionError):
    """The port answered, but not from our child: someone took it after we picked it."""


def _valkey_ping(port: int, server_pid: int) -> bool:
    """True once *our* server answers PING; False while it is loading its AOF (busy)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=_IO_TIMEOUT) as sock,
        sock.makefile("rb") as replies,
    ):
        sock.sendall(b"*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
        pong = replies.readline()
        if pong.startswith(b"-LOADING"):
            return False
        if not pong.startswith(b"+PONG"):
            raise _NotOurs(f"unexpected reply to PING: {pong!r}")
        header = replies.readline()
        info = replies.read(int(header[1:])) if header.startswith(b"$") else b""
    # A stray server could also answer PONG: only our child's pid proves it is ours.
    if f"process_id:{server_pid}\r\n".encode() not in info:
        raise _NotOurs(f"port {port} is served by another process")
    return True


class _PgError(Exception):
    """An error reported by the PostgreSQL server; ``code`` is its SQLSTATE."""

    def __init__(self, exc: asyncpg.PostgresError) -> None:
        self.code: str = exc.sqlstate or ""
        severity = getattr(exc, "severity", None) or "ERROR"
        super().__init__(f"{severity} {self.code}: {getattr(exc, 'message', None) or exc}")


def _run_on_own_loop(make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """``asyncio.run(make())`` on a short-lived thread, whether or not one is running here."""
    fut: Future[_T] = Future()

    def run() -> None:
        try:
            fut.set_result(asyncio.run(make()))
        except BaseException as exc:  # handed to the caller, who re-raises it
            fut.set_exception(exc)

    worker = threading.Thread(target=run, name="cognitude-embedded-probe", daemon=True)
    worker.start()
    worker.join()
    return fut.result()


def _translate(exc: Exception, port: int) -> Exception:
    """asyncpg's error as ours: a server's error as ``_PgError``, a lost or foreign peer as
    ``OSError`` (which the readiness loop retries)."""
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return _NotOurs("the server demanded a password; ours uses trust auth")
    if isinstance(
        exc, (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.InternalClientError)
    ):
        # The peer hung up (mid-handshake, say) or does not speak PostgreSQL.
        return ConnectionError(f"port {port}: {exc}")
    if isinstance(exc, asyncpg.PostgresError):
        return _PgError(exc)
    return exc


async def _pg_session_async(
    port: int, database: str, queries: Sequence[str], postmaster: int | None
) -> None:
    try:
        conn = await asyncpg.connect(
            host="127.0.0.1",
            port=port,
            user=PG_USER,
            database=database,
            # Not None: that would send PGPASSWORD or a ~/.pgpass entry. Ours trusts every
            # loopback client; a server that asks for a password is not ours.
            password="",
            ssl=False,
            target_session_attrs="any",
            timeout=_IO_TIMEOUT,
        )
    except _ASYNCPG_ERRORS as exc:
        raise _translate(exc, port) from exc
    try:
        # Checked while the session (and so the backend) is alive; no /proc, no check.
        backend_pid = conn.get_server_pid()
        if postmaster is not None and backend_pid:
            parent = _parent_of(backend_pid)
            if parent is not None and parent != postmaster:
                raise _NotOurs(f"port {port} is served by another PostgreSQL")
        for query in queries:
            try:
                await conn.execute(query, timeout=_IO_TIMEOUT)
            except _ASYNCPG_ERRORS as exc:
                raise _translate(exc, port) from exc
    except BaseException:  # cleanup then re-raise: even a cancel must not leak the socket
        conn.terminate()
        raise
    await conn.close(timeout=_IO_TIMEOUT)  # a clean Terminate, as a client should


def _pg_session(
    port: int, database: str, queries: Sequence[str] = (), *, postmaster: int | None = None
) -> None:
    """Open a real session (trust auth, as ``PG_USER``) and run ``queries``, one by one.

    With ``postmaster``, also check that the session's backend is that process's child,
    i.e. that the port is ours. Server errors raise ``_PgError``; an unreachable or
    foreign server raises ``OSError`` (``_NotOurs`` for a foreign one).
    """
    _run_on_own_loop(lambda: _pg_session_async(port, database, queries, postmaster))


def _postgres_ready(port: int, postmaster: int) -> bool:
    """True once our postmaster accepts sessions; False while it starts up or recovers."""
    try:
        _pg_session(port, "postgres", postmaster=postmaster)
    except _PgError as exc:
        if exc.code == "57P03":  # cannot_connect_now: starting up or recovering
            return False
        raise EmbeddedServiceError(f"postgres rejected the readiness probe: {exc}") from exc
    return True


def _ensure_database(port: int, *, fresh: bool) -> None:
    """Create ``PG_DATABASE`` on a fresh cluster, or on an old one that lacks it.

    Created after initdb rather than by it; if a crash came in between, the probe on a
    later start finds the database missing (3D000) and creates it then.
    """
    create = fresh
    if not fresh:
        try:
            _pg_session(port, PG_DATABASE)
        except _PgError as exc:
            if exc.code != "3D000":  # invalid_catalog_name
                raise EmbeddedServiceError(f"cannot connect to {PG_DATABASE!r}: {exc}") from exc
            create = True
    if create:
        _pg_session(port, "postgres", [f'CREATE DATABASE "{PG_DATABASE}"'])


def _wait_ready(
    name: str,
    proc: subprocess.Popen[bytes],
    log_path: Path,
    offset: int,
    probe: Callable[[], bool],
) -> None:
    """Poll ``probe`` until it returns True; raise ``_StartupFailed`` if ``proc`` exits or
    makes no progress for ``READY_TIMEOUT`` seconds."""
    deadline = time.monotonic() + READY_TIMEOUT
    last_error: BaseException | None = None
    while True:
        now = time.monotonic()
        if proc.poll() is not None:
            raise _StartupFailed(
                f"{name} exited with status {proc.returncode} during startup",
                _log_tail(log_path, offset),
            )
        try:
            if probe():
                return
            # The server answers but is busy (AOF loading, crash recovery): progress,
            # so the timeout restarts. Killing it midway would only repeat the work.
            deadline = now + READY_TIMEOUT
            last_error = None
        except OSError as exc:
            last_error = exc
        if now > deadline:
            proc.kill()
            proc.wait()
            raise _StartupFailed(
                f"{name} not ready after {READY_TIMEOUT:.0f}s (last error: {last_error})",
                _log_tail(log_path, offset),
            )
        time.sleep(0.05)
