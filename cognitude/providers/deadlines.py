"""``upstream.total_timeout_s``: no upstream exchange outlives its deadline.

aiohttp's own ``ClientTimeout(total=...)`` does this with a timer context around every read
of every response, measured at ~20,000 instructions per request (2.5 % of a cache miss);
``asyncio.timeout`` around the exchange cost more still (~27,000). Here a request costs a
dict insert and delete: the exchange registers its task, and one sweep a second cancels the
tasks past their deadline. A cut is therefore up to ``SWEEP_S`` late, which is nothing
against a bound of minutes.

The cancelled task sees ``asyncio.CancelledError`` at whatever it was awaiting (the
connection, the headers, the body); :meth:`Deadlines.was_cut` tells the route that it was
the sweep's, and undoes the cancellation, so that the request goes on to answer with a 504
and record itself. A cancellation that did not come from the sweep (server shutdown) passes
through untouched.

Streams leave the watch once their headers arrive: past that point a cancellation could no
longer end the stream with an SSE error event, so the relay checks the deadline itself as
each chunk arrives (a silent upstream is bounded by ``upstream.read_timeout_s`` anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from time import monotonic
from typing import Any

log = logging.getLogger("cognitude.deadlines")

# How often overdue exchanges are looked for: the bound's precision.
SWEEP_S = 1.0


class Deadlines:
    """The exchanges in flight (task → deadline) and the sweep that cuts them; one per
    worker, owned by the lifespan (``AppState.deadlines``).

    The hot route registers inline (``inflight[task] = ...`` before the exchange, ``pop``
    after): a context-manager object would cost more than the rest of this together.
    """

    __slots__ = ("total_s", "inflight", "_expired", "_sweeper", "cut")

    def __init__(self, total_s: float) -> None:
        self.total_s = total_s
        self.inflight: dict[asyncio.Task[Any], float] = {}  # task → monotonic deadline
        self._expired: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self.cut = 0  # exchanges cut at their deadline, for /metrics and tests

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep(), name="cognitude-deadlines")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    def release(self) -> float:
        """Take the current task off the sweep (a stream that checks its deadline itself
        from here on); its deadline (a full one when it had none)."""
        task = asyncio.current_task()
        default = monotonic() + self.total_s
        return self.inflight.pop(task, default) if task is not None else default

    def was_cut(self, task: asyncio.Task[Any]) -> bool:
        """Whether the ``CancelledError`` ``task`` just got was this sweep's (then undone, so
        that the request goes on to answer with a 504 and record itself)."""
        if task not in self._expired:
            return False
        self._expired.discard(task)
        task.uncancel()
        return True

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            now = monotonic()
            for task in [t for t, deadline in self.inflight.items() if deadline <= now]:
                # Runs between the tasks' steps: a task still registered sits in its
                # exchange, so the cancellation lands there.
                del self.inflight[task]
                self._expired.add(task)
                task.cancel()
                self.cut += 1
