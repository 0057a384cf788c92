"""A lean Redis client for the hot path: one pipelined connection, replies parsed by hiredis.

Every proxied request makes one ``EVALSHA`` (the gate) and every cacheable miss one ``SET``
(the write-back). Through redis-py each of those costs about 100 µs of CPU (connection pool,
command packing, response callbacks, retry wrapper); written straight onto one connection and
parsed with hiredis (the C parser redis-py itself uses) the same ``EVALSHA`` costs about 38 µs,
kernel included (measured on the benchmark machine; coredis measured 178 µs). So the hot path
talks to Redis through this class, and everything else (management API, pub/sub
invalidation, limits reads, /ready) keeps redis-py.

How it behaves:

- **One connection, pipelined.** Commands are written in call order and Redis answers in the
  same order, so concurrent requests share the socket without waiting for each other (Redis
  runs commands one at a time anyway) and no pool can run dry. A write-back ``SET`` sent
  before a later ``EVALSHA`` on the same key is executed before it.
- **Connect lazily, reconnect after loss.** The first command (or the first after the
  connection dropped) connects; concurrent callers share that one attempt. ``AUTH`` and
  ``SELECT`` from the URL, then a ``PING``, are sent once per connection.
- **Fail fast while Redis is down.** When a connect fails, or Redis stops answering for the
  timeout, calls raise ``ConnectionError`` at once instead of each waiting out a timeout
  (with ``fail_open`` the proxy then serves without limits and cache at full speed, not at
  one request per timeout), and reconnects are tried in the background, 50 ms apart and
  doubling up to 1 s. The first one that gets a ``PING`` back ends the outage.
- **Timeout.** When something is outstanding and no reply has arrived for ``timeout_s``, the
  connection is declared dead: it is closed and every outstanding command fails with
  ``redis.exceptions.TimeoutError`` (a pipeline cannot skip a late reply). Connecting is
  bounded by the same timeout.
- **Errors are redis-py's:** ``ConnectionError``, ``TimeoutError``, ``ResponseError`` and
  ``NoScriptError`` (all ``RedisError``), so callers' fail-open handling is unchanged.
- **Fire and forget, piggy-backed.** :meth:`set_nowait` queues a ``SET`` whose reply nobody
  awaits (an error reply is logged). It goes out in the same ``send`` as the next command, or
  on its own after ``DEFER_S`` (10 ms): each write is a syscall that wakes Redis, and the
  next request's ``EVALSHA`` is usually that close. A cache write-back therefore becomes
  visible to other requests up to 10 ms after its response was sent; requests from this
  worker always see it (it is written ahead of their ``EVALSHA``). With no connection it is
  dropped: a write-back is worth a future cache hit, not a connection attempt.

Not used for ``rediss://`` (TLS) or ``redis.cluster = true``: the gate then runs on redis-py.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

import hiredis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.exceptions import (
    BusyLoadingError,
    MasterDownError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("cognitude.redis")

# An outstanding slot whose reply nobody awaits (set_nowait).
_NO_WAITER = None
# Fire-and-forget writes wait this long for a command to share a write with: every write to
# Redis on loopback is a send syscall that wakes the server (~50 us of CPU at low rates,
# profiled), and at 200 req/s the next request's EVALSHA usually comes within 10 ms. The
# write-back of a response becomes visible to other requests up to this much later.
DEFER_S = 0.010
DEFER_MAX_BYTES = 256 * 1024
# While Redis is down, reconnect attempts run in the background this far apart (doubling).
RETRY_MIN_S = 0.05
RETRY_MAX_S = 1.0


def supports(url: str, cluster: bool) -> bool:
    """Whether :class:`RedisPipe` can serve this Redis (plain TCP or a Unix socket)."""
    if cluster:
        return False
    return parse_url(url).get("connection_class") is not SSLConnection


def encode(args: tuple[Any, ...]) -> bytes:
    """One command as a RESP array of bulk strings (str as UTF-8, int as decimal)."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, bytes):
            b = a
        elif isinstance(a, str):
            b = a.encode()
        elif isinstance(a, int):
            b = b"%d" % a
        else:
            raise TypeError(f"cannot send {type(a).__name__} to Redis")
        out.append(b"$%d\r\n" % len(b))
        out.append(b)
        out.append(b"\r\n")
    return b"".join(out)


