"""The prompt facts the ledger keeps (hashes and sizes, never text): unit rules, and the
rows of real requests through the proxy."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from cognitude.cache.cache_key import digest
from cognitude.ledger.prompt_facts import prompt_facts
from tests.conftest import chat

SYSTEM = {"role": "system", "content": "You are a meticulous assistant. " * 10}


def test_the_prompt_hash_is_the_cache_digest_and_ignores_what_the_cache_ignores():
    doc = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    facts = prompt_facts(doc, None)
    assert facts.prompt_hash == digest(doc)
    assert prompt_facts({**doc, "user": "u1", "stream": True}, None).prompt_hash == \
        facts.prompt_hash
    assert prompt_facts(doc, f"cog:{{org:o}}:c:chat:{digest(doc)}").prompt_hash == \
        facts.prompt_hash
    assert prompt_facts({**doc, "temperature": 0.5}, None).prompt_hash != facts.prompt_hash


def test_the_prefix_is_everything_before_the_latest_user_message():
    ask = {"role": "user", "content": "What now?"}
    one = prompt_facts({"messages": [SYSTEM, ask]}, None)
    two = prompt_facts({"messages": [SYSTEM, {"role": "user", "content": "Different!"}]}, None)
    assert one.prefix_hash == two.prefix_hash is not None
    assert one.prefix_tokens == len(SYSTEM["content"]) // 4
    alone = prompt_facts({"messages": [ask]}, None)
    assert (alone.prefix_hash, alone.prefix_tokens) == (None, None)
    longer = prompt_facts({"messages": [SYSTEM, ask, {"role": "assistant", "content": "x"},
                                        {"role": "user", "content": [
                                            {"type": "text", "text": "and?"}]}]}, None)
    assert longer.prefix_hash != one.prefix_hash
    assert longer.prefix_tokens == (len(SYSTEM["content"]) + len("What now?") + 1) // 4


def test_max_tokens_prefers_max_completion_tokens_and_ignores_nonsense():
    assert prompt_facts({"max_tokens": 50}, None).max_tokens == 50
    assert prompt_facts({"max_tokens": 50, "max_completion_tokens": 70}, None).max_tokens == 70
    for bad in (0, -1, True, "100", 1.5):
        assert prompt_facts({"max_tokens": bad}, None).max_tokens is None


async def rows(dsn: str, ids: list[str]) -> list[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(100):
            got = await conn.fetch("SELECT * FROM usage_log WHERE request_id = ANY($1)"
                                   " ORDER BY ts", ids)
            if len(got) == len(ids):
                return got
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    raise AssertionError("usage rows missing")


async def test_repeats_paid_for_share_one_prompt_hash_in_the_ledger(client, org_factory,
                                                                   pg_dsn):
    org = await org_factory()
    body = {**chat("repeat me"), "messages": [SYSTEM, {"role": "user", "content": "repeat"}],
            "max_tokens": 40}
    ids = []
    for user in ("a", "b"):  # no-cache: both paid for upstream
        r = await client.post("/v1/chat/completions", json={**body, "user": user},
                              headers={**org.headers, "Cache-Control": "no-cache"})
        assert r.headers["x-cognitude-cache"] == "BYPASS"  # not read: paid for upstream
        ids.append(r.headers["x-request-id"])
    other = await client.post("/v1/chat/completions", headers=org.headers, json={
        **body, "messages": [SYSTEM, {"role": "user", "content": "something else"}]})
    ids.append(other.headers["x-request-id"])
    a, b, c = await rows(pg_dsn, ids)
    assert a["prompt_hash"] == b["prompt_hash"] != c["prompt_hash"]
    assert a["prefix_hash"] == b["prefix_hash"] == c["prefix_hash"] is not None
    assert a["prefix_tokens"] == len(SYSTEM["content"]) // 4
    assert (a["max_tokens"], c["max_tokens"]) == (40, 40)


async def test_embeddings_get_a_prompt_hash_and_no_prefix(client, org_factory, pg_dsn):
    org = await org_factory()
    r = await client.post("/v1/embeddings", headers=org.headers,
                          json={"model": "text-embedding-3-small", "input": "vector me"})
    (row,) = await rows(pg_dsn, [r.headers["x-request-id"]])
    assert row["prompt_hash"] and row["prefix_hash"] is None and row["max_tokens"] is None
