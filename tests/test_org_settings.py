"""Provider credentials, rate-limit config/usage/reset and cache settings, through the real
app (``CognitudeApp`` in a ``TestClient``) against the private Postgres and Valkey.

Gate calls are made with the app's own ``Gate`` on the TestClient's event loop (``portal``),
so usage is compared with exactly the state the hot path writes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from starlette.testclient import TestClient

from cognitude.app import CognitudeApp
from cognitude.config import parse
from cognitude.gate import keys
from cognitude.gate.gate import Limits
from cognitude.identity.credentials import load_org_credentials
from cognitude.identity.crypto import DecryptionError, decrypt, row_aad
from cognitude.management import cache_settings, limits, providers
from cognitude.mock_upstream import MockUpstream
from tests.conftest import Org, assert_openai_error, make_org

ADMIN_KEY = "cog-admin-test-key-0123456789"
SECRET = "sk-org-secret-Zq7XwP3mN9vB2kL5"
T0 = 1_767_225_600_123
G_MS = (1_000, 60_000, 900_000)
NB = (60, 60, 96)

Client = Callable[..., Any]


@pytest.fixture
def make_client(tmp_path: Path, redis_url: str, pg_dsn: str, mock_server: MockUpstream,
                monkeypatch: pytest.MonkeyPatch) -> Client:
    monkeypatch.setenv("COGNITUDE_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.setenv("COGNITUDE_ENCRYPTION_KEY",
                       base64.urlsafe_b64encode(os.urandom(32)).decode())

    @contextmanager
    def factory(*, encryption: bool = True, allow_private: bool = False,
                static_keys: list[dict[str, str]] | None = None) -> Iterator[TestClient]:
        if not encryption:
            monkeypatch.delenv("COGNITUDE_ENCRYPTION_KEY")
        cfg = parse({
            "data_dir": str(tmp_path / "data"),
            "redis": {"url": redis_url},
            "postgres": {"dsn": pg_dsn},
            "cache": {"cold_tier": False, "max_ttl_s": 7200},
            "alerts": {"allow_private_targets": allow_private},
            "providers": {"mock": {"base_url": mock_server.url + "/v1",
                                   "models": ["gpt-4o-mini"]}},
            "auth": {"static_keys": static_keys or []},
        }, "test", env={})
        app = CognitudeApp(cfg)
        app.starlette.router.routes.extend(
            [*providers.ROUTES, *limits.ROUTES, *cache_settings.ROUTES])
        with TestClient(app) as client:  # type: ignore[arg-type]
            yield client

    return factory


def new_org(pg_dsn: str, **kw: Any) -> Org:
    return asyncio.run(make_org(pg_dsn, **kw))


def sql(pg_dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(pg_dsn)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()
    return asyncio.run(run())


def state(client: TestClient) -> Any:
    return client.app.starlette.state.cognitude  # type: ignore[attr-defined]


def call(client: TestClient, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    async def run() -> Any:
        return await fn(*args, **kw)
    assert client.portal is not None
    return client.portal.call(run)


# ---- provider credentials -----------------------------------------------------------------


def test_provider_credentials_round_trip(make_client: Client, pg_dsn: str) -> None:
    a, b = new_org(pg_dsn), new_org(pg_dsn)
    with make_client() as c:
        r = c.post("/providers/config", headers=a.headers,
                   json={"provider": "mock", "api_key": SECRET})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["provider"] == "mock" and body["base_url"] is None
        assert body["api_key"] == f"{SECRET[:3]}…{SECRET[-4:]}"
        assert SECRET not in r.text

        (row,) = sql(pg_dsn, "SELECT * FROM provider_credentials WHERE org_id = $1", a.org_id)
        assert row["ciphertext"] != SECRET.encode()
        for value in row.values():
            raw = value if isinstance(value, bytes) else str(value).encode()
            assert SECRET.encode() not in raw and SECRET[4:20].encode() not in raw

        listed = c.get("/providers", headers=a.headers)
        assert listed.status_code == 200 and SECRET not in listed.text
        assert [d["api_key"] for d in listed.json()["data"]] == [body["api_key"]]
        assert "ciphertext" not in listed.text

        st = state(c)
        got = call(c, load_org_credentials, st.pg, st.secrets.encryption_key, a.org_id,
                   st.providers.headers_for)
        assert got.unreadable == frozenset() and list(got.usable) == ["mock"]
        assert got.usable["mock"].headers["Authorization"] == f"Bearer {SECRET}"
        assert got.usable["mock"].base_url is None

        # Org B sees nothing of A's and cannot delete it.
        assert c.get("/providers", headers=b.headers).json()["data"] == []
        assert_openai_error(c.delete("/providers/mock", headers=b.headers), 404)
        got = call(c, load_org_credentials, st.pg, st.secrets.encryption_key, b.org_id,
                   st.providers.headers_for)
        assert got.usable == {} and not got.unreadable

        # Upsert replaces, then delete removes.
        r = c.post("/providers/config", headers=a.headers,
                   json={"provider": "mock", "api_key": SECRET + "2",
                         "base_url": "https://8.8.8.8/v1/"})
        assert r.status_code == 201 and r.json()["base_url"] == "https://8.8.8.8/v1"
        got = call(c, load_org_credentials, st.pg, st.secrets.encryption_key, a.org_id,
                   st.providers.headers_for)
        assert got.usable["mock"].secret == (SECRET + "2").encode()
        assert got.usable["mock"].base_url == "https://8.8.8.8/v1"
        assert c.delete("/providers/mock", headers=a.headers).json() == {
            "provider": "mock", "deleted": True}
        assert_openai_error(c.delete("/providers/mock", headers=a.headers), 404)
        assert_openai_error(c.delete("/providers/mo%00ck", headers=a.headers), 404)
        assert c.get("/providers", headers=a.headers).json()["data"] == []
        assert_openai_error(c.get("/providers"), 401)


def test_ciphertext_bound_to_its_org(make_client: Client, pg_dsn: str) -> None:
    a, b = new_org(pg_dsn), new_org(pg_dsn)
    with make_client() as c:
        assert c.post("/providers/config", headers=a.headers,
                      json={"provider": "mock", "api_key": SECRET}).status_code == 201
        sql(pg_dsn, "INSERT INTO provider_credentials (org_id, provider, ciphertext) "
            "SELECT $2, provider, ciphertext FROM provider_credentials WHERE org_id = $1",
            a.org_id, b.org_id)
        (row,) = sql(pg_dsn, "SELECT ciphertext FROM provider_credentials WHERE org_id = $1",
                     b.org_id)
        st = state(c)
        with pytest.raises(DecryptionError):
            decrypt(st.secrets.encryption_key, row["ciphertext"], row_aad(b.org_id, "mock"))
        (item,) = c.get("/providers", headers=b.headers).json()["data"]
        assert item["api_key"] is None and "cannot be decrypted" in item["error"]
        # Not usable, and not silently dropped either: the hot path answers 503 for it.
        got = call(c, load_org_credentials, st.pg, st.secrets.encryption_key, b.org_id,
                   st.providers.headers_for)
        assert got.usable == {} and got.unreadable == {"mock"}


def test_key_never_echoed(make_client: Client, pg_dsn: str,
                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    a = new_org(pg_dsn)
    long_key = "sk-" + "Qx9" * 200
    bad_bodies: list[tuple[Any, str | None]] = [
        ({"provider": "mock", "api_key": long_key}, "api_key"),
        ({"provider": "mock", "api_key": SECRET[:6]}, "api_key"),
        ({"provider": "mock", "api_key": SECRET[:10] + " " + SECRET[10:]}, "api_key"),
        ({"provider": "nope", "api_key": SECRET}, "provider"),
        ({"provider": "mock", "api_key": SECRET, "base_url": "http://8.8.8.8"}, "base_url"),
        ({"provider": "mock", "api_key": SECRET, "base_url": f"https://u:{SECRET}@8.8.8.8"},
         "base_url"),
        ({"provider": "mock", "api_key": SECRET, "extra": 1}, "extra"),
        ({"api_key": SECRET}, "provider"),
        (f'{{"provider": "mock", "api_key": "{SECRET}"', None),  # malformed JSON
    ]
    with make_client() as c:
        for body, param in bad_bodies:
            kw = {"content": body} if isinstance(body, str) else {"json": body}
            r = c.post("/providers/config", headers=a.headers, **kw)
            err = assert_openai_error(r, 400)
            assert err["param"] == param, (body, err)
            for secret in (SECRET, SECRET[:10], long_key[:40]):
                assert secret not in r.text, r.text
    for secret in (SECRET, SECRET[:10], long_key[:40]):
        assert secret not in caplog.text


def test_no_encryption_key_is_503(make_client: Client, pg_dsn: str) -> None:
    a = new_org(pg_dsn)
    with make_client(encryption=False) as c:
        for r in (c.post("/providers/config", headers=a.headers,
                         json={"provider": "mock", "api_key": SECRET}),
                  c.get("/providers", headers=a.headers)):
            err = assert_openai_error(r, 503, code="encryption_key_missing")
            assert "encryption_key_env" in err["message"]
        assert_openai_error(c.delete("/providers/mock", headers=a.headers), 404)


REFUSED = ["http://8.8.8.8/v1", "https://127.0.0.1/v1", "https://10.1.2.3/v1",
           "https://169.254.169.254/latest", "https://192.168.0.10", "https://[::1]/v1",
           "https://[::ffff:127.0.0.1]/v1", "https://[fe80::1]/", "https://localhost:8443/v1",
           "ftp://8.8.8.8/", "https:///v1", "https://8.8.8.8/v1?x=1", "https://8.8.8.8:99999/"]


def test_base_url_validation(make_client: Client, pg_dsn: str) -> None:
    a = new_org(pg_dsn)
    with make_client() as c:
        for url in REFUSED:
            r = c.post("/providers/config", headers=a.headers,
                       json={"provider": "mock", "api_key": SECRET, "base_url": url})
            assert assert_openai_error(r, 400)["param"] == "base_url", url
        r = c.post("/providers/config", headers=a.headers,
                   json={"provider": "mock", "api_key": SECRET, "base_url": "https://1.1.1.1/v1"})
        assert r.status_code == 201, r.text
    with make_client(allow_private=True) as c:
        for url in ("https://127.0.0.1:8443/v1", "http://10.0.0.5:11434/v1",
                    "https://localhost/v1"):
            r = c.post("/providers/config", headers=a.headers,
                       json={"provider": "mock", "api_key": SECRET, "base_url": url})
            assert r.status_code == 201 and r.json()["base_url"] == url, r.text


# ---- rate limits --------------------------------------------------------------------------


def test_rate_limit_config(make_client: Client, pg_dsn: str) -> None:
    a, b = new_org(pg_dsn), new_org(pg_dsn)
    url = "/rate-limits/config"
    with make_client() as c:
        default = {"requests_per_minute": 100, "requests_per_hour": 3000,
                   "requests_per_day": 50000}

        def view(limits: dict[str, int]) -> dict[str, Any]:
            # Never granted anything: the ceilings are the config defaults.
            return {**limits, "ceilings": default}

        assert c.get(url, headers=a.headers).json() == view(default)
        # The key cache now holds A's limits; the PUT must reach the next request anyway.
        assert c.get("/rate-limits/usage", headers=a.headers).json()["minute"]["limit"] == 100
        r = c.put(url, headers=a.headers, json={"requests_per_minute": 7})
        assert r.status_code == 200 and r.json() == view({**default, "requests_per_minute": 7})
        assert c.get("/rate-limits/usage", headers=a.headers).json()["minute"]["limit"] == 7
        r = c.put(url, headers=a.headers, json={"requests_per_hour": 50,
                                                "requests_per_day": 40000})
        want = {"requests_per_minute": 7, "requests_per_hour": 50, "requests_per_day": 40000}
        assert r.json() == view(want) and c.get(url, headers=a.headers).json() == view(want)
        # null: back to the ceiling — but 100 per minute would exceed 50 per hour.
        err = assert_openai_error(c.put(url, headers=a.headers,
                                        json={"requests_per_minute": None}), 400)
        assert err["param"] == "requests_per_minute" and "nest" in err["message"]
        assert c.put(url, headers=a.headers, json={"requests_per_minute": None,
                                                   "requests_per_hour": None}).json() == view(
            {**default, "requests_per_day": 40000})
        assert c.get(url, headers=b.headers).json() == view(default)

        bad: list[tuple[Any, str]] = [
            ({"requests_per_minute": 0}, "requests_per_minute"),
            ({"requests_per_hour": -5}, "requests_per_hour"),
            ({"requests_per_day": "10"}, "requests_per_day"),
            ({"requests_per_minute": 1e10}, "requests_per_minute"),
            ({"requests_per_minute": 10**10}, "requests_per_minute"),
            ({"requests_per_hour": 1.5}, "requests_per_hour"),
            ({"requests_per_day": True}, "requests_per_day"),
            ({"requests_per_week": 3}, "requests_per_week"),
            ({"requests_per_minute": 5, "burst": 1}, "burst"),
            ({"requests_per_hour": 99}, "requests_per_hour"),  # below 100 per minute
            ({"requests_per_day": 2999}, "requests_per_day")]  # below 3000 per hour
        for body, param in bad:
            err = assert_openai_error(c.put(url, headers=a.headers, json=body), 400)
            assert err["param"] == param, (body, err)
        assert_openai_error(c.put(url, headers=a.headers, json={}), 400)
        assert_openai_error(c.put(url, headers=a.headers, json=[1]), 400)
        assert_openai_error(c.put(url, json={"requests_per_minute": 5}), 401)
        # Above the ceiling (here the default): only the operator key may raise it.
        err = assert_openai_error(c.put(url, headers=a.headers,
                                        json={"requests_per_day": 10**9}), 403,
                                  code="limit_above_ceiling")
        assert err["param"] == "requests_per_day" and "50000" in err["message"]
        assert c.get(url, headers=a.headers).json() == view({**default,
                                                             "requests_per_day": 40000})


def _model_used(calls: list[int], now: int) -> list[int]:
    """Requests the gate counts at ``now``: every call in a bucket >= floor(now/g) - W/g."""
    return [sum(1 for t in calls if t // g >= now // g - nb) for g, nb in zip(G_MS, NB,
                                                                              strict=True)]


def test_usage_matches_gate_state(make_client: Client, pg_dsn: str) -> None:
    org = new_org(pg_dsn)
    with make_client() as c:
        st = state(c)
        reader = st.limits_usage
        lim = Limits(10, 100, 1000)
        ks = keys.limiter_keys(org.org_id)
        for k in range(1, 4):
            res = call(c, st.gate.check, org.org_id, lim, now_ms=T0 + 700 * k)
            assert res.allowed and res.remaining == 10 - (2 * k - 1)
            # The raw reply carries the tightest (here: minute) window's reset in ms.
            raw = call(c, st.redis.evalsha, st.gate.sha, 3, *ks, 10, 100, 1000, 1, "1",
                       T0 + 700 * k)
            assert raw[0] == 1 and raw[5] == 1
            usage = call(c, reader.read, org.org_id, now_ms=T0 + 700 * k)
            assert [w.used for w in usage] == [2 * k] * 3
            assert usage[0].reset_ms == raw[3]
        # The minute window empties while hour and day still count; nothing was written.
        # Read-only: runs as EVALSHA_RO (flags=no-writes) and leaves the hashes byte-identical.
        before = [call(c, st.redis.dump, k) for k in ks]
        assert call(c, st.redis.evalsha_ro, reader.sha, 3, *ks, T0 + 5_000)[0::2] == [6, 6, 6]
        assert [call(c, st.redis.dump, k) for k in ks] == before
        # (the last calls' second bucket, T0 + 2.1 s, drops out at its end + 60 s)
        later = call(c, reader.read, org.org_id, now_ms=T0 + 64_000)
        assert [w.used for w in later] == [0, 6, 6] and later[0].reset_ms == 0
        assert later[1].reset_ms == (T0 // 60_000 + 1) * 60_000 + 3_600_000 - T0 - 64_000

        # A random sequence over two days, against the bucket model at many instants.
        rng = random.Random(7)
        other = new_org(pg_dsn)
        t, calls = T0, []
        for _ in range(150):
            t += rng.choice([rng.randint(1, 3_000), rng.randint(1, 900_000)])
            assert call(c, st.gate.check, other.org_id, Limits(10**6, 10**6, 10**6),
                        now_ms=t).allowed
            calls.append(t)
            probe = t + rng.randint(0, 100_000_000)
            got = call(c, reader.read, other.org_id, now_ms=probe)
            assert [w.used for w in got] == _model_used(calls, probe)


def test_usage_endpoint_and_reset(make_client: Client, pg_dsn: str) -> None:
    org = new_org(pg_dsn, rpm=5, rph=100, rpd=1000)
    other = new_org(pg_dsn)
    with make_client() as c:
        st = state(c)
        lim = Limits(5, 100, 1000)
        results = [call(c, st.gate.check, org.org_id, lim) for _ in range(4)]
        assert all(r.allowed for r in results)
        body = c.get("/rate-limits/usage", headers=org.headers).json()
        for name, limit in (("minute", 5), ("hour", 100), ("day", 1000)):
            w = body[name]
            assert (w["used"], w["limit"], w["remaining"]) == (4, limit, limit - 4), body
        assert results[-1].reset_s - 1 <= body["minute"]["reset"] <= results[-1].reset_s
        assert 0 < body["hour"]["reset"] <= 3660 and 0 < body["day"]["reset"] <= 87300
        assert c.get("/rate-limits/usage", headers=other.headers).json()["minute"] == {
            "used": 0, "limit": 100, "remaining": 100, "reset": 0}

        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        reset = {"organization_id": org.org_id}
        assert_openai_error(c.post("/rate-limits/reset", headers=org.headers, json=reset), 401)
        assert_openai_error(c.post("/rate-limits/reset", json=reset), 401)
        assert c.get("/rate-limits/usage", headers=org.headers).json()["minute"]["used"] == 4
        err = assert_openai_error(c.post("/rate-limits/reset", headers=admin, json={}), 400)
        assert err["param"] == "organization_id"
        assert_openai_error(c.post("/rate-limits/reset", headers=admin,
                                   json={"organization_id": "no-such-org"}), 404)
        # NUL cannot be stored in Postgres text: a 400 naming the field, not the driver's 500
        # (found by the schemathesis fuzz test).
        err = assert_openai_error(c.post("/rate-limits/reset", headers=admin,
                                         json={"organization_id": "a\x00b"}), 400)
        assert err["param"] == "organization_id" and "NUL" in err["message"]
        r = c.post("/rate-limits/reset", headers=admin, json=reset)
        assert r.status_code == 200 and r.json() == {"organization_id": org.org_id,
                                                     "reset": True}
        body = c.get("/rate-limits/usage", headers=org.headers).json()
        assert all(body[w]["used"] == 0 and body[w]["reset"] == 0 for w in body)
        assert call(c, st.gate.check, org.org_id, lim).remaining == 4


def test_reset_clears_every_key_window(make_client: Client, pg_dsn: str) -> None:
    """A key with limits of its own, exhausted, is admitted again after the reset: the
    per-key windows go with the org's (they used to survive it)."""
    org = new_org(pg_dsn)
    (key,) = sql(pg_dsn, "UPDATE api_keys SET requests_per_minute = 2 WHERE org_id = $1"
                 " RETURNING id", org.org_id)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with make_client() as c:
        st = state(c)
        info = call(c, st.keys.resolve, org.key)
        assert info.key_id == key["id"] and info.key_limits == Limits(2, 3000, 50000)

        def admit() -> bool:
            return bool(call(c, st.gate.check, org.org_id, info.limits, key_id=info.key_id,
                             key_limits=info.key_limits).allowed)

        assert [admit() for _ in range(3)] == [True, True, False]
        r = c.post("/rate-limits/reset", headers=admin, json={"organization_id": org.org_id})
        assert r.status_code == 200, r.text
        for name in (*keys.limiter_keys(org.org_id),
                     *keys.key_limiter_keys(org.org_id, info.key_id)):
            assert call(c, st.redis.exists, name) == 0, name
        assert [admit() for _ in range(3)] == [True, True, False]