# Error replies that redis-py raises as their own classes (its parser maps them by prefix the
# same way): callers tell an outage (fail open) from Redis refusing the command (not).
_ERROR_PREFIXES: tuple[tuple[str, type[ResponseError] | type[RedisConnectionError]], ...] = (
    ("NOSCRIPT", NoScriptError),
    ("OOM", OutOfMemoryError),
    ("READONLY", ReadOnlyError),
    ("LOADING", BusyLoadingError),
    ("MASTERDOWN", MasterDownError),
)


def _error(exc: ResponseError) -> Exception:
    msg = str(exc)
    for prefix, cls in _ERROR_PREFIXES:
        if msg.startswith(prefix):
            return cls(msg)
    return exc


# Fire-and-forget write failures (a write-back SET refused: Redis out of memory, say) are
# logged at most this often, with the count since the last line: one per request would
# flood the log for as long as the condition lasts.
_WRITE_FAILURE_LOG_EVERY_S = 60.0


class _WriteFailures:
    """Counts refused fire-and-forget writes of one client, logging them in summaries."""

    __slots__ = ("count", "logged_at")

    def __init__(self) -> None:
        self.count = 0
        self.logged_at = -_WRITE_FAILURE_LOG_EVERY_S

    def __call__(self, reply: ResponseError, now: float) -> None:
        self.count += 1
        if now - self.logged_at >= _WRITE_FAILURE_LOG_EVERY_S:
            log.warning("redis write failed (%d since the last report): %s", self.count, reply)
            self.count, self.logged_at = 0, now


class _Conn(asyncio.Protocol):
    """One connection: writes commands, matches replies to waiters in order."""

    def __init__(self, timeout_s: float, write_failed: _WriteFailures) -> None:
        self.write_failed = write_failed
        # uvloop's transports are not registered as asyncio.Transport subclasses: Any.
        self.transport: Any = None
        self.reader = hiredis.Reader(replyError=ResponseError, protocolError=RedisConnectionError)
        self.waiters: deque[asyncio.Future[Any] | None] = deque()
        self.loop = asyncio.get_running_loop()
        self.timeout_s = timeout_s
        self.progress = 0.0  # loop time of the last reply, or of the send that found none out
        self.watchdog: asyncio.TimerHandle | None = None
        self.closed = False
        self.error: Exception | None = None  # why it closed
        # Fire-and-forget commands waiting to share the next write (see defer()).
        self.deferred: list[bytes] = []
        self.deferred_bytes = 0
        self.defer_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def send(self, data: bytes, fut: asyncio.Future[Any] | None) -> None:
        """Write one command, with any deferred ones ahead of it in the same write."""
        deferred = self.deferred
        if not deferred:
            self._write(data, (fut,))
            return
        slots: list[asyncio.Future[Any] | None] = [_NO_WAITER] * len(deferred)
        slots.append(fut)
        deferred.append(data)
        self._take_deferred()
        self._write(b"".join(deferred), slots)

    def defer(self, data: bytes) -> None:
        """Queue a command whose reply nobody awaits: it rides along with the next command's
        write, or goes out on its own after ``DEFER_S`` (or once ``DEFER_MAX_BYTES`` wait)."""
        self.deferred.append(data)
        self.deferred_bytes += len(data)
        if self.deferred_bytes >= DEFER_MAX_BYTES:
            self.flush_deferred()
        elif self.defer_timer is None:
            self.defer_timer = self.loop.call_later(DEFER_S, self.flush_deferred)

    def flush_deferred(self) -> None:
        deferred = self._take_deferred()
        if deferred and not self.closed:
            self._write(b"".join(deferred), [_NO_WAITER] * len(deferred))

    def _take_deferred(self) -> list[bytes]:
        deferred = self.deferred
        self.deferred = []
        self.deferred_bytes = 0
        if self.defer_timer is not None:
            self.defer_timer.cancel()
            self.defer_timer = None
        return deferred

    def _write(self, data: bytes, slots: Any) -> None:
        waiters = self.waiters
        if self.transport.is_closing():
            # Lost, with its connection_lost() not delivered yet: fail these commands like
            # the others instead of letting the transport raise at the caller.
            waiters.extend(slots)
            self.fail(RedisConnectionError("Redis connection is closing"))
            return
        if not waiters:
            self.progress = self.loop.time()
            if self.watchdog is None:
                self.watchdog = self.loop.call_at(self.progress + self.timeout_s, self._watch)
        waiters.extend(slots)
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        waiters = self.waiters
        try:
            while (reply := reader.gets()) is not False:
                fut = waiters.popleft()
                if type(reply) is ResponseError:
                    if fut is None:
                        self.write_failed(reply, self.loop.time())
                    elif not fut.done():
                        fut.set_exception(_error(reply))
                elif fut is not None and not fut.done():
                    fut.set_result(reply)
        except (RedisConnectionError, IndexError) as exc:
            # Garbage on the wire, or a reply nobody asked for: the stream is out of step.
            self.fail(RedisConnectionError(f"Redis protocol error: {exc}"))
            return
        self.progress = self.loop.time()

    def _watch(self) -> None:
        self.watchdog = None
        if not self.waiters or self.closed:
            return
        due = self.progress + self.timeout_s
        if self.loop.time() >= due:
            self.fail(RedisTimeoutError(f"no reply from Redis for {self.timeout_s:g} s"))
        else:
            self.watchdog = self.loop.call_at(due, self._watch)

    def fail(self, exc: Exception) -> None:
        """Close the connection and fail everything outstanding with ``exc`` (deferred
        fire-and-forget commands are dropped)."""
        self.closed = True
        self.error = exc
        self._take_deferred()
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        if self.transport is not None:
            self.transport.abort()
        waiters, self.waiters = self.waiters, deque()
        for fut in waiters:
            if fut is not None and not fut.done():
                fut.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.fail(RedisConnectionError(f"Redis closed the connection: {exc or 'EOF'}"))


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


