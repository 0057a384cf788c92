"""Cross-replica invalidation of the in-process key cache, over Redis pub/sub.

A revoked key, a disabled org or changed limits must take effect on every replica within
about a second. The replica that makes the change calls ``publish``; every replica's
``Invalidator`` (one per process, owned by the lifespan) applies the message to its
``KeyCache``. Messages: ``key:<sha256 hex>``, ``org:<org id>``, ``all``.

While the subscription is down (Redis unreachable, reconnecting) messages can be missed, so
``KeyCache.subscribed`` is False and the cache trusts entries for at most
``UNSUBSCRIBED_TTL_S``; after a reconnect the whole cache is dropped, since anything may
have changed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from cognitude.gate.keys import INVALIDATION_CHANNEL

log = logging.getLogger("cognitude.invalidation")

_RECONNECT_MAX_S = 2.0


class Invalidatable(Protocol):
    """What invalidation needs of a cache (``KeyCache`` is one): forget one key's entry, an
    org's, or everything, and know whether a live subscription keeps it honest."""

    subscribed: bool

    def invalidate(self, digest: str | None = None) -> None: ...

    def invalidate_org(self, org_id: str) -> None: ...


def apply(cache: Invalidatable, message: str) -> None:
    kind, _, value = message.partition(":")
    if kind == "key" and value:
        cache.invalidate(value)
    elif kind == "org" and value:
        cache.invalidate_org(value)
    else:
        cache.invalidate()


async def publish(redis: aioredis.Redis, cache: Invalidatable, message: str) -> None:
    """Apply locally at once, then tell every other replica. A Redis failure is logged: the
    others then catch up within ``UNSUBSCRIBED_TTL_S`` at worst, since their subscription
    is down too."""
    apply(cache, message)
    try:
        await redis.publish(INVALIDATION_CHANNEL, message)
    except (RedisError, OSError) as exc:
        log.warning("could not publish invalidation %r: %s", message, type(exc).__name__)


class Invalidator:
    """Subscribes to the invalidation channel and keeps ``cache.subscribed`` honest."""

    def __init__(self, redis: aioredis.Redis, cache: Invalidatable) -> None:
        self._redis = redis
        self._cache = cache
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self, wait_s: float = 2.0) -> None:
        """Start the subscriber; wait briefly for the first subscription (not required)."""
        self._task = asyncio.create_task(self._run(), name="cognitude-invalidation")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), wait_s)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._cache.subscribed = False

    async def _run(self) -> None:
        delay = 0.1
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(INVALIDATION_CHANNEL)
                # Anything may have changed while we were not listening.
                self._cache.invalidate()
                self._cache.subscribed = True
                self._ready.set()
                delay = 0.1
                async for msg in pubsub.listen():
                    if msg.get("type") == "message":
                        data = msg["data"]
                        apply(self._cache, data.decode() if isinstance(data, bytes) else data)
            except (RedisError, OSError) as exc:
                log.warning("invalidation subscription lost (%s); retrying",
                            type(exc).__name__)
            finally:
                self._cache.subscribed = False
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RECONNECT_MAX_S)
