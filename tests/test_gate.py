"""lua/gate.lua and cognitude/gate.py against a real Redis/Valkey server.

Times are driven through the script's test-only ``now_ms`` override, so every expectation is
exact to the millisecond. The reference ``Model`` below re-states the algorithm in plain Python;
the invariants that do not depend on it (never more than N in any trailing window, Retry-After
exact, rejections write nothing) are checked against brute force.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import random
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio
from redis.exceptions import ResponseError

from cognitude.gate import keys
from cognitude.gate.gate import GATE_LUA_PATH, Admission, Gate, Limits
from cognitude.gate.lua_script import strip_shebang as _strip_shebang
from cognitude.gate.redis_pipe import RedisPipe

W_MS = (60_000, 3_600_000, 86_400_000)
G_MS = (1_000, 60_000, 900_000)
T0 = 1_767_225_600_123  # 2026-01-01 00:00:00.123 UTC: deliberately not on a bucket edge
BIG = Limits(10**6, 10**6, 10**6)


@pytest.fixture(params=["redis-py", "pipe"])
async def gate(request: pytest.FixtureRequest, redis_client: redis.asyncio.Redis,
               redis_url: str) -> Any:
    """The gate over each client the proxy may use: redis-py (TLS, Cluster) and RedisPipe."""
    if request.param == "redis-py":
        g = Gate(redis_client)
        await g.load()
        yield g
        return
    pipe = RedisPipe(redis_url, timeout_s=2.0)
    g = Gate(pipe)
    await g.load()
    yield g
    await pipe.aclose()


async def raw(
    r: redis.asyncio.Redis,
    gate: Gate,
    org: str,
    limits: Limits,
    now_ms: int,
    *,
    cost: int = 1,
    cache_key: str | None = None,
    count_hits: bool = True,
) -> list[Any]:
    """The script's reply as is (milliseconds and window index included)."""
    ks: tuple[str, ...] = keys.limiter_keys(org)
    if cache_key is not None:
        ks = (*ks, cache_key)
    argv = (limits.minute, limits.hour, limits.day, cost, "1" if count_hits else "0", now_ms)
    reply: list[Any] = await r.evalsha(gate.sha, len(ks), *ks, *argv)
    return reply


async def snapshot(r: redis.asyncio.Redis, org: str) -> list[Any]:
    return [(await r.dump(k), await r.hgetall(k)) for k in keys.limiter_keys(org)]


async def commandstats(r: redis.asyncio.Redis) -> dict[str, int]:
    info = await r.info("commandstats")
    return {name.removeprefix("cmdstat_"): v["calls"] for name, v in info.items()}


# -- reference model ---------------------------------------------------------------------------


