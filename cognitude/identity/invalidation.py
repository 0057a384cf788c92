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

import logging
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from cognitude.gate.keys import INVALIDATION_CHANNEL
from cognitude.gate.pubsub import Subscription

log = logging.getLogger("cognitude.invalidation")


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
        self._cache = cache
        self._sub = Subscription(redis, INVALIDATION_CHANNEL, lambda m: apply(cache, m),
                                 on_up=self._up, on_down=self._down)

    async def start(self, wait_s: float = 2.0) -> None:
        await self._sub.start(wait_s)

    async def close(self) -> None:
        await self._sub.close()

    def _up(self) -> None:
        self._cache.invalidate()  # anything may have changed while we were not listening
        self._cache.subscribed = True

    def _down(self) -> None:
        self._cache.subscribed = False
