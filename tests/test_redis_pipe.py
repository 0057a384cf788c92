"""RedisPipe, the hot path's pipelined Redis client: ordering, errors, loss, timeouts, handshake.

Against the real (embedded) Valkey, except where a server must misbehave on purpose: then a
loopback asyncio server that accepts and never answers stands in for a hung Redis.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cognitude.gate.redis_pipe import DEFER_MAX_BYTES, DEFER_S, RedisPipe, encode, supports
from tests.conftest import free_port


@pytest.fixture
async def pipe(redis_url: str, redis_client: redis.asyncio.Redis) -> AsyncIterator[RedisPipe]:
    p = RedisPipe(redis_url, timeout_s=2.0)
    yield p
    await p.aclose()


class FakeRedis:
    """A loopback server speaking just enough RESP to misbehave on purpose: every ``PING``
    gets ``+PONG`` (after ``delay`` s each) while ``answering`` is true, and nothing while it
    is false (a hung or paused Redis; the kernel still accepts connections)."""

    def __init__(self, *, delay: float = 0.0, answering: bool = True, port: int = 0) -> None:
        self.delay = delay
        self.answering = answering
        self.port = port
        self.accepted = 0
        self.server: asyncio.AbstractServer | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted += 1
            self.writers.append(writer)
            while data := await reader.read(65536):
                for _ in range(data.count(b"PING")):
                    if not self.answering:
                        continue
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    writer.write(b"+PONG\r\n")

        self.server = await asyncio.start_server(handle, "127.0.0.1", self.port)
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def __aexit__(self, *exc: Any) -> None:
        assert self.server is not None
        for w in self.writers:
            w.close()
        self.server.close()
        await self.server.wait_closed()


async def fails_fast(pipe: RedisPipe, n: int = 20) -> None:
    """``n`` calls each fail at once (no timeout waited) with the breaker's error."""
    t0 = time.monotonic()
    for _ in range(n):
        with pytest.raises(RedisConnectionError, match="unavailable"):
            await pipe.execute(b"PING")
    assert time.monotonic() - t0 < 0.1 * n / 20


