"""The admit stage: the one round trip that decides the request (``lua/gate.lua`` via
``Gate.check``: the org's and the key's windows, the cache lookup, the org's epoch), and
what happens when Redis cannot answer.

``redis.fail_open`` covers an outage only (the connection lost or silent): then the request
goes on without limits and cache (``None``), and the outage is logged once when it starts and
once when it ends (``gate.Outage``). Redis refusing the command is not an outage: out of
memory is a 503 of its own, a script error a 500 - serving without limits would hide both.

A Redis miss may still be a hit: for an org whose Postgres copies predate its Redis epoch
(Redis lost them), ``cold_copy`` reads the cold tier, bounded by
``cache.cold_read_timeout_ms``.
"""

from __future__ import annotations

from time import perf_counter

from redis.exceptions import OutOfMemoryError

from cognitude.errors import ServiceUnavailable
from cognitude.gate.gate import REDIS_UNAVAILABLE, Admission
from cognitude.identity.keycache import KeyInfo
from cognitude.ledger.accounting import RequestLog
from cognitude.state import AppState


async def admit(state: AppState, info: KeyInfo, read_key: str | None, req: RequestLog, *,
                count_hits: bool, fail_open: bool) -> Admission | None:
    """The gate's decision (and cached value, when ``read_key`` is asked), or None when
    Redis is unavailable and ``fail_open`` lets the request go on without it."""
    g0 = perf_counter()
    try:
        adm = await state.gate.check(
            info.org_id, info.limits, read_key, count_hits=count_hits, key_id=info.key_id,
            key_limits=info.key_limits,
            want_epoch=read_key is not None and state.cold is not None)
    except REDIS_UNAVAILABLE as exc:
        req.gate_s = perf_counter() - g0
        if not fail_open:
            raise ServiceUnavailable("Rate limiter unavailable; try again shortly.") from None
        state.outage.served_open(exc)
        return None
    except OutOfMemoryError:
        raise ServiceUnavailable(
            "The rate limiter's Redis is out of memory (maxmemory reached with nothing "
            "evictable); the operator must raise maxmemory or use maxmemory-policy "
            "volatile-lfu.", code="redis_out_of_memory") from None
    req.gate_s = perf_counter() - g0
    if state.outage.active:
        state.outage.ended()
    return adm


async def cold_copy(state: AppState, info: KeyInfo, key: str,
                    adm: Admission) -> tuple[bytes, int] | None:
    """(stored value, remaining TTL) from the cold tier, for an org that may have copies
    Redis lost; None otherwise (the common case costs no Postgres read)."""
    cold = state.cold
    if cold is None or not await cold.may_hold(info.org_id, adm.epoch):
        return None
    return await cold.get(key)
