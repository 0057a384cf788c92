"""``GET /routing/stats``: what smart routing decided for an organization, and what it saved,
from the hourly rollup (``usage_hourly``, whose key carries the class and the route).

- ``decisions``: smart requests (route ``smart-<mode>:<class>``) by mode, class and the
  model that answered, with their cost and their baseline (what ``routing.baseline_model``,
  or the premium model smart-quality would pick, would have cost); ``saved_usd`` is
  baseline − cost, summed. Cache hits are in too (cost 0): a smart request's hit is still
  a routed request.
- ``by_class``: every chat request of the org by the classifier's class, smart or not, so
  the fixed-model traffic shows what routing could take over.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import asyncpg

from cognitude.ledger.maintenance import refresh_org

_DECISIONS = """
SELECT split_part(route, ':', 1) AS mode, complexity, model_used,
       sum(requests)::bigint AS requests, sum(cost_micros)::bigint AS cost,
       sum(baseline_cost_micros)::bigint AS baseline, sum(cache_hits)::bigint AS hits
FROM usage_hourly
WHERE org_id = $1 AND hour >= $2 AND hour < $3 AND route LIKE 'smart-%'
GROUP BY 1, 2, 3
ORDER BY 4 DESC, 1, 2, 3
"""
_BY_CLASS = """
SELECT complexity, (route LIKE 'smart-%') AS smart, sum(requests)::bigint AS requests,
       sum(cost_micros)::bigint AS cost
FROM usage_hourly
WHERE org_id = $1 AND hour >= $2 AND hour < $3 AND complexity <> ''
GROUP BY 1, 2
"""


def _usd(micros: int) -> float:
    return round(micros / 1_000_000, 6)


async def routing_stats(pool: asyncpg.Pool, org_id: str, *, start: date, end: date,
                        refresh: bool) -> dict[str, Any]:
    lo = datetime.combine(start, time(), UTC)
    hi = datetime.combine(end + timedelta(days=1), time(), UTC)
    async with pool.acquire() as conn:
        if refresh and hi > datetime.now(UTC) - timedelta(days=1):
            await refresh_org(conn, org_id)
        decisions = await conn.fetch(_DECISIONS, org_id, lo, hi)
        classes = await conn.fetch(_BY_CLASS, org_id, lo, hi)
    rows = [{"mode": r["mode"].removeprefix("smart-"), "class": r["complexity"] or None,
             "model": r["model_used"] or None, "requests": r["requests"],
             "cache_hits": r["hits"], "cost_usd": _usd(r["cost"]),
             "baseline_usd": _usd(r["baseline"]), "saved_usd": _usd(r["baseline"] - r["cost"])}
            for r in decisions]
    by_class: dict[str, dict[str, Any]] = {}
    for r in classes:
        entry = by_class.setdefault(r["complexity"], {"requests": 0, "smart_requests": 0,
                                                      "cost_usd": 0.0})
        entry["requests"] += r["requests"]
        entry["cost_usd"] = round(entry["cost_usd"] + _usd(r["cost"]), 6)
        if r["smart"]:
            entry["smart_requests"] += r["requests"]
    cost = sum(r["cost"] for r in decisions)
    baseline = sum(r["baseline"] for r in decisions)
    return {"start": start.isoformat(), "end": end.isoformat(),
            "smart_requests": sum(r["requests"] for r in decisions),
            "cost_usd": _usd(cost), "baseline_usd": _usd(baseline),
            "saved_usd": _usd(baseline - cost), "decisions": rows, "by_class": by_class}
