"""Microbenchmarks of the hot path's pieces (pytest-benchmark), kept out of the default run.

    .venv/bin/pytest -m bench -p no:cacheprovider bench          # make bench-micro
    .venv/bin/pytest -m bench -p no:cacheprovider bench/test_micro.py --benchmark-columns \\
        min,median,mean,max,rounds

Each test times one piece the proxy runs per request: parsing the body and deriving the
cache key, the gate's Redis round trip (against a real Valkey started here), building the
response headers of a cache hit, and building the usage record of a miss. ``tests/conftest``
is not loaded for ``bench/``, so the fixtures here are self-contained.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from time import perf_counter
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
import uvloop

from cognitude.cache import cache_key
from cognitude.embedded import EmbeddedServices
from cognitude.gate.gate import Admission, Gate, Limits
from cognitude.hotpath.request import parse_doc
from cognitude.hotpath.respond import JSON_CT, RequestIds, limit_headers, timing
from cognitude.ledger.accounting import Accountant, RequestLog
from cognitude.ledger.pricing import load_catalog
from cognitude.ledger.usage import UsageRecord

pytestmark = pytest.mark.bench

ORG = "org_" + "0" * 24
KEY_ID = "key_" + "0" * 24
UNLIMITED = Limits(1_000_000_000, 1_000_000_000, 1_000_000_000)
GATE_CALLS_PER_ROUND = 100


def _chat_body_2kb() -> bytes:
    """A realistic ~2 KB chat request: system prompt, a few turns, common options."""
    system = ("You are a support assistant for an online bookshop. Answer briefly, cite the "
              "order number when there is one, and never invent delivery dates. ") * 6
    turns = [
        ("user", "Hi, I ordered three books last Tuesday (order 48213) and only two arrived. "
                 "The missing one is 'The Pragmatic Programmer'. What can I do?"),
        ("assistant", "Sorry about that. Order 48213 shipped in two parcels; the second one "
                      "left our warehouse on Thursday and should arrive within two days."),
        ("user", "It has been four days now. Tracking says 'label created' and nothing else. "
                 "Can you resend it or refund me? I need it for a course starting Monday."),
        ("assistant", "I can do either. A replacement ships today with express delivery at no "
                      "cost; a refund takes 3-5 business days to reach your card."),
        ("user", "Please send the replacement, and tell me how I will know it has shipped. "
                 "Also, will I have to return the first parcel if it turns up later?"),
    ]
    doc = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": system},
                     *({"role": r, "content": c} for r, c in turns)],
        "temperature": 0,
        "max_tokens": 256,
        "top_p": 1,
        "user": "customer-48213",
        "metadata": {"ticket": "T-99120", "channel": "web"},
    }
    body = orjson.dumps(doc)
    assert 1800 <= len(body) <= 2300, len(body)  # keep the "2 KB" honest if edited
    return body


BODY = _chat_body_2kb()
COMPLETION = orjson.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_700_000_000,
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant",
        "content": "Done: a replacement for order 48213 ships today by express. You will get "
                   "an e-mail with the tracking link; keep the first parcel if it arrives."}}],
    "usage": {"prompt_tokens": 412, "completion_tokens": 38, "total_tokens": 450},
})


# --------------------------------------------------------------------------- parse + key

def test_parse_and_cache_key(benchmark: Any) -> None:
    """``orjson.loads`` + ``cache_key.digest`` on a 2 KB chat body."""
    result = benchmark(lambda: cache_key.digest(orjson.loads(BODY)))
    assert len(result) == 32


def test_parse_validate_and_redis_key(benchmark: Any) -> None:
    """What the route really does: ``parse_doc`` (validation included) + the namespaced key."""
    result = benchmark(lambda: cache_key.redis_key(ORG, "chat", parse_doc(BODY, "chat")))
    assert ORG in result


# --------------------------------------------------------------------------- gate

@pytest.fixture(scope="module")
def valkey_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    services = EmbeddedServices(tmp_path_factory.mktemp("valkey"), postgres=False, fast=True)
    services.start()
    try:
        assert services.redis_url
        yield services.redis_url
    finally:
        services.stop()


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    # uvloop, like `cognitude serve`: the per-await cost depends on the loop.
    lp = uvloop.new_event_loop()
    try:
        yield lp
    finally:
        lp.close()


@pytest.fixture(scope="module")
def gate(valkey_url: str, loop: asyncio.AbstractEventLoop) -> Iterator[Gate]:
    # The proxy's client settings (app._redis_client): pooled, bytes replies.
    r = aioredis.Redis.from_url(valkey_url, decode_responses=False, max_connections=64)
    g = Gate(r)
    loop.run_until_complete(g.load())
    loop.run_until_complete(r.set(b"bench:cached", b"\x00" + COMPLETION))
    try:
        yield g
    finally:
        loop.run_until_complete(r.aclose())


def _gate_bench(benchmark: Any, loop: asyncio.AbstractEventLoop, gate: Gate,
                cache: str) -> Admission:
    async def calls() -> Admission:
        res = None
        for _ in range(GATE_CALLS_PER_ROUND):
            res = await gate.check(ORG, UNLIMITED, cache)
        assert res is not None
        return res

    loop.run_until_complete(calls())  # connect, warm the script cache
    # One round = 100 sequential awaits inside one loop entry, so run_until_complete's own
    # cost (tens of µs) is not charged to a ~100 µs round trip; per call = the times / 100.
    res = benchmark.pedantic(lambda: loop.run_until_complete(calls()), rounds=30,
                             warmup_rounds=2, iterations=1)
    stats = benchmark.stats.stats
    benchmark.extra_info["calls_per_round"] = GATE_CALLS_PER_ROUND
    benchmark.extra_info["per_call_median_us"] = round(stats.median / GATE_CALLS_PER_ROUND * 1e6, 1)
    benchmark.extra_info["per_call_min_us"] = round(stats.min / GATE_CALLS_PER_ROUND * 1e6, 1)
    return res


def test_gate_check_miss_x100(benchmark: Any, loop: asyncio.AbstractEventLoop,
                              gate: Gate) -> None:
    """``Gate.check``: three windows + cache GET of an absent key; times are per 100 calls."""
    res = _gate_bench(benchmark, loop, gate, "bench:absent")
    assert res.allowed and res.cached is None


def test_gate_check_hit_x100(benchmark: Any, loop: asyncio.AbstractEventLoop,
                             gate: Gate) -> None:
    """``Gate.check`` returning a ~400-byte cached value; times are per 100 calls."""
    res = _gate_bench(benchmark, loop, gate, "bench:cached")
    assert res.allowed and res.cached is not None


# --------------------------------------------------------------------------- headers

def test_hit_response_headers(benchmark: Any) -> None:
    """The header list of a cache hit, built as ``ProxyRoute._handle`` + ``_send_hit`` do
    (keep in step with cognitude/hotpath/respond.py)."""
    g = Admission(allowed=True, limit=1000, remaining=997, reset_s=60, retry_after_s=0,
                  cached=b"")
    next_id = RequestIds()
    model = "gpt-4o-mini"
    t0 = perf_counter()

    def build() -> list[tuple[bytes, bytes]]:
        rid = next_id()
        headers_ = limit_headers(g)
        routing = [(b"x-cognitude-model", model.encode()),
                   (b"x-cognitude-provider", b"mock"), *headers_]
        common = [(b"x-request-id", rid.encode()), *routing]
        timing_ = timing(0.00012, 0.0, perf_counter() - t0)
        return [JSON_CT, (b"content-length", str(len(COMPLETION)).encode()),
                (b"x-cognitude-cache", b"HIT"), *common, timing_]

    headers = benchmark(build)
    assert len(headers) == 10


# --------------------------------------------------------------------------- usage record

class _NullWriter:
    """Stands in for UsageWriter: ``submit`` is what the hot path calls (never awaits)."""

    def submit(self, record: UsageRecord) -> None:
        pass


def _miss_log() -> RequestLog:
    req = RequestLog(os.urandom(12).hex(), perf_counter(), "chat")
    req.org_id, req.key_id = ORG, KEY_ID
    req.model = req.model_used = "gpt-4o-mini"
    req.provider = "openai"
    req.cache_status = b"MISS"
    req.status = 200
    req.gate_s, req.upstream_s = 0.00012, 0.35
    req.end_user = "customer-48213"
    req.doc = orjson.loads(BODY)
    req.response = COMPLETION  # record() reads the token counts from its usage
    return req


def test_usage_record_of_a_miss(benchmark: Any) -> None:
    """``Accountant.record``: tokens from the response's usage, cost and baseline from the
    real price catalog, the UsageRecord tuple."""
    acct = Accountant(load_catalog(), _NullWriter())  # type: ignore[arg-type]
    req = _miss_log()
    rec = benchmark(acct.record, req)
    assert rec is not None and rec.prompt_tokens == 412 and rec.cost_micros


def test_usage_finish_of_a_miss(benchmark: Any) -> None:
    """``Accountant.finish``: the record plus the per-status counter and ``submit``."""
    acct = Accountant(load_catalog(), _NullWriter())  # type: ignore[arg-type]
    req = _miss_log()
    benchmark(acct.finish, req)
    assert sum(acct.requests.values()) >= 1
