"""One Redis pub/sub channel, kept subscribed for the life of the process.

Cross-replica news that must arrive within about a second and costs nothing per request
rides pub/sub: key-cache invalidations (``identity.invalidation``) and deployment cooldowns
(``providers.cooldowns``). A ``Subscription`` reconnects with capped backoff after Redis goes
away and tells its owner when it is (re)subscribed (``on_up``: anything may have been missed
meanwhile) and when it lost the subscription (``on_down``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("cognitude.pubsub")

_RECONNECT_MAX_S = 2.0


def _nothing() -> None:
    return None


class Subscription:
    """Subscribes ``channel`` and hands every message (decoded) to ``on_message``."""

    def __init__(self, redis: aioredis.Redis, channel: str, on_message: Callable[[str], None],
                 *, on_up: Callable[[], None] = _nothing,
                 on_down: Callable[[], None] = _nothing) -> None:
        self._redis = redis
        self._channel = channel
        self._on_message = on_message
        self._on_up = on_up
        self._on_down = on_down
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self, wait_s: float = 2.0) -> None:
        """Start listening; wait briefly for the first subscription (not required)."""
        self._task = asyncio.create_task(self._run(), name=f"cognitude-sub-{self._channel}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), wait_s)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._on_down()

    async def _run(self) -> None:
        delay = 0.1
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                self._on_up()
                self._ready.set()
                delay = 0.1
                async for msg in pubsub.listen():
                    if msg.get("type") == "message":
                        data = msg["data"]
                        self._deliver(data.decode() if isinstance(data, bytes) else data)
            except (RedisError, OSError) as exc:
                log.warning("subscription to %s lost (%s); retrying", self._channel,
                            type(exc).__name__)
            finally:
                self._on_down()
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RECONNECT_MAX_S)

    def _deliver(self, message: str) -> None:
        try:
            self._on_message(message)
        except Exception:  # a bad message must not end the subscription
            log.exception("could not apply a message on %s: %r", self._channel, message[:200])
