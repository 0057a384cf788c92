"""Deployment cooldowns: a deployment that keeps failing is skipped for a while, everywhere.

A deployment is one provider serving one model (``"<provider>/<model>"``). Each process
counts its calls and failures per deployment in windows of ``WINDOW_S``; when the failures
of a window reach ``upstream.cooldown_failure_rate`` over at least
``upstream.cooldown_min_calls`` calls, or the provider refused the operator's shared key
(401/403: every further call would fail the same way), the deployment is cooled down for
``upstream.cooldown_s``. Its first call after that is a probe: a failure cools it down again
for twice as long (up to ``MAX_DOUBLINGS``), a success ends the episode.

A cooldown is published on ``COOLDOWN_CHANNEL`` (one PUBLISH per cooldown, never per
request), and every replica applies it within about a second. Messages carry the seconds
left, not a time, so replicas' clocks need not agree. Skipping is the plan's choice
(``hotpath.dispatch``): a cooled deployment is passed over while another attempt remains,
and a model whose every deployment is cooled is still tried rather than refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from time import monotonic

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from cognitude.config import UpstreamConfig
from cognitude.gate.keys import COOLDOWN_CHANNEL
from cognitude.gate.pubsub import Subscription

log = logging.getLogger("cognitude.cooldowns")

WINDOW_S = 10.0  # failure rates are judged over this much recent traffic
MAX_DOUBLINGS = 3  # a cooldown grows to at most 8x upstream.cooldown_s


class Cooldowns:
    """Per-process deployment health; ``publish`` (set by the lifespan) tells the others."""

    __slots__ = ("_cfg", "_until", "_level", "_window", "_clock", "publish", "started",
                 "applied")

    def __init__(self, cfg: UpstreamConfig, clock: Callable[[], float] = monotonic) -> None:
        self._cfg = cfg
        self._until: dict[str, float] = {}  # deployment → end of its cooldown (clock time)
        self._level: dict[str, int] = {}  # deployment → doublings of its current episode
        self._window: dict[str, list[float]] = {}  # deployment → [start, calls, failures]
        self._clock = clock
        self.publish: Callable[[str, float, int], None] | None = None
        self.started = 0  # cooldowns this process started (for /metrics)
        self.applied = 0  # cooldowns other replicas announced

    def cooled(self, deployment: str) -> bool:
        """Whether to pass this deployment over now."""
        until = self._until.get(deployment)
        return until is not None and self._clock() < until

    def cooled_now(self) -> list[str]:
        now = self._clock()
        return sorted(d for d, until in self._until.items() if now < until)

    def succeeded(self, deployment: str) -> None:
        """One call answered. On every miss: a dict lookup and an increment, no clock (the
        window is checked when a failure arrives)."""
        if deployment in self._level:
            # The probe after a cooldown answered (or a cooled deployment tried because
            # nothing else was left did): the episode is over.
            del self._level[deployment]
            self._until.pop(deployment, None)
        w = self._window.get(deployment)
        if w is None:
            self._window[deployment] = [self._clock(), 1.0, 0.0]
        else:
            w[1] += 1

    def failed(self, deployment: str, *, refused_key: bool = False) -> None:
        """A transient failure of a call (or, ``refused_key``, the shared key rejected)."""
        if self.cooled(deployment):
            return  # calls that were in flight when it cooled down, or tried anyway
        if refused_key or deployment in self._level:
            # The key will not start working by itself; a probe that fails means the
            # deployment is still down.
            return self._start(deployment)
        if self._count(deployment):
            self._start(deployment)

    def _count(self, deployment: str) -> bool:
        """Count one failed call; True when this window's failures reached the cooldown
        rule. A window older than ``WINDOW_S`` starts over (the successes counted since it
        began are forgotten with it)."""
        now = self._clock()
        w = self._window.get(deployment)
        if w is None or now - w[0] > WINDOW_S:
            w = self._window[deployment] = [now, 0.0, 0.0]
        w[1] += 1
        w[2] += 1
        cfg = self._cfg
        return w[1] >= cfg.cooldown_min_calls and w[2] >= cfg.cooldown_failure_rate * w[1]

    def _start(self, deployment: str) -> None:
        level = self._level.get(deployment, -1) + 1
        level = min(level, MAX_DOUBLINGS)
        seconds = self._cfg.cooldown_s * (2 ** level)
        self.apply(deployment, seconds, level)
        self.started += 1
        log.warning("deployment %s cooled down for %g s (failing)", deployment, seconds)
        if self.publish is not None:
            self.publish(deployment, seconds, level)

    def apply(self, deployment: str, seconds: float, level: int) -> None:
        """Cool ``deployment`` down for ``seconds`` (here, or announced by another replica)."""
        self._until[deployment] = self._clock() + seconds
        self._level[deployment] = level
        self._window.pop(deployment, None)  # the probe starts a fresh count


def encode(deployment: str, seconds: float, level: int) -> str:
    return f"{seconds:.3f} {level} {deployment}"


def decode(message: str) -> tuple[str, float, int]:
    seconds, level, deployment = message.split(" ", 2)
    return deployment, float(seconds), int(level)


class CooldownFeed:
    """Publishes this process's cooldowns and applies everyone else's (owned by the
    lifespan). A replica that missed messages while Redis was away learns of later
    cooldowns only; the ones it missed end by themselves."""

    def __init__(self, redis: aioredis.Redis, cooldowns: Cooldowns) -> None:
        self._redis = redis
        self._cooldowns = cooldowns
        self._sub = Subscription(redis, COOLDOWN_CHANNEL, self._receive)
        self._sent: set[str] = set()  # our own messages, not to be applied twice
        self._tasks: set[asyncio.Task[None]] = set()
        cooldowns.publish = self._publish

    async def start(self) -> None:
        await self._sub.start()

    async def close(self) -> None:
        self._cooldowns.publish = None
        await self._sub.close()
        for task in list(self._tasks):
            task.cancel()

    def _publish(self, deployment: str, seconds: float, level: int) -> None:
        message = encode(deployment, seconds, level)
        self._sent.add(message)
        task = asyncio.ensure_future(self._send(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, message: str) -> None:
        try:
            await self._redis.publish(COOLDOWN_CHANNEL, message)
        except (RedisError, OSError) as exc:
            self._sent.discard(message)
            log.warning("could not publish a cooldown (%s); other replicas find out by "
                        "themselves", type(exc).__name__)

    def _receive(self, message: str) -> None:
        if message in self._sent:
            self._sent.discard(message)
            return
        deployment, seconds, level = decode(message)
        self._cooldowns.apply(deployment, seconds, level)
        self._cooldowns.applied += 1
