"""Analytics from the hourly rollup: grouping, totals, savings, org isolation, and the
``GET /analytics/usage`` endpoint (auth, parameters, freshness) on a minimal app."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cognitude.analytics.usage_report import RecentRefreshes, usage_report
from cognitude.config import Config, Secrets
from cognitude.errors import ProxyError
from cognitude.identity.keycache import KeyCache
from cognitude.ledger import maintenance
from cognitude.ledger.maintenance import Maintenance
from cognitude.management.analytics import analytics_usage
from cognitude.management.common import error_response
from tests.conftest import HEADERS_FOR, assert_openai_error
from tests.ledger_rows import insert, rec

KEY = maintenance.LEADER_LOCK + 2  # private leader lock (see test_maintenance)


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    yield p
    await p.close()


def at(d: date, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(d.year, d.month, d.day, hour, minute, second, tzinfo=UTC)


def counts(entry: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(entry[k] for k in ("requests", "prompt_tokens", "completion_tokens",
                                    "cost_usd", "cache_hits", "savings_usd"))


async def test_report_groups_totals_savings_and_isolation(pool: asyncpg.Pool) -> None:
    a, b = "org-" + uuid.uuid4().hex, "org-" + uuid.uuid4().hex
    d1 = datetime.now(UTC).date() - timedelta(days=3)
    d2 = d1 + timedelta(days=1)
    await insert(pool, [
        rec(a, at(d1, 10, 15), prompt=100, completion=50, cost=1000, baseline=1000),
        rec(a, at(d1, 10, 45), prompt=100, completion=50, cost=0, baseline=1000, cache="HIT"),
        rec(a, at(d1, 23, 59, 59), model="gpt-4o", prompt=10, completion=10, cost=5000,
            baseline=5000),
        # Routed to a cheaper model: baseline is the requested model's price.
        rec(a, at(d2, 0, 0, 0), model="claude-3-haiku", provider="anthropic", prompt=20,
            completion=30, cost=2000, baseline=9000),
        rec(a, at(d2, 1), model=None, provider=None, prompt=0, completion=0, cost=0,
            baseline=0, cache=None, status=429),
        # Unknown price: cost counts as 0 and the row saves nothing.
        rec(a, at(d2, 2), model="mystery", provider="acme", prompt=1, completion=1,
            cost=None, baseline=700),
        rec(b, at(d1, 10), prompt=999_999, completion=1, cost=123_456_789, baseline=0),
    ])
    res = await Maintenance(pool, lock_key=KEY).run_once()
    assert res is not None and not res.errors

    rep = await usage_report(pool, a, start=d1 - timedelta(days=1), end=d2, group_by="day")
    assert rep["object"] == "usage_report" and rep["group_by"] == "day"
    assert (rep["start"], rep["end"]) == ((d1 - timedelta(days=1)).isoformat(), d2.isoformat())
    by = {e["key"]: counts(e) for e in rep["data"]}
    assert list(by) == [(d1 - timedelta(days=1)).isoformat(), d1.isoformat(), d2.isoformat()]
    assert by[(d1 - timedelta(days=1)).isoformat()] == (0, 0, 0, 0.0, 0, 0.0)
    assert by[d1.isoformat()] == (3, 210, 110, 0.006, 1, 0.001)
    assert by[d2.isoformat()] == (3, 21, 31, 0.002, 0, 0.007)
    assert counts(rep["totals"]) == (6, 231, 141, 0.008, 1, 0.008)
    assert rep["totals"]["cost_micros"] == 8000 and rep["totals"]["savings_micros"] == 8000

    rep = await usage_report(pool, a, start=d1, end=d2, group_by="model")
    by = {e["key"]: counts(e) for e in rep["data"]}
    assert by == {
        None: (1, 0, 0, 0.0, 0, 0.0),
        "claude-3-haiku": (1, 20, 30, 0.002, 0, 0.007),
        "gpt-4o": (1, 10, 10, 0.005, 0, 0.0),
        "gpt-4o-mini": (2, 200, 100, 0.001, 1, 0.001),
        "mystery": (1, 1, 1, 0.0, 0, 0.0),
    }
    rep = await usage_report(pool, a, start=d1, end=d2, group_by="provider")
    assert {e["key"]: e["requests"] for e in rep["data"]} == {
        None: 1, "acme": 1, "anthropic": 1, "openai": 3}
    assert counts(rep["totals"]) == (6, 231, 141, 0.008, 1, 0.008)

    # Range bounds are whole UTC days, inclusive.
    rep = await usage_report(pool, a, start=d2, end=d2, group_by="model")
    assert rep["totals"]["requests"] == 3

    # Org isolation both ways.
    rep_b = await usage_report(pool, b, start=d1, end=d2, group_by="model")
    assert [(e["key"], e["requests"]) for e in rep_b["data"]] == [("gpt-4o-mini", 1)]
    assert rep_b["totals"]["cost_usd"] == 123.456789
    assert rep_b["totals"]["savings_usd"] == -123.456789


def make_app(pool: asyncpg.Pool) -> Starlette:
    """The route as the lead will wire it: same error rendering, same state shape."""

    async def proxy_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProxyError)
        return error_response(exc)

    app = Starlette(routes=[Route("/analytics/usage", analytics_usage, methods=["GET"])],
                    exception_handlers={ProxyError: proxy_error})
    app.state.cognitude = SimpleNamespace(pg=pool, keys=KeyCache(Config(), Secrets({}, {}, ""),
                                                                 pool, HEADERS_FOR),
                                          analytics=RecentRefreshes())
    return app


@pytest.fixture
async def http(pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app(pool))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def test_endpoint_is_fresh_and_scoped_to_the_keys_org(
        http: httpx.AsyncClient, pool: asyncpg.Pool, org_factory: Callable[..., Any]) -> None:
    org, other = await org_factory(), await org_factory()
    now = datetime.now(UTC)
    await Maintenance(pool, lock_key=KEY).run_once()
    # Written after the last maintenance round: the endpoint's own refresh must show them.
    await insert(pool, [rec(org.org_id, now), rec(org.org_id, now, cache="HIT", cost=0),
                        rec(other.org_id, now, prompt=5000)])

    r = await http.get("/analytics/usage", headers=org.headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["group_by"] == "day" and len(body["data"]) == 7
    assert body["end"] == now.date().isoformat()
    assert body["data"][-1]["key"] == now.date().isoformat()
    assert counts(body["totals"]) == (2, 20, 10, 0.0001, 1, 0.0005)

    # The org comes from the key; a parameter naming another org changes nothing.
    r = await http.get("/analytics/usage", params={"group_by": "model", "org_id": other.org_id},
                       headers={"X-API-Key": org.key})
    assert r.status_code == 200, r.text
    assert [(e["key"], e["requests"]) for e in r.json()["data"]] == [("gpt-4o-mini", 2)]
    r = await http.get("/analytics/usage", headers=other.headers)
    assert r.json()["totals"]["prompt_tokens"] == 5000


async def test_endpoint_requires_a_valid_key(http: httpx.AsyncClient) -> None:
    assert_openai_error(await http.get("/analytics/usage"), 401, code="invalid_api_key")
    r = await http.get("/analytics/usage", headers={"Authorization": "Bearer cog-nope"})
    assert_openai_error(r, 401, code="invalid_api_key")


@pytest.mark.parametrize(("params", "param"), [
    ({"start": "2024-13-01"}, "start"),
    ({"start": "20240101"}, "start"),
    ({"end": "yesterday"}, "end"),
    ({"start": "2024-03-02", "end": "2024-03-01"}, "end"),
    ({"start": "2023-01-01", "end": "2024-01-02"}, "start"),  # 367 days
    ({"group_by": "week"}, "group_by"),
    # The calendar's edges: the day arithmetic overflowed into a 500 (found by the fuzz).
    ({"start": "0001-01-01", "end": "2024-01-01"}, "start"),
    ({"end": "9999-12-31"}, "end"),
    ({"end": "0001-01-01"}, "end"),
])
async def test_bad_parameters_are_openai_errors(http: httpx.AsyncClient,
                                                org_factory: Callable[..., Any],
                                                params: dict[str, str], param: str) -> None:
    org = await org_factory()
    r = await http.get("/analytics/usage", params=params, headers=org.headers)
    err = assert_openai_error(r, 400, type_="invalid_request_error")
    assert err["param"] == param, err


async def test_a_full_year_is_allowed(http: httpx.AsyncClient,
                                      org_factory: Callable[..., Any]) -> None:
    org = await org_factory()
    r = await http.get("/analytics/usage", headers=org.headers,
                       params={"start": "2024-01-01", "end": "2024-12-31", "group_by": "provider"})
    assert r.status_code == 200, r.text
    assert r.json()["data"] == [] and r.json()["totals"]["requests"] == 0


async def test_reads_do_not_rewrite_the_rollup_on_every_get(
        http: httpx.AsyncClient, org_factory: Callable[..., Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The freshness refresh writes; a dashboard polling the endpoint must not turn every
    GET into a rollup write (at most one per REFRESH_EVERY_S per org)."""
    from cognitude.analytics import usage_report as analytics

    calls: list[str] = []
    real = analytics.refresh_org

    async def counting(conn: Any, org_id: str, **kw: Any) -> bool:
        calls.append(org_id)
        return await real(conn, org_id, **kw)

    monkeypatch.setattr(analytics, "refresh_org", counting)
    org, other = await org_factory(), await org_factory()
    for _ in range(5):
        assert (await http.get("/analytics/usage", headers=org.headers)).status_code == 200
    assert (await http.get("/analytics/usage", headers=other.headers)).status_code == 200
    assert calls == [org.org_id, other.org_id]
