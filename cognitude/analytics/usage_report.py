"""``GET /analytics/usage``: an org's requests, tokens, cost, cache hits and savings over a
date range, grouped by day, model or provider, read from ``usage_hourly`` only.

Decisions:
- The org comes from the API key, never from a parameter: a key sees its own org only.
- Dates are UTC days, ``start`` and ``end`` inclusive; default: the last 7 days.
- Freshness: before reading, the endpoint recomputes the caller's recent hours
  (``maintenance.refresh_org``: one org, about the last hour, bounded), so requests made
  seconds ago are in the report; older hours are as fresh as the last maintenance round.
  That refresh writes, so it runs at most once per ``REFRESH_EVERY_S`` per org and replica
  (``RecentRefreshes``): a dashboard polling the endpoint, or a client hammering it, reads
  the rollup instead of rewriting it on every GET.
- Money is summed as integer micro-USD in SQL and converted at the edge:
  ``*_usd = round(micros / 1e6, 6)``, a JSON number with at most 6 decimals (exact: a
  double represents every 6-decimal amount below ~9e9 USD to that precision). The exact
  integers are returned too (``cost_micros``, ``savings_micros``) for programs that add
  them up.
- ``savings = baseline - cost``, where baseline is what the requested model would have
  cost (a cache hit costs 0, so it saves its whole baseline); rows with an unknown price
  count as no saving (see ``maintenance._AGG``).
- Groups: ``day`` lists every day of the range (zeros included, for charts); ``model`` and
  ``provider`` list the groups with traffic, ``key: null`` for requests that never reached
  a model (rate-limited, refused).
"""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from cognitude.ledger.maintenance import refresh_org

log = logging.getLogger("cognitude.analytics")

# A report is at most this stale for traffic of the last seconds (see the module doc).
REFRESH_EVERY_S = 2.0
MAX_TRACKED_ORGS = 10_000
MAX_RANGE_DAYS = 366
DEFAULT_DAYS = 7
GROUPS = ("day", "model", "provider")
_KEY_SQL = {
    "day": "(hour AT TIME ZONE 'UTC')::date",
    "model": "model_used",
    "provider": "provider",
}
# Sums are cast back to bigint: sum(bigint) is numeric, which asyncpg decodes to Decimal.
_REPORT_SQL = """
SELECT {key} AS key,
       sum(requests)::bigint AS requests,
       sum(prompt_tokens)::bigint AS prompt_tokens,
       sum(completion_tokens)::bigint AS completion_tokens,
       sum(cost_micros)::bigint AS cost_micros,
       sum(baseline_cost_micros)::bigint AS baseline_cost_micros,
       sum(cache_hits)::bigint AS cache_hits
FROM usage_hourly
WHERE org_id = $1 AND hour >= $2 AND hour < $3
GROUP BY 1 ORDER BY 1
"""
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
# refresh_org looks back at most a day (+ lateness): older ranges need no refresh.
_RECENT = timedelta(days=2)
_COUNTS = ("requests", "prompt_tokens", "completion_tokens", "cache_hits")


class RecentRefreshes:
    """When this replica last refreshed each org's recent hours (bounded; owned by the
    lifespan, ``AppState.analytics``)."""

    __slots__ = ("_at", "_every", "refreshes")

    def __init__(self, every_s: float = REFRESH_EVERY_S) -> None:
        self._at: dict[str, float] = {}
        self._every = every_s
        self.refreshes = 0  # refreshes run, for tests and /metrics

    def due(self, org_id: str) -> bool:
        """Whether ``org_id``'s recent hours should be recomputed now (claims the slot)."""
        now = time.monotonic()
        last = self._at.get(org_id)
        if last is not None and now - last < self._every:
            return False
        if len(self._at) >= MAX_TRACKED_ORGS:
            self._at.clear()  # an entry only saves a refresh: forgetting one is harmless
        self._at[org_id] = now
        self.refreshes += 1
        return True


def _usd(micros: int) -> float:
    return round(micros / 1e6, 6)


def _entry(counts: dict[str, int]) -> dict[str, Any]:
    cost, baseline = counts["cost_micros"], counts["baseline_cost_micros"]
    return {
        **{k: counts[k] for k in _COUNTS},
        "cost_usd": _usd(cost),
        "cost_micros": cost,
        "savings_usd": _usd(baseline - cost),
        "savings_micros": baseline - cost,
    }


def _midnight(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


async def usage_report(pool: asyncpg.Pool, org_id: str, *, start: date, end: date,
                       group_by: str = "day", refresh: bool = True) -> dict[str, Any]:
    """The report for ``org_id`` over UTC days ``start``..``end`` (inclusive). With
    ``refresh``, the org's recent hours are recomputed first (skipped if that would wait
    on a running global refresh for more than 2 s)."""
    if group_by not in _KEY_SQL:
        raise ValueError(f"group_by must be one of {GROUPS}")
    lo, hi = _midnight(start), _midnight(end + timedelta(days=1))
    async with pool.acquire() as conn:
        if refresh and hi > datetime.now(UTC) - _RECENT:
            if not await refresh_org(conn, org_id):
                log.info("analytics: rollup busy; serving org %s without a fresh refresh",
                         org_id)
        rows = await conn.fetch(_REPORT_SQL.format(key=_KEY_SQL[group_by]), org_id, lo, hi)
    fields = (*_COUNTS, "cost_micros", "baseline_cost_micros")
    groups: dict[Any, dict[str, int]] = {r["key"]: {f: r[f] for f in fields} for r in rows}
    if group_by == "day":
        zero = dict.fromkeys(fields, 0)
        days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
        groups = {d: groups.get(d, zero) for d in days}
    totals = {f: sum(g[f] for g in groups.values()) for f in fields}
    data = []
    for key, counts in groups.items():
        if isinstance(key, date):
            key = key.isoformat()
        data.append({"key": key if key != "" else None, **_entry(counts)})
    return {
        "object": "usage_report",
        "start": start.isoformat(),
        "end": end.isoformat(),
        "group_by": group_by,
        "data": data,
        "totals": _entry(totals),
    }


