"""Hourly abuse throttles for the account endpoints anyone may call without a key
(``POST /auth/register``, ``POST /auth/login``), counted in Redis so that a limit holds across
every replica (DESIGN §10), not once per process.

One counter per subject (a client address, an email's digest) per fixed window of
``WINDOW_S``: the window opens at the first attempt. Counting is one MULTI (``SET NX EX``,
``INCR``, ``PTTL``), so a counter never exists without its TTL — not even for an instant a
crash could freeze — and ``Retry-After`` is exactly the time left on it.

The client address is the TCP peer (``request.client.host``). ``cognitude serve`` runs uvicorn
with ``proxy_headers`` off, so ``X-Forwarded-For`` is never believed: a client could forge a
fresh address per request. Behind a reverse proxy every client therefore shares the proxy's
address and one counter; throttle at the proxy then, or raise the limits to suit.

Redis unreachable: with ``redis.fail_open`` the attempt is allowed (and logged) — the same
choice the gate makes for the hot path; otherwise 503.
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from starlette.requests import Request

from cognitude.errors import RateLimited, ServiceUnavailable

log = logging.getLogger("cognitude.throttle")

# "per hour" in auth.register_per_hour / auth.login_per_hour.
WINDOW_S = 3600


def client_address(request: Request) -> str:
    """The peer address; "unknown" when the server reports none (then all such share one)."""
    client = request.client
    return client.host if client is not None and client.host else "unknown"


async def take(redis: aioredis.Redis, key: str, limit: int, what: str, *,
               fail_open: bool) -> None:
    """Count one attempt on ``key``; 429 with ``Retry-After`` once the window holds more than
    ``limit``. ``what`` completes "Too many …" in the message."""
    try:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.set(key, 0, ex=WINDOW_S, nx=True)
            pipe.incr(key)
            pipe.pttl(key)
            _, count, pttl_ms = await pipe.execute()
    except (RedisError, OSError) as exc:
        _unavailable(what, exc, fail_open)
        return
    if int(count) > limit:
        # Rounded up, so a client that waits exactly this long finds the window gone; at
        # least 1 (PTTL reads 0 or -2 when the window ends within this very MULTI).
        retry_s = max(1, -(-int(pttl_ms) // 1000))
        raise RateLimited(f"Too many {what} (at most {limit} per hour); retry in {retry_s} s.",
                          headers=[(b"retry-after", str(retry_s).encode())])


async def refund(redis: aioredis.Redis, key: str) -> None:
    """Give back one attempt that ``take`` counted (a login that turned out to be right).

    ``SET NX EX`` before ``DECR``: if the window expired meanwhile, a bare DECR would create a
    counter at -1 without a TTL; this way it is 0 with a fresh one, which counts nothing.
    Best effort: the answer to the caller is already decided, so a Redis error is only logged.
    """
    try:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.set(key, 1, ex=WINDOW_S, nx=True)
            pipe.decr(key)
            await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("could not refund throttle %s: %s", key, type(exc).__name__)


def _unavailable(what: str, exc: BaseException, fail_open: bool) -> None:
    if not fail_open:
        raise ServiceUnavailable("Redis is unavailable, so this request cannot be throttled "
                                 "(redis.fail_open = false); retry shortly.") from exc
    log.warning("throttle of %s skipped: Redis unavailable (%s); redis.fail_open allows it",
                what, type(exc).__name__)
