"""The request gate: sliding-window rate limits and the cache lookup in one round trip.

``Gate.check`` runs ``lua/gate.lua`` with one ``EVALSHA`` per proxied request (DESIGN §6). The
script's header is the contract for its KEYS, ARGV and reply; this module only builds the
arguments and turns the reply into a :class:`Admission` for the response headers
(``X-RateLimit-*``, ``Retry-After``) and the cache-hit path.

An organization's three windows (minute / hour / day) always apply; an API key with limits of
its own adds its three windows to the same call (six in all, decided atomically together).

The script is loaded with ``SCRIPT LOAD`` at start (``Gate.load``) and called by SHA. After a
``SCRIPT FLUSH`` or a failover to a server that never saw it, the first call gets ``NOSCRIPT``,
reloads once and retries. redis-py ``Script`` objects are not used: inside pipelines they add
a ``SCRIPT EXISTS`` round trip to every call.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from redis.exceptions import BusyLoadingError, MasterDownError, ReadOnlyError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cognitude.gate import keys
from cognitude.gate.lua_script import LUA_DIR, LuaScript

if TYPE_CHECKING:
    import redis.asyncio

    from cognitude.gate.redis_pipe import RedisPipe

log = logging.getLogger("cognitude.gate")

GATE_LUA_PATH: Path = LUA_DIR / "gate.lua"

# What "Redis is unavailable" means for fail-open: the connection is lost or silent, or the
# server cannot serve writes right now (loading its dataset, a replica after a failover).
# Anything else Redis answers - a script error, WRONGTYPE, OOM - is Redis refusing the
# command, and serving without limits would hide it: those are errors, not outages.
REDIS_UNAVAILABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError, RedisTimeoutError, BusyLoadingError, ReadOnlyError, MasterDownError,
    ConnectionError, TimeoutError, OSError,
)
USAGE_LUA_PATH: Path = LUA_DIR / "limits_usage.lua"

# ARGV[5] of gate.lua, as the bytes the client would encode anyway.
_COUNT_HITS = b"1"
_SKIP_HITS = b"0"
# ARGV[6] meaning "use the server's TIME".
_SERVER_CLOCK = b"0"
# ARGV[7]: six window keys (the org's, then the API key's); absent means three.
_SIX_WINDOWS = b"6"
_THREE_WINDOWS = b"3"
_WANT_EPOCH = b"1"


@dataclass(slots=True, frozen=True)
class Limits:
    """Requests per trailing minute / hour / day of one organization (or one API key)."""

    minute: int
    hour: int
    day: int


@dataclass(slots=True)
class Admission:
    allowed: bool
    limit: int  # limit of the tightest window
    remaining: int  # remaining in the tightest window after this call
    reset_s: int  # whole seconds (ceil) until the tightest window's remaining increases
    retry_after_s: int  # on rejection: ceil(retry_after_ms / 1000), >= 1; 0 when allowed
    cached: bytes | None  # the cached value when admitted and present
    # The tightest window: 1-3 the org's minute/hour/day, 4-6 the API key's own.
    window: int = 1
    # With want_epoch: server ms when this Redis dataset first admitted the org (None when
    # not asked, or absent and not created by this call).
    epoch: int | None = None


# Key names are pure functions of the org id; memoising them spares three f-strings per
# request. Bounded because org ids come from the (bounded) set of provisioned orgs, but a
# runaway set must not grow without limit.
_limiter_keys = lru_cache(maxsize=8192)(keys.limiter_keys)
_epoch_key = lru_cache(maxsize=8192)(keys.epoch_key)


@lru_cache(maxsize=16384)
def _six_window_keys(org_id: str, key_id: str) -> tuple[str, ...]:
    """The org's three window keys, then the API key's three: KEYS[1..6] of gate.lua."""
    return (*_limiter_keys(org_id), *keys.key_limiter_keys(org_id, key_id))


def _ceil_s(ms: int) -> int:
    return -(-ms // 1000)


class Gate:
    """Calls ``lua/gate.lua``; one instance per Redis client, created by the lifespan.

    The proxy passes its :class:`~cognitude.redis_pipe.RedisPipe`; redis-py's client serves
    where the pipe cannot (TLS, Cluster) and in tools.
    """

    __slots__ = ("_script",)

    def __init__(self, redis: redis.asyncio.Redis | RedisPipe, source: str | None = None) -> None:
        self._script = LuaScript(redis, GATE_LUA_PATH, source)

    @property
    def sha(self) -> str:
        return self._script.sha

    async def load(self) -> None:
        """``SCRIPT LOAD`` the script (at start, and after ``NOSCRIPT``)."""
        await self._script.load()

    async def check(
        self,
        org_id: str,
        limits: Limits,
        cache_key: str | None = None,
        *,
        count_hits: bool = True,
        cost: int = 1,
        now_ms: int | None = None,
        key_id: str | None = None,
        key_limits: Limits | None = None,
        want_epoch: bool = False,
    ) -> Admission:
        """Count one request (``cost`` requests) against ``limits`` and look up ``cache_key``.

        ``limits`` are the org's. With ``key_limits`` (and the ``key_id`` they belong to) the
        API key's own windows must hold too; all six are decided in the same call, and the
        result then describes the tightest of the six. Without ``key_limits``, ``key_id`` is
        ignored. Rejected requests write nothing. With ``count_hits=False`` a cache hit is
        returned without checking or counting the limits. ``want_epoch`` also returns the org's
        Redis epoch (see gate.lua ARGV[11]). ``now_ms`` overrides the server clock and exists
        for tests only.
        """
        if cost < 1:
            raise ValueError(f"cost must be >= 1, got {cost}")
        hits = _COUNT_HITS if count_hits else _SKIP_HITS
        now = _SERVER_CLOCK if now_ms is None else now_ms
        ks: tuple[str, ...]
        argv: tuple[Any, ...]
        if key_limits is None:
            ks = _limiter_keys(org_id)
            argv = (limits.minute, limits.hour, limits.day, cost, hits, now)
            if want_epoch:
                argv = (*argv, _THREE_WINDOWS, "", "", "", _WANT_EPOCH)
        else:
            if key_id is None:
                raise ValueError("key_limits needs the key_id they belong to")
            ks = _six_window_keys(org_id, key_id)
            argv = (limits.minute, limits.hour, limits.day, cost, hits, now, _SIX_WINDOWS,
                    key_limits.minute, key_limits.hour, key_limits.day)
            if want_epoch:
                argv = (*argv, _WANT_EPOCH)
        if cache_key is not None:
            ks = (*ks, cache_key)
        if want_epoch:
            ks = (*ks, _epoch_key(org_id))
        return _parse(await self._script.run(ks, argv))


def _parse(reply: list[Any]) -> Admission:
    allowed, limit, remaining, reset_ms, retry_ms, window, cached = reply[:7]
    epoch = int(reply[7]) if len(reply) > 7 and reply[7] is not None else None
    return Admission(
        allowed=allowed == 1,
        limit=limit,
        remaining=remaining,
        reset_s=_ceil_s(reset_ms),
        retry_after_s=0 if allowed == 1 else max(1, _ceil_s(retry_ms)),
        cached=cached,
        window=window,
        epoch=epoch,
    )


@dataclass(slots=True, frozen=True)
class WindowUsage:
    used: int
    reset_ms: int


class UsageReader:
    """An org's current use of its three windows, read without counting (``GET
    /rate-limits/usage``): runs ``lua/limits_usage.lua`` by SHA, reloading once on ``NOSCRIPT``
    as ``Gate`` does. One per process, created by the lifespan (``AppState.limits_usage``)."""

    __slots__ = ("_script",)

    def __init__(self, redis: Any, source: str | None = None) -> None:
        self._script = LuaScript(redis, USAGE_LUA_PATH, source)

    @property
    def sha(self) -> str:
        return self._script.sha

    async def load(self) -> None:
        await self._script.load()

    async def read(self, org_id: str, *, now_ms: int | None = None) -> list[WindowUsage]:
        """minute, hour, day. ``now_ms`` overrides the server clock, for tests only."""
        reply = await self._script.run(keys.limiter_keys(org_id),
                                       (0 if now_ms is None else now_ms,))
        return [WindowUsage(int(reply[i]), int(reply[i + 1])) for i in range(0, 6, 2)]


class Outage:
    """Fail-open bookkeeping: one log line when Redis becomes unavailable, one when it is
    back with how long it lasted and how many requests were served without limits and
    cache meanwhile. One per worker, owned by the lifespan (``AppState.outage``)."""

    __slots__ = ("active", "since", "served", "cause")

    def __init__(self) -> None:
        self.active = False
        self.since = 0.0
        self.served = 0
        self.cause = ""

    def served_open(self, exc: BaseException) -> None:
        """A request was served without the gate because ``exc`` made Redis unavailable."""
        if not self.active:
            self.active, self.since, self.served = True, time.monotonic(), 0
            self.cause = type(exc).__name__
            log.warning("redis unavailable (%s): serving requests without rate limits and "
                        "cache until it is back (redis.fail_open = true)", self.cause)
        self.served += 1

    def ended(self) -> None:
        """The gate answered again."""
        self.active = False
        log.warning("redis is back after %.1f s (%s); %d requests were served without rate "
                    "limits and cache meanwhile", time.monotonic() - self.since, self.cause,
                    self.served)
