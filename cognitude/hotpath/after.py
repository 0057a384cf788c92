"""The after stage, off the response path: the cache write-back, and a stream's usage when
the upstream sent none (the usage record itself is the route's ``finally``: every request
gets one, however it ended).

A write-back rides the next Redis command of this worker (``RedisPipe.set_nowait``: a new
entry is visible to other workers up to 10 ms after its response was sent) and joins the
cold tier's next batch; a failure only costs a future hit.
"""

from __future__ import annotations

import logging

from redis.exceptions import RedisError

from cognitude.hotpath import sse
from cognitude.hotpath.dispatch import Outcome
from cognitude.ledger.accounting import RequestLog, usage_of_counts
from cognitude.state import AppState

log = logging.getLogger("cognitude.proxy")


async def write_back(state: AppState, key: str, org_id: str, outcome: Outcome, ttl: int,
                     req: RequestLog) -> None:
    """Cache what dispatch answered (a body, or a finished stream folded into one)."""
    if outcome is None:
        return
    data = outcome if isinstance(outcome, bytes) else await _completion(outcome, state, req)
    value = state.codec.encode(data)
    await backfill(state, key, value, ttl)
    if state.cold is not None:
        state.cold.put(key, org_id, value, ttl)


async def backfill(state: AppState, key: str, value: bytes, ttl: int) -> None:
    """Put an encoded entry in Redis (a write-back, or a cold-tier hit going back)."""
    pipe = state.pipe
    if pipe is not None:
        # Not awaited: the reply would only cost a wake-up (an error reply is logged).
        pipe.set_nowait(key, value, ttl)
        return
    try:
        await state.redis.set(key, value, ex=ttl)
    except (RedisError, OSError) as exc:
        log.warning("cache write-back failed: %s", type(exc).__name__)


async def _completion(acc: sse.StreamAccumulator, state: AppState, req: RequestLog) -> bytes:
    """A finished stream as the completion to cache, with usage even when the upstream sent
    none (counted off the event loop; the ledger row uses the same count)."""
    if acc.usage is None:
        await state.accountant.count_tokens(req)
        if req.counted is not None:
            acc.usage = usage_of_counts(*req.counted)
    return acc.completion()
