"""Usage-ledger rows for tests that need precise control over what is in ``usage_log``."""

from __future__ import annotations

import uuid
from datetime import datetime

import asyncpg

from cognitude.ledger.usage import COLUMNS, UsageRecord


def rec(org: str, ts: datetime, model: str | None = "gpt-4o-mini",
        provider: str | None = "openai", prompt: int = 10, completion: int = 5,
        cost: int | None = 100, baseline: int | None = 300, cache: str | None = "MISS",
        status: int = 200) -> UsageRecord:
    return UsageRecord(str(uuid.uuid4()), ts, org, "key-1", "/v1/chat/completions", model,
                       model, provider, "direct", prompt, completion, cost, baseline, cache,
                       status, None, False, 12.5, 10.0, 2.5, None)


async def insert(pool: asyncpg.Pool, rows: list[UsageRecord]) -> None:
    async with pool.acquire() as conn:
        await conn.copy_records_to_table("usage_log", records=rows, columns=COLUMNS)