async def _roundtrip(conn: _Conn, command: tuple[Any, ...]) -> Any:
    fut = conn.loop.create_future()
    conn.send(encode(command), fut)
    return await fut


class RedisPipe:
    """The hot path's Redis client (see the module doc). One per worker, owned by the lifespan."""

    __slots__ = ("_conn", "_connecting", "_params", "timeout_s", "_where", "_down",
                 "_retry_at", "_backoff", "_write_failures")

    def __init__(self, url: str, timeout_s: float) -> None:
        p = parse_url(url)
        if p.get("connection_class") is SSLConnection:
            raise ValueError("RedisPipe does not speak TLS; use redis-py for rediss:// URLs")
        self._params = p
        self._where = (p["path"] if "path" in p
                       else f"{p.get('host', 'localhost')}:{p.get('port', 6379)}")
        self.timeout_s = timeout_s
        self._conn: _Conn | None = None
        self._connecting: asyncio.Future[_Conn] | None = None
        # Circuit breaker: while Redis is known to be down (a connect failed, or it stopped
        # answering), calls fail at once and reconnects are tried in the background.
        self._down: Exception | None = None
        self._retry_at = 0.0
        self._backoff = RETRY_MIN_S
        self._write_failures = _WriteFailures()

    @property
    def down(self) -> bool:
        return self._down is not None

    async def execute(self, *args: Any) -> Any:
        """Send one command and wait for its reply."""
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._connect()
        fut = conn.loop.create_future()
        conn.send(encode(args), fut)
        return await fut

    async def evalsha(self, sha: str, numkeys: int, *args: Any) -> Any:
        return await self.execute(b"EVALSHA", sha, numkeys, *args)

    async def script_load(self, source: str) -> str:
        sha = await self.execute(b"SCRIPT", b"LOAD", source)
        return sha.decode() if isinstance(sha, bytes) else sha

    async def set(self, key: str, value: bytes, ex: int) -> Any:
        return await self.execute(b"SET", key, value, b"EX", ex)

    def set_nowait(self, key: str, value: bytes, ex: int) -> bool:
        """Queue ``SET key value EX ex`` for the next write (see the module doc); False when
        there is no connection to write it on (it is dropped)."""
        conn = self._conn
        if conn is None or conn.closed:
            return False
        conn.defer(encode((b"SET", key, value, b"EX", ex)))
        return True

    async def _connect(self) -> _Conn:
        """A live connection: the current one is gone (never opened, dropped, or timed out)."""
        loop = asyncio.get_running_loop()
        lost = self._conn
        if lost is not None and isinstance(lost.error, RedisTimeoutError) and self._down is None:
            # Redis stopped answering (hung, paused, blackholed): do not queue more requests
            # behind another silent connection.
            self._mark_down(lost.error, loop)
        if self._down is not None:
            if self._connecting is None and loop.time() >= self._retry_at:
                self._connecting = asyncio.ensure_future(self._open())
                self._connecting.add_done_callback(self._retried)
            raise RedisConnectionError(f"Redis unavailable ({self._down}); retrying")
        # A dropped connection (restart, failover, CLIENT KILL) or the first call: connect
        # now, on the caller's time, and share the attempt between concurrent callers.
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
            # Every caller may have given up (cancelled) before it ends: retrieve its
            # outcome here so that a failure is not reported as "never retrieved".
            self._connecting.add_done_callback(_retrieve)
        connecting = self._connecting
        try:
            # shield: one caller giving up (cancelled) must not cancel the others' attempt.
            return await asyncio.shield(connecting)
        except RedisConnectionError as exc:
            if self._down is None:
                self._mark_down(exc, loop)
            raise
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    def _mark_down(self, exc: Exception, loop: asyncio.AbstractEventLoop) -> None:
        log.warning("redis at %s unavailable: %s; failing fast, reconnecting in the background",
                    self._where, exc)
        self._down = exc
        self._backoff = RETRY_MIN_S
        self._retry_at = loop.time() + self._backoff

    def _retried(self, attempt: asyncio.Future[_Conn]) -> None:
        """A background reconnect ended: back up, or try again after a longer pause."""
        self._connecting = None
        if attempt.cancelled():
            return
        exc = attempt.exception()
        if exc is None:
            log.warning("redis at %s is back", self._where)
            self._down = None
            return
        self._down = exc if isinstance(exc, Exception) else RedisConnectionError(repr(exc))
        self._backoff = min(self._backoff * 2, RETRY_MAX_S)
        self._retry_at = asyncio.get_running_loop().time() + self._backoff

    async def _open(self) -> _Conn:
        p = self._params
        loop = asyncio.get_running_loop()
        conn: _Conn | None = None
        try:
            async with asyncio.timeout(self.timeout_s):
                if "path" in p:
                    _, conn = await loop.create_unix_connection(
                        lambda: _Conn(self.timeout_s, self._write_failures), p["path"])
                else:
                    _, conn = await loop.create_connection(
                        lambda: _Conn(self.timeout_s, self._write_failures),
                        p.get("host", "localhost"), p.get("port", 6379))
                if p.get("password"):
                    auth = ((b"AUTH", p["username"], p["password"]) if p.get("username")
                            else (b"AUTH", p["password"]))
                    await _roundtrip(conn, auth)
                if p.get("db"):
                    await _roundtrip(conn, (b"SELECT", int(p["db"])))
                # A paused or overloaded Redis still accepts TCP (the kernel does): only a
                # reply shows that it serves.
                await _roundtrip(conn, (b"PING",))
        except BaseException as exc:
            # Cleanup-and-reraise: a half-open connection (handshake refused, timed out or
            # cancelled) must not leak, whatever ended the attempt.
            if conn is not None:
                conn.fail(RedisConnectionError("connection attempt abandoned"))
            if isinstance(exc, (OSError, TimeoutError)):
                why = "timed out" if isinstance(exc, TimeoutError) else str(exc)
                raise RedisConnectionError(
                    f"cannot connect to Redis at {self._where}: {why}") from None
            if isinstance(exc, ResponseError):
                raise RedisConnectionError(
                    f"Redis at {self._where} refused the connection handshake: {exc}") from None
            raise
        self._conn = conn
        return conn

    async def aclose(self) -> None:
        """Close the connection; outstanding commands fail with ``ConnectionError``."""
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            conn.fail(RedisConnectionError("Redis client closed"))