def model_check(
    buckets: list[dict[int, int]], lims: tuple[int, ...], now: int, cost: int
) -> tuple[int, int, int, int, int, int]:
    """The gate's decision over any number of windows (window i has the length of window
    i % 3), updating ``buckets`` on admission; returns gate.lua's reply fields 1-6."""
    n = len(lims)
    w = [W_MS[i % 3] for i in range(n)]
    g = [G_MS[i % 3] for i in range(n)]
    counted = [{b: c for b, c in buckets[i].items() if b >= (now - w[i]) // g[i]} for i in range(n)]
    total = [sum(c.values()) for c in counted]
    allowed = all(total[i] + cost <= lims[i] for i in range(n))
    retry = 0
    if allowed:
        for i in range(n):
            b = now // g[i]
            buckets[i][b] = buckets[i].get(b, 0) + cost
            counted[i][b] = counted[i].get(b, 0) + cost
            total[i] += cost
    else:
        for i in range(n):
            if total[i] + cost <= lims[i]:
                continue
            r, left = w[i], total[i]
            for b in sorted(counted[i]):
                left -= counted[i][b]
                if left + cost <= lims[i]:
                    r = (b + 1) * g[i] + w[i] - now
                    break
            retry = max(retry, r)
    rem = [max(0, lims[i] - total[i]) for i in range(n)]
    best, best_reset = 0, 0
    for i in range(n):
        if rem[i] != min(rem):
            continue
        reset = (min(counted[i]) + 1) * g[i] + w[i] - now if counted[i] else 0
        if best == 0 or reset >= best_reset:
            best, best_reset = i + 1, reset
    return int(allowed), lims[best - 1], rem[best - 1], best_reset, retry, best


@dataclass
class Model:
    """The sub-bucket algorithm restated naively: a dict of buckets per window."""

    buckets: list[dict[int, int]] = field(default_factory=lambda: [{}, {}, {}])

    def check(self, limits: Limits, now: int, cost: int) -> tuple[int, int, int, int, int, int]:
        return model_check(self.buckets, (limits.minute, limits.hour, limits.day), now, cost)


# -- reply shapes and headers ------------------------------------------------------------------


async def test_script_starts_with_shebang() -> None:
    assert GATE_LUA_PATH.read_text(encoding="utf-8").split("\n", 1)[0] == "#!lua"


async def test_admit_counts_down(gate: Gate, redis_client: redis.asyncio.Redis) -> None:
    limits = Limits(3, 100, 1000)
    got = [await gate.check("a", limits, now_ms=T0 + i) for i in range(3)]
    # the first request's 1 s bucket leaves the minute window at its end + 60 s
    reset_s = math.ceil(((T0 // 1000 + 1) * 1000 + 60_000 - T0) / 1000)
    assert got == [
        Admission(True, 3, 2, reset_s, 0, None),
        Admission(True, 3, 1, reset_s, 0, None),
        Admission(True, 3, 0, reset_s, 0, None),
    ]
    reply = await raw(redis_client, gate, "a", limits, T0 + 5)
    drop = (T0 // 1000 + 1) * 1000 + 60_000 - (T0 + 5)
    assert reply == [0, 3, 0, drop, drop, 1, None]


async def test_tightest_window_is_reported(gate: Gate, redis_client: redis.asyncio.Redis) -> None:
    # the hour window has the least room left, so its numbers go into the headers
    reply = await raw(redis_client, gate, "a", Limits(10, 2, 100), T0)
    assert reply[:4] == [1, 2, 1, (T0 // 60_000 + 1) * 60_000 + 3_600_000 - T0]
    assert reply[4:] == [0, 2, None]
    reply = await raw(redis_client, gate, "b", Limits(10, 20, 3), T0)
    assert reply[1:3] == [3, 2] and reply[5] == 3


async def test_server_clock(gate: Gate) -> None:
    # no override: the server's TIME; a fresh bucket drops out after (60 s, 61 s]
    res = await gate.check("a", Limits(5, 10, 20))
    assert res == Admission(True, 5, 4, 61, 0, None)


async def test_reject_writes_nothing(gate: Gate, redis_client: redis.asyncio.Redis) -> None:
    limits = Limits(2, 100, 1000)
    for i in range(2):
        assert (await gate.check("a", limits, now_ms=T0 + i * 1500)).allowed
    before = await snapshot(redis_client, "a")
    for dt in (3000, 3001, 40_000):
        res = await gate.check("a", limits, now_ms=T0 + dt)
        assert not res.allowed and res.remaining == 0 and res.retry_after_s >= 1
        assert await snapshot(redis_client, "a") == before
    # with the minute's stale buckets pending deletion: a rejection still deletes nothing
    limits = Limits(100, 2, 1000)
    res = await gate.check("a", limits, now_ms=T0 + 600_000)
    assert not res.allowed
    assert await snapshot(redis_client, "a") == before


async def test_cost_and_invalid_arguments(gate: Gate, redis_client: redis.asyncio.Redis) -> None:
    limits = Limits(5, 100, 1000)
    assert (await gate.check("a", limits, cost=4, now_ms=T0)).remaining == 1
    assert not (await gate.check("a", limits, cost=2, now_ms=T0)).allowed
    assert (await gate.check("a", limits, cost=1, now_ms=T0)).remaining == 0
    with pytest.raises(ValueError):
        await gate.check("a", limits, cost=0)
    with pytest.raises(ResponseError, match="cost must be"):
        await raw(redis_client, gate, "a", limits, T0, cost=0)
    with pytest.raises(ResponseError, match="limit 2 is not a number"):
        await redis_client.evalsha(gate.sha, 3, *keys.limiter_keys("a"), 5, "x", 9, 1, "1", T0)


async def test_cost_above_limit_never_fits(gate: Gate, redis_client: redis.asyncio.Redis) -> None:
    # nothing counted, nothing to wait for: the window's own length is the only honest hint
    reply = await raw(redis_client, gate, "a", Limits(0, 10, 10), T0)
    assert reply == [0, 0, 0, 0, 60_000, 1, None]
    res = await gate.check("a", Limits(5, 10, 0), now_ms=T0)
    assert (res.allowed, res.limit, res.retry_after_s) == (False, 0, 86_400)


# -- exact Retry-After -------------------------------------------------------------------------


async def probe_retry(
    r: redis.asyncio.Redis, gate: Gate, org: str, limits: Limits, t: int, cost: int = 1
) -> int:
    """Reject at t, reject again 1 ms before Retry-After, admit exactly at it."""
    reply = await raw(r, gate, org, limits, t, cost=cost)
    assert reply[0] == 0
    retry_ms = reply[4]
    assert retry_ms > 0
    res = await gate.check(org, limits, cost=cost, now_ms=t)
    assert res.retry_after_s == max(1, math.ceil(retry_ms / 1000))
    assert (await raw(r, gate, org, limits, t + retry_ms - 1, cost=cost))[0] == 0
    assert (await raw(r, gate, org, limits, t + retry_ms, cost=cost))[0] == 1
    return retry_ms


async def test_retry_after_minute_exact(gate: Gate, redis_client: redis.asyncio.Redis) -> None:
    limits = Limits(5, 1000, 1000)
    for dt in (0, 0, 1500, 2500, 7000):
        assert (await gate.check("a", limits, now_ms=T0 + dt)).allowed
    # both requests of T0's 1 s bucket leave together, 60 s after that bucket ends
    retry = await probe_retry(redis_client, gate, "a", limits, T0 + 9000)
    assert retry == (T0 // 1000 + 1) * 1000 + 60_000 - (T0 + 9000)


async def test_retry_after_needs_several_buckets(
    gate: Gate, redis_client: redis.asyncio.Redis
) -> None:
    limits = Limits(6, 1000, 1000)
    for dt in (0, 1000, 2000, 3000, 4000, 5000):
        assert (await gate.check("a", limits, now_ms=T0 + dt)).allowed
    # a request costing 3 fits once the three oldest buckets dropped out
    retry = await probe_retry(redis_client, gate, "a", limits, T0 + 30_000, cost=3)
    assert retry == (T0 // 1000 + 3) * 1000 + 60_000 - (T0 + 30_000)


async def test_hour_and_day_reject_on_their_own(
    gate: Gate, redis_client: redis.asyncio.Redis
) -> None:
    hour = Limits(100, 3, 1000)
    for dt in (0, 120_000, 600_000):
        assert (await gate.check("h", hour, now_ms=T0 + dt)).allowed
    res = await gate.check("h", hour, now_ms=T0 + 900_000)
    assert (res.allowed, res.limit, res.remaining) == (False, 3, 0)
    retry = await probe_retry(redis_client, gate, "h", hour, T0 + 900_000)
    assert retry == (T0 // 60_000 + 1) * 60_000 + 3_600_000 - (T0 + 900_000)

    day = Limits(100, 100, 2)
    for dt in (0, 5 * 3_600_000):
        assert (await gate.check("d", day, now_ms=T0 + dt)).allowed
    retry = await probe_retry(redis_client, gate, "d", day, T0 + 10 * 3_600_000)
    assert retry == (T0 // 900_000 + 1) * 900_000 + 86_400_000 - (T0 + 10 * 3_600_000)


async def test_retry_after_is_max_over_windows(
    gate: Gate, redis_client: redis.asyncio.Redis
) -> None:
    limits = Limits(2, 4, 1000)
    for dt in (0, 1000, 120_000, 121_000):
        assert (await gate.check("a", limits, now_ms=T0 + dt)).allowed
    # at +125 s the minute window is full (its oldest bucket leaves at ~+181 s) and so is the
    # hour (its oldest leaves at ~+1 h): the hour decides, and is the reported window
    t = T0 + 125_000
    reply = await raw(redis_client, gate, "a", limits, t)
    hour_retry = (T0 // 60_000 + 1) * 60_000 + 3_600_000 - t
    assert reply == [0, 4, 0, hour_retry, hour_retry, 2, None]
    await probe_retry(redis_client, gate, "a", limits, t)


# -- invariants over long random sequences -----------------------------------------------------


async def test_random_sequence_matches_model_and_brute_force(
    gate: Gate, redis_client: redis.asyncio.Redis
) -> None:
    rng = random.Random(20260101)
    limits = Limits(7, 40, 150)
    lims = (limits.minute, limits.hour, limits.day)
    model = Model()
    admitted: list[tuple[int, int]] = []  # (time, cost), in time order
    t, probes = T0, 0
    rejected_by: set[int] = set()
    pending: list[tuple[int, int, int]] = []  # scheduled (time, cost, expected allowed)
    for _ in range(4000):
        if pending:
            t, cost, expect = pending.pop(0)
        else:
            # bursts fill the minute, steady traffic the hour and day, rare gaps empty them
            x = rng.random()
            scale = 50 if x < 0.4 else 3000 if x < 0.7 else 120_000 if x < 0.9 else 1_800_000
            if x > 0.995:
                scale = 2 * 86_400_000
            t += rng.randrange(0, scale)
            cost, expect = rng.choice((1, 1, 1, 2, 3)), -1
        reply = await raw(redis_client, gate, "p", limits, t, cost=cost)
        assert tuple(reply[:6]) == model.check(limits, t, cost), (t, cost)
        assert reply[6] is None
        if expect != -1:
            assert reply[0] == expect
        if reply[0]:
            admitted.append((t, cost))
            continue
        rejected_by.add(reply[5])
        if not pending and rng.random() < 0.3:
            # exactness: rejected 1 ms before Retry-After, admitted exactly at it
            probes += 1
            pending = [(t + reply[4] - 1, cost, 0), (t + reply[4], cost, 1)]
    assert probes > 50 and len(admitted) > 1000
    assert rejected_by == {1, 2, 3}

    times = [a[0] for a in admitted]
    prefix = [0]
    for _, c in admitted:
        prefix.append(prefix[-1] + c)
    for j, now in enumerate(times):
        for i in range(3):
            # everything admitted in the closed interval [now - W, now], now included
            first = bisect.bisect_left(times, now - W_MS[i])
            last = bisect.bisect_right(times, now, lo=j)
            assert prefix[last] - prefix[first] <= lims[i], (now, i)
    # keys stay pruned: never more buckets than a window spans, plus the three bookkeeping fields
    for k, w, g in zip(keys.limiter_keys("p"), W_MS, G_MS, strict=True):
        assert await redis_client.hlen(k) <= w // g + 1 + 3


async def test_clock_step_back_never_admits_more(gate: Gate) -> None:
    limits = Limits(3, 100, 1000)
    assert (await gate.check("a", limits, now_ms=T0 + 30_000)).allowed
    # an earlier clock (failover to a replica running behind) still sees that request
    assert (await gate.check("a", limits, now_ms=T0)).remaining == 1
    assert (await gate.check("a", limits, now_ms=T0 + 1)).remaining == 0
    assert not (await gate.check("a", limits, now_ms=T0 + 2)).allowed
    # the back-dated requests were counted in the newest bucket, so they leave with it
    assert not (await gate.check("a", limits, now_ms=T0 + 89_000)).allowed
    assert (await gate.check("a", limits, now_ms=T0 + 91_000)).remaining == 2


async def test_idle_org_starts_fresh(gate: Gate, redis_client: redis.asyncio.Redis) -> None:
    limits = Limits(5, 50, 500)
    for dt in range(0, 3_600_000, 60_000):
        await gate.check("a", limits, now_ms=T0 + dt)
    res = await gate.check("a", limits, now_ms=T0 + 3 * 86_400_000)
    assert (res.remaining, res.limit) == (4, 5)
    for k in keys.limiter_keys("a"):
        assert await redis_client.hlen(k) == 4


async def test_concurrent_checks_admit_exactly_the_limit(gate: Gate) -> None:
    limits = Limits(5, 100, 1000)
    results = await asyncio.gather(*(gate.check("a", limits) for _ in range(20)))
    assert sum(r.allowed for r in results) == 5
    assert sorted(r.remaining for r in results if r.allowed) == [0, 1, 2, 3, 4]
    assert all(r.retry_after_s >= 1 for r in results if not r.allowed)


# -- cache lookup ------------------------------------------------------------------------------


async def test_cache_miss_and_hit(gate: Gate, redis_client: redis.asyncio.Redis) -> None:
    ck = keys.cache_key("a", "chat", "ab" * 16)
    limits = Limits(5, 100, 1000)
    assert (await gate.check("a", limits, ck, now_ms=T0)).cached is None
    value = b"\x00\xff\xfe zstd \x28\xb5\x2f\xfd \x80\n"
    await redis_client.set(ck, value, ex=60)
    res = await gate.check("a", limits, ck, now_ms=T0)
    assert res.cached == value
    assert res.remaining == 3  # the hit counted
    assert (await raw(redis_client, gate, "a", limits, T0, cache_key=ck))[6] == value


async def test_rejected_request_never_reads_cache(
    gate: Gate, redis_client: redis.asyncio.Redis
) -> None:
    ck = keys.cache_key("a", "chat", "cd" * 16)
    await redis_client.set(ck, b"cached", ex=60)
    limits = Limits(1, 100, 1000)
    assert (await gate.check("a", limits, ck, now_ms=T0)).cached == b"cached"
    await redis_client.config_resetstat()
    res = await gate.check("a", limits, ck, now_ms=T0)
    assert not res.allowed and res.cached is None
    assert "get" not in await commandstats(redis_client)


async def test_uncounted_hits(gate: Gate, redis_client: redis.asyncio.Redis) -> None:
    ck = keys.cache_key("a", "chat", "ef" * 16)
    limits = Limits(2, 100, 1000)
    await redis_client.set(ck, b"hit", ex=60)
    for _ in range(5):
        res = await gate.check("a", limits, ck, count_hits=False, now_ms=T0)
        assert res == Admission(True, 2, 2, 0, 0, b"hit")
    # the limit is untouched by those hits, and a full window does not stop them either
    assert (await gate.check("a", limits, now_ms=T0)).remaining == 1
    assert (await gate.check("a", limits, now_ms=T0)).remaining == 0
    before = await snapshot(redis_client, "a")
    res = await gate.check("a", limits, ck, count_hits=False, now_ms=T0 + 1)
    assert (res.allowed, res.cached, res.remaining, res.retry_after_s) == (True, b"hit", 0, 0)
    assert res.reset_s == math.ceil(((T0 // 1000 + 1) * 1000 + 60_000 - T0 - 1) / 1000)
    assert await snapshot(redis_client, "a") == before
    # a miss with count_hits=False is an ordinary, limited request
    miss = keys.cache_key("a", "chat", "00" * 16)
    res = await gate.check("a", limits, miss, count_hits=False, now_ms=T0 + 2)
    assert not res.allowed and res.cached is None
    res = await gate.check("b", limits, miss, count_hits=False, now_ms=T0 + 2)
    assert (res.allowed, res.remaining, res.cached) == (True, 1, None)


async def test_hit_is_one_command(gate: Gate, redis_client: redis.asyncio.Redis) -> None:
    ck = keys.cache_key("a", "chat", "12" * 16)
    await redis_client.set(ck, b"v", ex=60)
    limits = Limits(100, 3000, 50000)
    await gate.check("a", limits, ck)  # warm: the keys exist, as in steady state
    await redis_client.config_resetstat()
    assert (await gate.check("a", limits, ck)).cached == b"v"
    stats = await commandstats(redis_client)
    assert stats.pop("evalsha") == 1
    assert stats.pop("config|resetstat") == 1
    assert stats.pop("get") == 1  # the script's own cache read
    # everything else ran inside the script: its hash reads and writes, nothing client-side
    assert set(stats) <= {"hmget", "hget", "hset", "hdel", "del", "time"}, stats


async def test_noscript_reloads_once(gate: Gate, redis_client: redis.asyncio.Redis) -> None:
    limits = Limits(5, 100, 1000)
    await redis_client.script_flush()
    await redis_client.config_resetstat()
    assert (await gate.check("a", limits, now_ms=T0)).remaining == 4
    assert (await gate.check("a", limits, now_ms=T0)).remaining == 3
    stats = await commandstats(redis_client)
    assert stats["script|load"] == 1
    # a Gate that never ran load() gets there by the same path
    await redis_client.script_flush()
    fresh = Gate(redis_client)
    assert (await fresh.check("a", limits, now_ms=T0)).remaining == 2


async def test_legacy_load_without_shebang(redis_client: redis.asyncio.Redis) -> None:
    source = GATE_LUA_PATH.read_text(encoding="utf-8")
    stripped = _strip_shebang(source)
    assert stripped.startswith("\n--[[") and stripped.count("\n") == source.count("\n")

    class Redis62:
        """Rejects the shebang the way Redis 6.2 compiles it."""

        async def script_load(self, src: str) -> str:
            if src.startswith("#!"):
                raise ResponseError(
                    "Error compiling script (new function): user_script:1: "
                    "unexpected symbol near '#'"
                )
            sha: str = await redis_client.script_load(src)
            return sha

        def __getattr__(self, name: str) -> Any:
            return getattr(redis_client, name)

    legacy = Gate(Redis62())  # type: ignore[arg-type]
    await legacy.load()
    assert (await legacy.check("a", Limits(2, 10, 10), now_ms=T0)).remaining == 1


# -- footprint ---------------------------------------------------------------------------------


async def test_saturated_org_footprint(gate: Gate, redis_client: redis.asyncio.Redis) -> None:
    """Every bucket of all three windows in use, at the default limits: <= 2 KB, no TTL."""
    limits = Limits(100, 3000, 50000)
    end = T0 + 2 * 86_400_000
    calls: list[tuple[int, int]] = []
    # the day before the last hour: two requests of cost 100 per 15-minute bucket
    calls += [(t, 100) for t in range(end - 86_400_000, end - 3_660_000, 450_000)]
    # the last hour: one request of cost 30 a minute, then one of cost 1 a second
    calls += [(t, 30) for t in range(end - 3_600_000, end - 120_000, 60_000)]
    calls += [(t, 1) for t in range(end - 61_000, end + 1, 1000)]
    for t, cost in calls:
        assert (await gate.check("s", limits, cost=cost, now_ms=t)).allowed, t
    ks = keys.limiter_keys("s")
    assert [await redis_client.hlen(k) for k in ks] == [61 + 3, 61 + 3, 97 + 3]
    usage = [await redis_client.memory_usage(k, samples=0) or 0 for k in ks]
    assert sum(usage) <= 2048, usage
    assert [await redis_client.ttl(k) for k in ks] == [-1, -1, -1]


# -- API-key windows (six in one call) ---------------------------------------------------------


def six_keys(org: str, key_id: str) -> tuple[str, ...]:
    return (*keys.limiter_keys(org), *keys.key_limiter_keys(org, key_id))


async def raw6(
    r: redis.asyncio.Redis,
    gate: Gate,
    org: str,
    limits: Limits,
    key_id: str,
    key_limits: Limits,
    now_ms: int,
    *,
    cost: int = 1,
    cache_key: str | None = None,
    count_hits: bool = True,
) -> list[Any]:
    """The script's reply to a six-window call, as is."""
    ks = six_keys(org, key_id)
    if cache_key is not None:
        ks = (*ks, cache_key)
    argv = (
        limits.minute,
        limits.hour,
        limits.day,
        cost,
        "1" if count_hits else "0",
        now_ms,
        6,
        key_limits.minute,
        key_limits.hour,
        key_limits.day,
    )
    reply: list[Any] = await r.evalsha(gate.sha, len(ks), *ks, *argv)
    return reply


async def snapshot6(r: redis.asyncio.Redis, org: str, key_ids: tuple[str, ...]) -> list[Any]:
    ks = [*keys.limiter_keys(org)]
    for k in key_ids:
        ks += keys.key_limiter_keys(org, k)
    return [(await r.dump(k), await r.hgetall(k)) for k in ks]




async def test_key_limiter_keys_share_the_org_slot() -> None:
    ks = six_keys("o1", "k1")
    assert ks[3:] == ("cog:{org:o1}:rl:k:k1:m", "cog:{org:o1}:rl:k:k1:h", "cog:{org:o1}:rl:k:k1:d")
    assert len(set(ks)) == 6
    tags = {k[k.index("{") : k.index("}") + 1] for k in (*ks, keys.cache_key("o1", "chat", "ab"))}
    assert tags == {"{org:o1}"}


async def test_key_limit_tighter_rejects_and_writes_nothing(
    gate: Gate, redis_client: redis.asyncio.Redis
) -> None:
    org, key = Limits(100, 1000, 10_000), Limits(3, 50, 500)
    got = [await gate.check("a", org, key_id="k", key_limits=key, now_ms=T0 + i) for i in range(3)]
    assert [(r.allowed, r.limit, r.remaining) for r in got] == [
        (True, 3, 2),
        (True, 3, 1),
        (True, 3, 0),
    ]
    before = await snapshot6(redis_client, "a", ("k",))
    assert all(h for _, h in before)  # all six hashes exist and counted the request
    drop = (T0 // 1000 + 1) * 1000 + 60_000
    for dt in (3, 1000, 30_000):
        reply = await raw6(redis_client, gate, "a", org, "k", key, T0 + dt)
        assert reply == [0, 3, 0, drop - T0 - dt, drop - T0 - dt, 4, None]
        res = await gate.check("a", org, key_id="k", key_limits=key, now_ms=T0 + dt)
        assert (res.allowed, res.limit, res.remaining) == (False, 3, 0)
        assert res.retry_after_s == math.ceil((drop - T0 - dt) / 1000)
        assert await snapshot6(redis_client, "a", ("k",)) == before
    # the org itself still has room: a call without key limits is admitted
    assert (await gate.check("a", org, now_ms=T0 + 4)).remaining == 96
    # the key's hour window rejects on its own, with stale minute buckets pending: still no write
    key_h = Limits(100, 4, 500)
    assert (await gate.check("a", org, key_id="k", key_limits=key_h, now_ms=T0 + 5)).allowed
    before = await snapshot6(redis_client, "a", ("k",))
    reply = await raw6(redis_client, gate, "a", org, "k", key_h, T0 + 600_000)
    assert (reply[0], reply[1], reply[5]) == (0, 4, 5)
    assert await snapshot6(redis_client, "a", ("k",)) == before


async def test_org_limit_shared_by_keys(gate: Gate, redis_client: redis.asyncio.Redis) -> None:
    org, key = Limits(5, 1000, 10_000), Limits(4, 1000, 10_000)
    a = [await gate.check("o", org, key_id="A", key_limits=key, now_ms=T0 + i) for i in range(5)]
    assert [r.allowed for r in a] == [True, True, True, True, False]
    # key A's own minute window (limit 4) rejects while the org (limit 5) still has room
    reply = await raw6(redis_client, gate, "o", org, "A", key, T0 + 10)
    assert (reply[0], reply[1], reply[2], reply[5]) == (0, 4, 0, 4)
    # key B has room in its own windows but shares the org's: one more, then the org rejects
    b1 = await gate.check("o", org, key_id="B", key_limits=key, now_ms=T0 + 20)
    assert (b1.allowed, b1.limit, b1.remaining) == (True, 5, 0)
    before = await snapshot6(redis_client, "o", ("A", "B"))
    reply = await raw6(redis_client, gate, "o", org, "B", key, T0 + 30)
    assert (reply[0], reply[1], reply[2], reply[5]) == (0, 5, 0, 1)
    assert await snapshot6(redis_client, "o", ("A", "B")) == before
    assert [int(await redis_client.hget(k, "t") or 0) for k in six_keys("o", "B")] == [5] * 3 + [
        1
    ] * 3
    # the org's windows count every key's requests; each key's only its own
    assert [int(await redis_client.hget(k, "t") or 0) for k in six_keys("o", "A")[3:]] == [4] * 3


async def test_org_limit_tighter_rejects_at_org(
    gate: Gate, redis_client: redis.asyncio.Redis
) -> None:
    org, key = Limits(2, 1000, 10_000), Limits(10, 1000, 10_000)
    for i in range(2):
        assert (await gate.check("a", org, key_id="k", key_limits=key, now_ms=T0 + i)).allowed
    before = await snapshot6(redis_client, "a", ("k",))
    res = await gate.check("a", org, key_id="k", key_limits=key, now_ms=T0 + 2)
    assert (res.allowed, res.limit, res.remaining) == (False, 2, 0)
    assert (await raw6(redis_client, gate, "a", org, "k", key, T0 + 2))[5] == 1
    assert await snapshot6(redis_client, "a", ("k",)) == before


async def probe_retry6(
    r: redis.asyncio.Redis, gate: Gate, org: str, limits: Limits, key_id: str, key: Limits, t: int
) -> list[Any]:
    """Reject at t, reject again 1 ms before Retry-After, admit exactly at it."""
    reply = await raw6(r, gate, org, limits, key_id, key, t)
    assert reply[0] == 0 and reply[4] > 0
    res = await gate.check(org, limits, key_id=key_id, key_limits=key, now_ms=t)
    assert res.retry_after_s == max(1, math.ceil(reply[4] / 1000))
    assert (await raw6(r, gate, org, limits, key_id, key, t + reply[4] - 1))[0] == 0
    assert (await raw6(r, gate, org, limits, key_id, key, t + reply[4]))[0] == 1
    return reply


@pytest.mark.parametrize(
    ("org", "key", "window"),
    [
        # the org's minute and the key's hour both reject: the key's hour decides
        (Limits(2, 1000, 10_000), Limits(1000, 4, 10_000), 5),
        # the key's minute and the org's hour both reject: the org's hour decides
        (Limits(1000, 4, 10_000), Limits(2, 1000, 10_000), 2),
    ],
)
async def test_retry_after_exact_over_six_windows(
    gate: Gate, redis_client: redis.asyncio.Redis, org: Limits, key: Limits, window: int
) -> None:
    for dt in (0, 1000, 120_000, 121_000):
        assert (await gate.check("a", org, key_id="k", key_limits=key, now_ms=T0 + dt)).allowed
    t = T0 + 125_000
    hour_retry = (T0 // 60_000 + 1) * 60_000 + 3_600_000 - t
    reply = await probe_retry6(redis_client, gate, "a", org, "k", key, t)
    assert reply == [0, 4, 0, hour_retry, hour_retry, window, None]


async def test_random_six_windows_match_model_and_brute_force(
    gate: Gate, redis_client: redis.asyncio.Redis
) -> None:
    rng = random.Random(20260102)
    org = Limits(9, 50, 200)
    key_lims = {"A": Limits(5, 30, 120), "B": Limits(7, 25, 1000), "C": Limits(100, 100, 45)}
    org_buckets: list[dict[int, int]] = [{}, {}, {}]
    key_buckets: dict[str, list[dict[int, int]]] = {k: [{}, {}, {}] for k in key_lims}
    admitted: list[tuple[int, int, str]] = []
    rejected_by: set[int] = set()
    t, probes = T0, 0
    pending: list[tuple[int, int, str, int]] = []
    for _ in range(3000):
        if pending:
            t, cost, k, expect = pending.pop(0)
        else:
            x = rng.random()
            scale = 50 if x < 0.4 else 3000 if x < 0.7 else 120_000 if x < 0.9 else 1_800_000
            if x > 0.995:
                scale = 2 * 86_400_000
            t += rng.randrange(0, scale)
            cost, k, expect = rng.choice((1, 1, 1, 2, 3)), rng.choice("ABC"), -1
        kl = key_lims[k]
        lims = (org.minute, org.hour, org.day, kl.minute, kl.hour, kl.day)
        reply = await raw6(redis_client, gate, "p", org, k, kl, t, cost=cost)
        expected = model_check(org_buckets + key_buckets[k], lims, t, cost)
        assert tuple(reply[:6]) == expected, (t, cost, k)
        if expect != -1:
            assert reply[0] == expect
        if reply[0]:
            admitted.append((t, cost, k))
            continue
        rejected_by.add(reply[5])
        if not pending and rng.random() < 0.3:
            probes += 1
            pending = [(t + reply[4] - 1, cost, k, 0), (t + reply[4], cost, k, 1)]
    assert probes > 30 and len(admitted) > 500
    assert rejected_by == {1, 2, 3, 4, 5, 6}

    def brute(events: list[tuple[int, int]], lims: tuple[int, int, int]) -> None:
        for now, _ in events:
            for i in range(3):
                n = sum(c for ts, c in events if now - W_MS[i] <= ts <= now)
                assert n <= lims[i], (now, i)

    brute([(ts, c) for ts, c, _ in admitted], (org.minute, org.hour, org.day))
    for k, kl in key_lims.items():
        brute([(ts, c) for ts, c, kk in admitted if kk == k], (kl.minute, kl.hour, kl.day))


async def test_concurrent_checks_admit_exactly_the_key_limit(
    gate: Gate, redis_client: redis.asyncio.Redis
) -> None:
    org, key = Limits(100, 1000, 10_000), Limits(5, 100, 1000)
    results = await asyncio.gather(
        *(gate.check("a", org, key_id="k", key_limits=key) for _ in range(20))
    )
    assert sum(r.allowed for r in results) == 5
    assert sorted(r.remaining for r in results if r.allowed) == [0, 1, 2, 3, 4]
    assert all(r.retry_after_s >= 1 and r.limit == 5 for r in results if not r.allowed)
    assert [int(await redis_client.hget(k, "t") or 0) for k in six_keys("a", "k")] == [5] * 6


async def test_key_windows_with_cache(gate: Gate, redis_client: redis.asyncio.Redis) -> None:
    ck = keys.cache_key("a", "chat", "9a" * 16)
    org, key = Limits(100, 1000, 10_000), Limits(2, 100, 1000)
    await redis_client.set(ck, b"v", ex=60)
    res = await gate.check("a", org, ck, key_id="k", key_limits=key, now_ms=T0)
    assert (res.allowed, res.cached, res.remaining) == (True, b"v", 1)  # the hit counted
    # an uncounted hit skips all six windows, even a full key window
    assert (await gate.check("a", org, key_id="k", key_limits=key, now_ms=T0)).remaining == 0
    before = await snapshot6(redis_client, "a", ("k",))
    res = await gate.check("a", org, ck, count_hits=False, key_id="k", key_limits=key, now_ms=T0)
    assert (res.allowed, res.cached, res.remaining) == (True, b"v", 0)
    # a counted hit on a full key window: rejected, cache never read, nothing written
    await redis_client.config_resetstat()
    res = await gate.check("a", org, ck, key_id="k", key_limits=key, now_ms=T0)
    assert not res.allowed and res.cached is None
    assert "get" not in await commandstats(redis_client)
    assert await snapshot6(redis_client, "a", ("k",)) == before


async def test_key_id_without_key_limits_is_three_windows(
    gate: Gate, redis_client: redis.asyncio.Redis
) -> None:
    res = await gate.check("a", Limits(5, 10, 20), key_id="k", now_ms=T0)
    assert (res.allowed, res.remaining) == (True, 4)
    assert await redis_client.exists(*keys.key_limiter_keys("a", "k")) == 0
    with pytest.raises(ValueError, match="key_id"):
        await gate.check("a", Limits(5, 10, 20), key_limits=Limits(1, 1, 1))


async def test_six_window_invalid_arguments(gate: Gate, redis_client: redis.asyncio.Redis) -> None:
    ks = six_keys("a", "k")
    with pytest.raises(ResponseError, match="limit 5 is not a number"):
        await redis_client.evalsha(gate.sha, 6, *ks, 5, 5, 5, 1, "1", T0, 6, 5, "x", 5)
    with pytest.raises(ResponseError, match="window count must be 3 or 6"):
        await redis_client.evalsha(gate.sha, 6, *ks, 5, 5, 5, 1, "1", T0, 4, 5, 5, 5)
    with pytest.raises(ResponseError, match="6 window keys expected"):
        await redis_client.evalsha(gate.sha, 3, *ks[:3], 5, 5, 5, 1, "1", T0, 6, 5, 5, 5)
    # an explicit "3" (or "") means the version 1 layout: KEYS[4] is the cache key
    ck = keys.cache_key("a", "chat", "77" * 16)
    await redis_client.set(ck, b"c", ex=60)
    for n in ("3", ""):
        reply = await redis_client.evalsha(gate.sha, 4, *ks[:3], ck, 5, 5, 5, 1, "1", T0, n)
        assert reply[0] == 1 and reply[6] == b"c"
    assert await redis_client.exists(*ks[3:]) == 0


async def test_six_window_hit_is_one_command(gate: Gate, redis_client: redis.asyncio.Redis) -> None:
    ck = keys.cache_key("a", "chat", "34" * 16)
    await redis_client.set(ck, b"v", ex=60)
    org, key = Limits(100, 3000, 50000), Limits(60, 1000, 10_000)
    await gate.check("a", org, ck, key_id="k", key_limits=key)  # warm
    await redis_client.config_resetstat()
    res = await gate.check("a", org, ck, key_id="k", key_limits=key)
    assert (res.cached, res.limit, res.remaining) == (b"v", 60, 58)
    stats = await commandstats(redis_client)
    assert stats.pop("evalsha") == 1
    assert stats.pop("config|resetstat") == 1
    assert stats.pop("get") == 1
    assert set(stats) <= {"hmget", "hget", "hset", "hdel", "del", "time"}, stats


async def test_epoch_is_created_on_admission_and_survives_until_the_data_does(redis_client):
    gate = Gate(redis_client)
    await gate.load()
    limits = Limits(2, 100, 1000)
    first = await gate.check("ep", limits, want_epoch=True, now_ms=T0)
    assert first.allowed and first.epoch == T0
    assert await redis_client.ttl(keys.epoch_key("ep")) == -1  # no TTL, like limiter keys
    again = await gate.check("ep", limits, want_epoch=True, now_ms=T0 + 500)
    assert again.epoch == T0
    rejected = await gate.check("ep", limits, want_epoch=True, now_ms=T0 + 600)
    assert not rejected.allowed and rejected.epoch == T0
    plain = await gate.check("ep", BIG)
    assert plain.epoch is None  # not asked
    await redis_client.flushall()
    # A rejection never writes, so a lost epoch is only recreated by an admission.
    r = await gate.check("ep2", Limits(0, 0, 0), want_epoch=True, now_ms=T0)
    assert not r.allowed and r.epoch is None
    assert await redis_client.exists(keys.epoch_key("ep2")) == 0
    r = await gate.check("ep", limits, "cog:{org:ep}:c:chat:x", want_epoch=True,
                         now_ms=T0 + 10_000)
    assert r.allowed and r.epoch == T0 + 10_000 and r.cached is None
    await redis_client.set("cog:{org:ep}:c:chat:x", b"v")
    r = await gate.check("ep", BIG, "cog:{org:ep}:c:chat:x", want_epoch=True,
                         key_id="k1", key_limits=Limits(5, 5, 5), now_ms=T0 + 20_000)
    assert r.cached == b"v" and r.epoch == T0 + 10_000
