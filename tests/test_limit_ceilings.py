"""Rate-limit ceilings through a real ``cognitude serve``: an org's key may set its limits only
up to what the operator granted (else the config default); the operator key raises them.

Before ceilings, ``PUT /rate-limits/config`` with an org's own key accepted anything up to
1e9, so with open registration and a shared provider key anyone had unmetered use of the
operator's key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest

from cognitude.identity.apikeys import new_key
from cognitude.management import limits
from cognitude.mock_upstream import MockUpstream
from tests.conftest import Proxy, assert_openai_error, chat, start_proxy, stop_proxy

ADMIN_KEY = new_key()
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
URL = "/rate-limits/config"
DEFAULT = {"requests_per_minute": 100, "requests_per_hour": 3000, "requests_per_day": 50000}
RPM, RPH, RPD = DEFAULT.values()
_CONFIG_SCHEMA = jsonschema_rs.validator_for(
    limits.OPENAPI_PATHS[URL]["get"]["responses"]["200"]["content"]["application/json"]["schema"])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, redis_url: str, pg_dsn: str,
           mock_server: MockUpstream) -> Iterator[Proxy]:
    p = start_proxy(tmp_path_factory.mktemp("ceilings"), redis_url=redis_url, pg_dsn=pg_dsn,
                    upstream_url=mock_server.url, env={"COGNITUDE_ADMIN_KEY": ADMIN_KEY})
    yield p
    stop_proxy(p)


@pytest.fixture
async def c(served: Proxy) -> Any:
    async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
        yield client


def view(limits_: dict[str, int], ceilings: dict[str, int] | None = None) -> dict[str, Any]:
    return {**DEFAULT, **limits_, "ceilings": {**DEFAULT, **(ceilings or {})}}


async def put(c: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> httpx.Response:
    r = await c.put(URL, headers=headers, json=body)
    if r.status_code == 200:
        assert _CONFIG_SCHEMA.is_valid(r.json()), r.text
    return r


async def test_org_key_stops_at_the_default_ceiling(c, org_factory) -> None:
    org = await org_factory()
    err = assert_openai_error(await put(c, org.headers, requests_per_minute=RPM + 1), 403,
                              code="limit_above_ceiling")
    assert err["param"] == "requests_per_minute"
    assert str(RPM) in err["message"] and "operator key" in err["message"]
    err = assert_openai_error(await put(c, org.headers, requests_per_day=10**9), 403,
                              code="limit_above_ceiling")
    assert err["param"] == "requests_per_day" and str(RPD) in err["message"]
    # Lowering and coming back up to the ceiling are both fine.
    assert (await put(c, org.headers, requests_per_minute=40)).json() == view(
        {"requests_per_minute": 40})
    assert (await put(c, org.headers, requests_per_minute=RPM)).json() == view({})
    assert (await c.get(URL, headers=org.headers)).json() == view({})


async def test_operator_grant_is_the_new_ceiling(c, org_factory) -> None:
    org = await org_factory()
    r = await put(c, ADMIN, organization_id=org.org_id, requests_per_minute=1000)
    assert r.status_code == 200, r.text
    granted = {"requests_per_minute": 1000}
    assert r.json() == view(granted, granted)
    # The hot path reads the granted limit (same columns, same meaning as before).
    r = await c.post("/v1/chat/completions", json=chat("granted"), headers=org.headers)
    assert r.status_code == 200 and r.headers["x-ratelimit-limit"] == "1000"

    assert (await put(c, org.headers, requests_per_minute=500)).json() == view(
        {"requests_per_minute": 500}, granted)
    assert (await put(c, org.headers, requests_per_minute=1000)).json() == view(granted, granted)
    err = assert_openai_error(await put(c, org.headers, requests_per_minute=1001), 403,
                              code="limit_above_ceiling")
    assert "1000" in err["message"]
    # The other windows still stop at their defaults.
    assert_openai_error(await put(c, org.headers, requests_per_hour=RPH + 1), 403)
    # An org's null is "back to my ceiling", the grant, not the lower default.
    assert (await put(c, org.headers, requests_per_minute=200)).status_code == 200
    assert (await put(c, org.headers, requests_per_minute=None)).json() == view(granted, granted)
    assert (await c.get(URL, headers=org.headers)).json() == view(granted, granted)
    # The operator's null returns limit and ceiling to the default.
    r = await put(c, ADMIN, organization_id=org.org_id, requests_per_minute=None)
    assert r.json() == view({})
    assert_openai_error(await put(c, org.headers, requests_per_minute=RPM + 1), 403)
    await asyncio.sleep(0.05)
    r = await c.post("/v1/chat/completions", json=chat("back to default"), headers=org.headers)
    assert r.headers["x-ratelimit-limit"] == str(RPM)


async def test_operator_may_lower_a_ceiling_below_the_default(c, org_factory) -> None:
    org = await org_factory()
    assert (await put(c, ADMIN, organization_id=org.org_id, requests_per_minute=10)).json() \
        == view({"requests_per_minute": 10}, {"requests_per_minute": 10})
    err = assert_openai_error(await put(c, org.headers, requests_per_minute=RPM), 403,
                              code="limit_above_ceiling")
    assert "at most 10" in err["message"]
    # null cannot be used to climb back to the default either.
    assert (await put(c, org.headers, requests_per_minute=None)).json()[
        "requests_per_minute"] == 10


async def test_windows_must_nest(c, org_factory) -> None:
    org = await org_factory()
    assert (await put(c, org.headers, requests_per_hour=500)).status_code == 200
    # Checked against the stored values, not only the fields in this request.
    for body, param in [({"requests_per_hour": RPM - 1}, "requests_per_hour"),
                        ({"requests_per_day": 499}, "requests_per_day"),
                        ({"requests_per_minute": 90, "requests_per_hour": 80},
                         "requests_per_minute")]:
        err = assert_openai_error(await put(c, org.headers, **body), 400)
        assert err["param"] == param and "nest" in err["message"], (body, err)
    # Equal windows nest.
    assert (await put(c, org.headers, requests_per_minute=50, requests_per_hour=50,
                      requests_per_day=50)).json() == view(dict.fromkeys(DEFAULT, 50))
    # The operator is held to it too: raising a minute past the hour needs the hour as well.
    err = assert_openai_error(await put(c, ADMIN, organization_id=org.org_id,
                                        requests_per_minute=5000), 400)
    assert err["param"] == "requests_per_minute"
    r = await put(c, ADMIN, organization_id=org.org_id, requests_per_minute=5000,
                  requests_per_hour=100_000, requests_per_day=10**9)
    grant = {"requests_per_minute": 5000, "requests_per_hour": 100_000,
             "requests_per_day": 10**9}
    assert r.status_code == 200 and r.json() == view(grant, grant)


async def test_who_may_name_an_organization(c, org_factory) -> None:
    org, other = await org_factory(), await org_factory()
    # An org's key cannot name an org, not even its own.
    for target in (other.org_id, org.org_id):
        err = assert_openai_error(await put(c, org.headers, organization_id=target,
                                            requests_per_minute=5), 403,
                                  code="operator_key_required")
        assert err["param"] == "organization_id"
    err = assert_openai_error(await put(c, ADMIN, requests_per_minute=5), 400)
    assert err["param"] == "organization_id"
    assert_openai_error(await put(c, ADMIN, organization_id="no-such-org",
                                  requests_per_minute=5), 404)
    assert_openai_error(await put(c, ADMIN, organization_id=org.org_id,
                                  requests_per_minute=limits.MAX_LIMIT + 1), 400)
    assert_openai_error(await put(c, ADMIN, organization_id=org.org_id), 400)
    assert_openai_error(await put(c, {"Authorization": f"Bearer {new_key()}"},
                                  requests_per_minute=5), 401)
    # The operator key is not an organization's key: GET has no org to show.
    assert_openai_error(await c.get(URL, headers=ADMIN), 401)
    assert (await c.get(URL, headers=other.headers)).json() == view({})


async def test_concurrent_changes_never_leave_windows_unnested(c, org_factory) -> None:
    """Two changes each fine on its own but not together (minute up, hour down), sent at
    once: one wins, the other is refused, and the stored windows always nest."""
    for _ in range(20):
        org = await org_factory()
        grant = {"requests_per_minute": 1000, "requests_per_hour": 3000}
        assert (await put(c, ADMIN, organization_id=org.org_id, **grant)).status_code == 200
        assert (await put(c, org.headers, requests_per_minute=100)).status_code == 200
        up, down = await asyncio.gather(put(c, org.headers, requests_per_minute=1000),
                                        put(c, org.headers, requests_per_hour=500))
        assert sorted([up.status_code, down.status_code]) == [200, 400], (up.text, down.text)
        got = (await c.get(URL, headers=org.headers)).json()
        assert got["requests_per_minute"] <= got["requests_per_hour"] <= got["requests_per_day"]


def test_put_schema_is_exact() -> None:
    body = limits.OPENAPI_PATHS[URL]["put"]["requestBody"]["content"]["application/json"]
    check = jsonschema_rs.validator_for(body["schema"])
    assert check.is_valid({"requests_per_minute": None})
    assert check.is_valid({"organization_id": "o", "requests_per_day": 5})
    for bad in [{}, {"organization_id": "o"}, {"requests_per_minute": 0},
                {"requests_per_minute": limits.MAX_LIMIT + 1}, {"burst": 1}]:
        assert not check.is_valid(bad), bad
    responses = limits.OPENAPI_PATHS[URL]["put"]["responses"]
    assert {"400", "401", "403", "404"} <= set(responses)


def test_migration_adds_nullable_ceilings() -> None:
    sql = (Path(limits.__file__).parent.parent / "migrations"
           / "007_limit_ceilings.sql").read_text()
    for col in limits.CEILINGS.values():
        assert f"ADD COLUMN {col}" in sql and "NOT NULL" not in sql