async def recovers(pipe: RedisPipe, within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            assert await pipe.execute(b"PING") == b"PONG"
            assert not pipe.down
            return
        except RedisConnectionError:
            await asyncio.sleep(0.02)
    raise AssertionError(f"no recovery within {within} s")


def test_encode_is_resp_bulk_strings() -> None:
    assert encode((b"SET", "k\u00e9", b"v", b"EX", 60)) == (
        b"*5\r\n$3\r\nSET\r\n$3\r\nk\xc3\xa9\r\n$1\r\nv\r\n$2\r\nEX\r\n$2\r\n60\r\n")
    with pytest.raises(TypeError, match="float"):
        encode((b"SET", "k", 1.5))


def test_supports_plain_and_unix_only() -> None:
    assert supports("redis://127.0.0.1:6379/0", cluster=False)
    assert supports("unix:///tmp/redis.sock?db=1", cluster=False)
    assert not supports("rediss://127.0.0.1:6379/0", cluster=False)
    assert not supports("redis://127.0.0.1:6379/0", cluster=True)
    with pytest.raises(ValueError, match="TLS"):
        RedisPipe("rediss://127.0.0.1:6379/0", 1.0)


async def test_concurrent_commands_share_one_connection_in_order(
        pipe: RedisPipe, redis_client: redis.asyncio.Redis) -> None:
    results = await asyncio.gather(*(pipe.execute(b"INCR", "n") for _ in range(500)))
    assert sorted(results) == list(range(1, 501))  # each reply went to its own caller
    assert await redis_client.get("n") == b"500"
    ids = await asyncio.gather(*(pipe.execute(b"CLIENT", b"ID") for _ in range(50)))
    assert len(set(ids)) == 1  # all on one connection


async def test_fire_and_forget_set_is_ordered_before_later_reads(
        pipe: RedisPipe, redis_client: redis.asyncio.Redis) -> None:
    assert not pipe.set_nowait("k", b"v", 60)  # no connection yet: dropped, not queued
    await pipe.execute(b"PING")
    for i in range(50):
        assert pipe.set_nowait(f"k{i}", b"v%d" % i, 60)
        # written on the same socket, so executed before this read
        assert await pipe.execute(b"GET", f"k{i}") == b"v%d" % i
    assert 0 < await redis_client.ttl("k49") <= 60


class CountingTransport:
    """Wraps the pipe's transport to count its writes (each one a send syscall)."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


async def test_write_backs_ride_along_with_the_next_command(
        pipe: RedisPipe, redis_client: redis.asyncio.Redis) -> None:
    await pipe.execute(b"PING")
    conn = pipe._conn
    assert conn is not None
    counting = conn.transport = CountingTransport(conn.transport)
    for i in range(100):
        assert pipe.set_nowait(f"w{i}", b"v%d" % i, 60)
    assert counting.writes == []  # nothing sent yet
    assert await pipe.execute(b"GET", "w99") == b"v99"
    assert len(counting.writes) == 1  # 100 SETs and the GET in one send
    # Alone, a write-back goes out after DEFER_S.
    assert pipe.set_nowait("alone", b"x", 60)
    await asyncio.sleep(DEFER_S * 5)
    assert len(counting.writes) == 2
    assert await redis_client.get("alone") == b"x"
    # A large backlog does not wait.
    assert pipe.set_nowait("big", b"x" * DEFER_MAX_BYTES, 60)
    assert len(counting.writes) == 3
    assert await pipe.execute(b"STRLEN", "big") == DEFER_MAX_BYTES


async def test_error_replies_raise_and_keep_the_connection_in_step(
        pipe: RedisPipe, redis_client: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture,
) -> None:
    await redis_client.set("text", b"abc")
    with pytest.raises(ResponseError, match="not an integer"):
        await pipe.execute(b"INCR", "text")
    with pytest.raises(NoScriptError):
        await pipe.evalsha("0" * 40, 0)
    # a failed fire-and-forget write is logged, not raised, and its reply slot is consumed
    with caplog.at_level(logging.WARNING, logger="cognitude.redis"):
        assert pipe.set_nowait("k", b"v", 0)  # EX 0 is refused
        assert await pipe.execute(b"ECHO", b"after") == b"after"
    assert "invalid expire time" in caplog.text
    sha = await pipe.script_load("return ARGV[1]")
    assert await pipe.evalsha(sha, 0, "x") == b"x"


async def test_lost_connection_fails_outstanding_and_reconnects(
        pipe: RedisPipe, redis_client: redis.asyncio.Redis) -> None:
    await pipe.execute(b"CLIENT", b"SETNAME", b"pipe-under-test")
    blocked = asyncio.ensure_future(pipe.execute(b"BLPOP", "never", 10))
    await asyncio.sleep(0.1)
    assert not blocked.done()
    killed = await redis_client.execute_command("CLIENT", "KILL", "TYPE", "normal",
                                                "SKIPME", "yes")
    assert killed >= 1
    t0 = time.monotonic()
    with pytest.raises(RedisConnectionError, match="closed the connection"):
        await blocked
    assert time.monotonic() - t0 < 1  # at once, not at BLPOP's or the pipe's timeout
    # the next command opens a new connection by itself
    assert await pipe.execute(b"PING") == b"PONG"


async def test_hung_redis_times_out_outstanding_then_fails_fast_until_it_answers() -> None:
    fake = FakeRedis()
    async with fake as url:
        pipe = RedisPipe(url, timeout_s=0.3)
        assert await pipe.execute(b"PING") == b"PONG"
        fake.answering = False  # paused: the socket is open, nothing comes back
        t0 = time.monotonic()
        outcomes = await asyncio.gather(*(pipe.execute(b"PING") for _ in range(20)),
                                        return_exceptions=True)
        took = time.monotonic() - t0
        assert all(isinstance(o, RedisTimeoutError) for o in outcomes), outcomes
        assert 0.25 < took < 1.5
        # Known down now: no caller waits out another timeout ...
        await fails_fast(pipe)
        assert pipe.down
        # ... and the background reconnects notice when it answers again.
        fake.answering = True
        await recovers(pipe)
        await pipe.aclose()


async def test_a_slow_but_answering_redis_is_not_timed_out() -> None:
    # The timeout is on silence, not on age: replies keep arriving (one per 100 ms here), so
    # nothing times out although the batch takes three times the timeout.
    async with FakeRedis(delay=0.1) as url:
        slow = RedisPipe(url, timeout_s=0.3)
        try:
            t0 = time.monotonic()
            results = await asyncio.gather(*(slow.execute(b"PING") for _ in range(9)))
            assert results == [b"PONG"] * 9
            assert time.monotonic() - t0 > 0.8
            assert not slow.down
        finally:
            await slow.aclose()


async def test_connect_failures_are_shared_named_then_fail_fast_until_redis_is_back() -> None:
    port = free_port()
    pipe = RedisPipe(f"redis://127.0.0.1:{port}/0", timeout_s=1.0)
    outcomes = await asyncio.gather(*(pipe.execute(b"PING") for _ in range(10)),
                                    return_exceptions=True)
    assert all(isinstance(o, RedisConnectionError) for o in outcomes)
    assert f"cannot connect to Redis at 127.0.0.1:{port}" in str(outcomes[0])
    await fails_fast(pipe)
    async with FakeRedis(port=port):  # Redis comes up on its address
        await recovers(pipe)
    await pipe.aclose()


async def test_a_handshake_that_hangs_is_one_shared_attempt() -> None:
    silent = FakeRedis(answering=False)
    async with silent as url:
        hung = RedisPipe(url.replace("/0", "/3"), timeout_s=0.3)  # SELECT 3 never answered
        outcomes = await asyncio.gather(*(hung.execute(b"PING") for _ in range(10)),
                                        return_exceptions=True)
        assert all(isinstance(o, RedisConnectionError) for o in outcomes)
        assert "timed out" in str(outcomes[0])
        assert silent.accepted == 1
        await hung.aclose()


async def test_url_database_and_credentials(
        redis_url: str, redis_client: redis.asyncio.Redis) -> None:
    db5 = RedisPipe(redis_url.rsplit("/", 1)[0] + "/5", timeout_s=2.0)
    await db5.set("where", b"five", ex=60)
    await db5.aclose()
    assert await redis_client.get("where") is None
    other = redis.asyncio.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/5")
    assert await other.get("where") == b"five"
    await other.flushdb()
    await other.aclose()

    await redis_client.execute_command("ACL", "SETUSER", "piper", "on", ">s3cret", "~*", "+@all")
    try:
        host = redis_url.split("://", 1)[1]
        ok = RedisPipe(f"redis://piper:s3cret@{host}", timeout_s=2.0)
        assert await ok.execute(b"ACL", b"WHOAMI") == b"piper"
        await ok.aclose()
        bad = RedisPipe(f"redis://piper:wrong@{host}", timeout_s=2.0)
        with pytest.raises(RedisConnectionError, match="refused the connection handshake"):
            await bad.execute(b"PING")
        await bad.aclose()
    finally:
        await redis_client.execute_command("ACL", "DELUSER", "piper")


async def test_close_fails_outstanding(pipe: RedisPipe) -> None:
    blocked = asyncio.ensure_future(pipe.execute(b"BLPOP", "never", 10))
    await asyncio.sleep(0.05)
    await pipe.aclose()
    with pytest.raises(RedisConnectionError, match="closed"):
        await blocked


async def test_a_closing_transport_fails_the_command_not_the_caller(pipe: RedisPipe) -> None:
    await pipe.execute(b"PING")
    conn = pipe._conn
    assert conn is not None
    conn.transport.close()  # going away; connection_lost() has not run yet
    with pytest.raises(RedisConnectionError, match="closing"):
        await pipe.execute(b"PING")
    assert await pipe.execute(b"PING") == b"PONG"  # and the next call reconnects