def test_reset_clears_static_key_windows(make_client: Client, pg_dsn: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Static keys (config.toml) have windows named by their digest: reset finds them too."""
    static_key = "cog-static-" + os.urandom(8).hex()
    monkeypatch.setenv("COG_TEST_STATIC_KEY", static_key)
    org_id = "static-" + os.urandom(4).hex()
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with make_client(static_keys=[{"org": org_id, "key_env": "COG_TEST_STATIC_KEY"}]) as c:
        st = state(c)
        key_id = "static:" + hashlib.sha256(static_key.encode()).hexdigest()[:12]
        names = keys.key_limiter_keys(org_id, key_id)
        for name in names:
            call(c, st.redis.hset, name, "1", "5")
        r = c.post("/rate-limits/reset", headers=admin, json={"organization_id": org_id})
        assert r.status_code == 200, r.text
        assert [call(c, st.redis.exists, name) for name in names] == [0, 0, 0]


# ---- cache settings -----------------------------------------------------------------------


def test_cache_config(make_client: Client, pg_dsn: str) -> None:
    a, b = new_org(pg_dsn), new_org(pg_dsn)
    url = "/cache/config"
    default = {"enabled": True, "ttl_s": 86400, "only_deterministic": False}
    with make_client() as c:
        st = state(c)
        assert c.get(url, headers=a.headers).json() == default
        assert call(c, cache_settings.org_cache_settings, st.pg, a.org_id) is None
        r = c.put(url, headers=a.headers, json={"ttl_s": 600})
        assert r.status_code == 200 and r.json() == {**default, "ttl_s": 600}
        r = c.put(url, headers=a.headers, json={"enabled": False, "only_deterministic": True})
        want = {"enabled": False, "ttl_s": 600, "only_deterministic": True}
        assert r.json() == want and c.get(url, headers=a.headers).json() == want
        assert call(c, cache_settings.org_cache_settings, st.pg, a.org_id) == (False, 600, True)
        assert c.put(url, headers=a.headers, json={"ttl_s": None}).json() == {
            **want, "ttl_s": 86400}
        assert call(c, cache_settings.org_cache_settings, st.pg, a.org_id) == (False, None, True)
        assert c.get(url, headers=b.headers).json() == default

        bad: list[tuple[Any, str | None]] = [
            ({"ttl_s": 0}, "ttl_s"), ({"ttl_s": 7201}, "ttl_s"), ({"ttl_s": "60"}, "ttl_s"),
            ({"enabled": "yes"}, "enabled"), ({"enabled": 1}, "enabled"),
            ({"only_deterministic": 0}, "only_deterministic"), ({"compress": True}, "compress"),
            ({}, None)]
        for body, param in bad:
            err = assert_openai_error(c.put(url, headers=a.headers, json=body), 400)
            assert err["param"] == param, (body, err)
        assert_openai_error(c.get(url), 401)


def test_openapi_paths_cover_routes() -> None:
    for mod in (providers, limits, cache_settings):
        for route in mod.ROUTES:
            for method in route.methods or ():
                if method == "HEAD":
                    continue
                op = mod.OPENAPI_PATHS[route.path][method.lower()]
                assert "200" in op["responses"] or "201" in op["responses"]
                assert any(r.get("content", {}).get("application/json", {}).get("schema")
                           == {"$ref": "#/components/schemas/Error"}
                           for r in op["responses"].values())
                if "requestBody" in op:
                    schema = op["requestBody"]["content"]["application/json"]["schema"]
                    assert schema["additionalProperties"] is False
    assert cache_settings.openapi_paths(None)["/cache/config"]["put"]["requestBody"]
