"""Accounts: registration, an org's own keys, operator org administration (real Redis/Postgres).

The app is built in process with ``accounts.ROUTES`` appended and served by Starlette's
TestClient, which runs the real lifespan (pools, key cache, invalidation subscriber).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import jsonschema_rs
import pytest
from starlette.testclient import TestClient

from cognitude.app import CognitudeApp
from cognitude.config import parse
from cognitude.identity.apikeys import new_key
from cognitude.identity.passwords import verify_password
from cognitude.management.accounts import OPENAPI_PATHS, ROUTES
from cognitude.mock_upstream import MockUpstream
from tests.conftest import assert_openai_error

ADMIN_ENV = "COG_TEST_ACCOUNTS_ADMIN_KEY"
ADMIN_KEY = new_key()
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
_seq = iter(range(10**9))


def unique_email() -> str:
    return f"user{next(_seq)}-{new_key()[4:14].lower()}@example.com"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@contextmanager
def serve(tmp: Path, redis_url: str, pg_dsn: str, upstream: str,
          **auth: Any) -> Iterator[TestClient]:
    cfg = parse({
        "data_dir": str(tmp),
        "redis": {"url": redis_url, "socket_timeout_ms": 500},
        "postgres": {"dsn": pg_dsn},
        "providers": {"mock": {"base_url": upstream + "/v1", "api_key_env": "MOCK_PROVIDER_KEY",
                               "models": ["gpt-4o-mini"]}},
        # Every test here registers from the TestClient's one address ("testclient"): the
        # throttles are tested in test_throttle.py / test_login.py, with low limits.
        "auth": {"admin_key_env": ADMIN_ENV, "register_per_hour": 10**6,
                 "login_per_hour": 10**6, **auth},
    }, "test", env={})
    with pytest.MonkeyPatch.context() as mp:
        # Secrets are read from os.environ by the lifespan, so they must be set before it runs.
        mp.setenv(ADMIN_ENV, ADMIN_KEY)
        mp.setenv("MOCK_PROVIDER_KEY", "sk-mock-provider-secret-123")
        app = CognitudeApp(cfg)
        routed = {(getattr(r, "path", None), m) for r in app.starlette.router.routes
                  for m in getattr(r, "methods", None) or ()}
        # Added here unless the app already serves them (the lead wires ROUTES in app.py).
        app.starlette.router.routes.extend(
            r for r in ROUTES if not (r.methods or set()) <= {m for p, m in routed
                                                               if p == r.path})
        with TestClient(app) as client:
            yield client


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, redis_url: str, pg_dsn: str,
        mock_server: MockUpstream) -> Iterator[TestClient]:
    with serve(tmp_path_factory.mktemp("accounts"), redis_url, pg_dsn, mock_server.url) as c:
        yield c


def db(pg_dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(pg_dsn)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()
    return asyncio.run(run())


def register(api: TestClient, **body: Any) -> dict[str, Any]:
    body = {"name": "Acme", "email": unique_email(), "password": "correct horse", **body}
    r = api.post("/auth/register", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


# ---------------------------------------------------------------- self-service flow

def test_register_create_list_revoke(api: TestClient) -> None:
    reg = register(api)
    assert set(reg) == {"organization_id", "api_key"}
    first = reg["api_key"]
    assert first.startswith("cog-") and len(first) >= 4 + 43

    r = api.get("/auth/keys", headers=bearer(first))
    assert r.status_code == 200
    listing = r.json()
    assert listing["object"] == "list" and len(listing["data"]) == 1
    assert listing["data"][0]["name"] == "default" and listing["data"][0]["active"] is True
    assert first[:12] == listing["data"][0]["prefix"]

    r = api.post("/auth/keys", headers=bearer(first), json={
        "name": "ci", "expires_in_days": 30, "requests_per_minute": 5,
        "requests_per_day": 1000})
    assert r.status_code == 201, r.text
    created = r.json()
    second = created["api_key"]
    assert second.startswith("cog-") and second != first
    assert created["name"] == "ci" and created["prefix"] == second[:12]
    assert created["requests_per_minute"] == 5 and created["requests_per_hour"] is None
    assert created["requests_per_day"] == 1000 and created["revoked_at"] is None
    expires = datetime.fromisoformat(created["expires_at"])
    assert abs(expires - (datetime.now(UTC) + timedelta(days=30))) < timedelta(minutes=1)

    # Both keys work and see the same org's keys: metadata only, never a key or its hash.
    r = api.get("/auth/keys", headers=bearer(second))
    assert r.status_code == 200
    data = r.json()["data"]
    assert [k["id"] for k in data][-1] == created["id"] and len(data) == 2
    for k in data:
        assert "api_key" not in k and "key_hash" not in k
        assert first not in r.text and second not in r.text

    # Revoke the second key: refused at once (its resolution was cached by the call above).
    r = api.delete(f"/auth/keys/{created['id']}", headers=bearer(first))
    assert r.status_code == 200 and r.json() == {
        "id": created["id"], "object": "api_key", "revoked": True}
    assert_openai_error(api.get("/auth/keys", headers=bearer(second)), 401,
                        code="invalid_api_key")
    assert_openai_error(api.get("/v1/models", headers=bearer(second)), 401)
    r = api.get("/auth/keys", headers=bearer(first))
    revoked = next(k for k in r.json()["data"] if k["id"] == created["id"])
    assert revoked["revoked_at"] is not None and revoked["active"] is False
    # Revoking again is harmless and keeps the first revocation time.
    assert api.delete(f"/auth/keys/{created['id']}", headers=bearer(first)).status_code == 200
    again = next(k for k in api.get("/auth/keys", headers=bearer(first)).json()["data"]
                 if k["id"] == created["id"])
    assert again["revoked_at"] == revoked["revoked_at"]

    # A key may revoke itself (the way to retire a leaked last key).
    first_id = next(k["id"] for k in r.json()["data"] if k["name"] == "default")
    assert api.delete(f"/auth/keys/{first_id}", headers=bearer(first)).status_code == 200
    assert_openai_error(api.get("/auth/keys", headers=bearer(first)), 401)


def test_secrets_are_stored_only_hashed(api: TestClient, pg_dsn: str) -> None:
    password = "s3cret pass phrase"
    reg = register(api, password=password)
    extra = api.post("/auth/keys", headers=bearer(reg["api_key"]),
                     json={"requests_per_hour": 42}).json()["api_key"]
    org = db(pg_dsn, "SELECT * FROM organizations WHERE id = $1", reg["organization_id"])[0]
    stored = org["password_hash"]
    scheme, n, r, p, salt, digest = stored.split("$")
    assert (scheme, n, r, p) == ("scrypt", str(2**14), "8", "1")
    assert len(salt) == 24 and len(digest) == 44  # base64 of 16 and 32 bytes
    assert password not in str(dict(org))
    assert verify_password(stored, password) and not verify_password(stored, password + "x")
    assert not verify_password("garbage", password)

    keys = db(pg_dsn, "SELECT * FROM api_keys WHERE org_id = $1", reg["organization_id"])
    assert {k["key_hash"] for k in keys} == {
        hashlib.sha256(k.encode()).hexdigest() for k in (reg["api_key"], extra)}
    for row in keys:
        assert reg["api_key"] not in str(dict(row)) and extra not in str(dict(row))
    assert sorted(k["requests_per_hour"] or 0 for k in keys) == [0, 42]


def test_expired_key_is_refused(api: TestClient, pg_dsn: str) -> None:
    owner = register(api)["api_key"]
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    r = api.post("/auth/keys", headers=bearer(owner), json={"expires_at": soon})
    assert r.status_code == 201
    assert datetime.fromisoformat(r.json()["expires_at"]) == datetime.fromisoformat(soon)
    key, key_id = r.json()["api_key"], r.json()["id"]
    # Make it expire before it is ever resolved (nothing cached).
    db(pg_dsn, "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1",
       key_id)
    assert_openai_error(api.get("/auth/keys", headers=bearer(key)), 401)
    listed = next(k for k in api.get("/auth/keys", headers=bearer(owner)).json()["data"]
                  if k["id"] == key_id)
    assert listed["active"] is False and listed["revoked_at"] is None


def test_orgs_cannot_see_or_revoke_each_others_keys(api: TestClient) -> None:
    a, b = register(api)["api_key"], register(api)["api_key"]
    b_keys = api.get("/auth/keys", headers=bearer(b)).json()["data"]
    a_keys = api.get("/auth/keys", headers=bearer(a)).json()["data"]
    assert {k["id"] for k in a_keys}.isdisjoint({k["id"] for k in b_keys})

    # B's key id looks exactly like an id that does not exist.
    err = assert_openai_error(api.delete(f"/auth/keys/{b_keys[0]['id']}", headers=bearer(a)),
                              404, code="not_found")
    missing = assert_openai_error(
        api.delete("/auth/keys/00000000-0000-0000-0000-000000000000", headers=bearer(a)), 404)
    assert err["message"].replace(b_keys[0]["id"], "X") == missing["message"].replace(
        "00000000-0000-0000-0000-000000000000", "X")
    assert_openai_error(api.delete("/auth/keys/%00", headers=bearer(a)), 404)

    assert api.get("/auth/keys", headers=bearer(b)).json()["data"] == b_keys
    assert b_keys[0]["revoked_at"] is None


def test_registration_can_be_disabled(tmp_path: Path, redis_url: str, pg_dsn: str,
                                      mock_server: MockUpstream) -> None:
    with serve(tmp_path, redis_url, pg_dsn, mock_server.url, allow_registration=False) as c:
        r = c.post("/auth/register",
                   json={"name": "x", "email": unique_email(), "password": "longenough"})
        assert_openai_error(r, 403, code="registration_disabled")
        # The operator can still create organizations.
        assert c.post("/admin/organizations", headers=ADMIN, json={"name": "x"}).status_code \
            == 201


def test_duplicate_email_conflicts(api: TestClient) -> None:
    email = unique_email()
    register(api, email=email)
    for body, headers, path in [
        ({"name": "x", "email": email.upper(), "password": "longenough"}, {}, "/auth/register"),
        ({"name": "x", "email": f"  {email} "}, ADMIN, "/admin/organizations"),
    ]:
        err = assert_openai_error(api.post(path, json=body, headers=headers), 409,
                                  type_="invalid_request_error", code="conflict")
        assert err["param"] == "email"


# ---------------------------------------------------------------- validation

GOOD_REG = {"name": "Acme", "email": "ok@example.com", "password": "longenough"}


@pytest.mark.parametrize(("body", "param", "fragment"), [
    ({**GOOD_REG, "email": "not-an-email"}, "email", "email address"),
    ({**GOOD_REG, "email": "a@b"}, "email", "email address"),
    ({**GOOD_REG, "email": "a\x00b@example.com"}, "email", "NUL"),
    ({**GOOD_REG, "email": 7}, "email", "string"),
    ({**GOOD_REG, "password": "short"}, "password", "at least 8"),
    ({**GOOD_REG, "password": ["x" * 9]}, "password", "string"),
    ({**GOOD_REG, "password": " " * 10}, "password", "empty"),
    ({**GOOD_REG, "name": 123}, "name", "string"),
    ({**GOOD_REG, "name": "   "}, "name", "empty"),
    ({**GOOD_REG, "name": "a\x00b"}, "name", "NUL"),
    ({**GOOD_REG, "name": "x" * 201}, "name", "200"),
    ({**GOOD_REG, "admin": True}, "admin", "Unknown field"),
    ({k: v for k, v in GOOD_REG.items() if k != "password"}, "password", "required"),
])
def test_register_validation(api: TestClient, body: dict[str, Any], param: str,
                             fragment: str) -> None:
    err = assert_openai_error(api.post("/auth/register", json=body), 400,
                              type_="invalid_request_error")
    assert err["param"] == param and fragment in err["message"], err


@pytest.mark.parametrize("raw", [b"", b"{not json", b"[1, 2]", b'"x"'])
def test_register_rejects_non_object_bodies(api: TestClient, raw: bytes) -> None:
    r = api.post("/auth/register", content=raw, headers={"content-type": "application/json"})
    assert_openai_error(r, 400)


@pytest.mark.parametrize(("body", "param", "fragment"), [
    ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at", "future"),
    ({"expires_at": "next tuesday"}, "expires_at", "ISO-8601"),
    ({"expires_at": "9999-12-31T23:59:59-14:00"}, "expires_at", "ISO-8601"),
    ({"expires_at": 1700000000}, "expires_at", "string"),
    ({"expires_at": "2099-01-01T00:00:00Z", "expires_in_days": 3}, "expires_in_days", "either"),
    ({"expires_in_days": 0}, "expires_in_days", "at least 1"),
    ({"expires_in_days": 3651}, "expires_in_days", "at most 3650"),
    ({"expires_in_days": True}, "expires_in_days", "integer"),
    ({"requests_per_minute": 0}, "requests_per_minute", "at least 1"),
    ({"requests_per_hour": "100"}, "requests_per_hour", "integer"),
    ({"requests_per_day": 2**31}, "requests_per_day", "at most"),
    ({"name": "n" * 101}, "name", "100"),
    ({"name": 5}, "name", "string"),
    ({"scopes": ["all"]}, "scopes", "Unknown field"),
    # A key's own windows, where given, nest like the org's (minute <= hour <= day).
    ({"requests_per_minute": 10, "requests_per_hour": 5}, "requests_per_minute", "nest"),
    ({"requests_per_hour": 100, "requests_per_day": 99}, "requests_per_hour", "nest"),
    ({"requests_per_minute": 10, "requests_per_day": 9}, "requests_per_minute", "nest"),
])
def test_create_key_validation(api: TestClient, body: dict[str, Any], param: str,
                               fragment: str) -> None:
    owner = _owner(api)
    err = assert_openai_error(api.post("/auth/keys", json=body, headers=bearer(owner)), 400)
    assert err["param"] == param and fragment in err["message"], err


_OWNER: list[str] = []


def _owner(api: TestClient) -> str:
    if not _OWNER:
        _OWNER.append(register(api)["api_key"])
    return _OWNER[0]


def test_key_limits_that_nest_are_accepted(api: TestClient) -> None:
    for body in ({"requests_per_minute": 5, "requests_per_hour": 5, "requests_per_day": 5},
                 {"requests_per_minute": 50, "requests_per_day": 60},
                 {"requests_per_hour": 7}):
        r = api.post("/auth/keys", json=body, headers=bearer(_owner(api)))
        assert r.status_code == 201, (body, r.text)


def test_key_endpoints_need_a_key(api: TestClient) -> None:
    for method, path in [("GET", "/auth/keys"), ("POST", "/auth/keys"),
                         ("DELETE", "/auth/keys/some-id")]:
        assert_openai_error(api.request(method, path, json={}), 401, code="invalid_api_key")
        # The operator key is not an organization's key.
        assert_openai_error(api.request(method, path, json={}, headers=ADMIN), 401)
    # Authentication is checked before the body.
    assert_openai_error(api.post("/auth/keys", content=b"junk", headers=bearer(new_key())), 401)


# ---------------------------------------------------------------- operator

def test_admin_endpoints_refuse_other_keys(api: TestClient) -> None:
    org_key = register(api)["api_key"]
    calls = [("POST", "/admin/organizations", {"name": "x"}), ("GET", "/admin/organizations",
                                                                None),
             ("POST", "/admin/organizations/any/disable", None),
             ("POST", "/admin/organizations/any/enable", None)]
    for method, path, body in calls:
        for headers in ({}, bearer(org_key), bearer(new_key())):
            assert_openai_error(api.request(method, path, json=body, headers=headers), 401)


def test_admin_manages_organizations(api: TestClient) -> None:
    email = unique_email()
    r = api.post("/admin/organizations", headers=ADMIN, json={"name": "Globex", "email": email})
    assert r.status_code == 201, r.text
    org_id, key = r.json()["organization_id"], r.json()["api_key"]
    listed = {o["id"]: o for o in api.get("/admin/organizations", headers=ADMIN).json()["data"]}
    assert listed[org_id]["name"] == "Globex" and listed[org_id]["email"] == email
    assert listed[org_id]["disabled"] is False and listed[org_id]["key_count"] == 1
    assert key not in str(listed)

    other = register(api)["api_key"]
    assert api.get("/auth/keys", headers=bearer(key)).status_code == 200  # now cached

    r = api.post(f"/admin/organizations/{org_id}/disable", headers=ADMIN)
    assert r.status_code == 200 and r.json()["disabled"] is True and r.json()["id"] == org_id
    # Refused, and told why (a valid key of a disabled org is not an "invalid key").
    assert_openai_error(api.get("/auth/keys", headers=bearer(key)), 403,
                        code="organization_disabled")
    assert_openai_error(api.get("/v1/models", headers=bearer(key)), 403,
                        code="organization_disabled")
    assert api.get("/auth/keys", headers=bearer(other)).status_code == 200  # others unaffected
    listed = {o["id"]: o for o in api.get("/admin/organizations", headers=ADMIN).json()["data"]}
    assert listed[org_id]["disabled"] is True

    r = api.post(f"/admin/organizations/{org_id}/enable", headers=ADMIN)
    assert r.status_code == 200 and r.json()["disabled"] is False
    assert api.get("/auth/keys", headers=bearer(key)).status_code == 200  # at once

    for action in ("disable", "enable"):
        assert_openai_error(api.post(f"/admin/organizations/nope/{action}", headers=ADMIN),
                            404, code="not_found")


@pytest.mark.parametrize(("body", "param"), [
    ({}, "name"), ({"name": ""}, "name"), ({"name": "x", "email": "nope"}, "email"),
    ({"name": "x", "password": "longenough"}, "password"), ({"name": ["x"]}, "name"),
])
def test_admin_create_validation(api: TestClient, body: dict[str, Any], param: str) -> None:
    err = assert_openai_error(api.post("/admin/organizations", json=body, headers=ADMIN), 400)
    assert err["param"] == param


# ---------------------------------------------------------------- OpenAPI

def test_openapi_paths_cover_every_route_and_match_validation() -> None:
    for route in ROUTES:
        for method in route.methods or ():
            if method != "HEAD":
                assert method.lower() in OPENAPI_PATHS[route.path], (route.path, method)
    for path, ops in OPENAPI_PATHS.items():
        for op in ops.values():
            for status, resp in op["responses"].items():
                schema = resp["content"]["application/json"]["schema"]
                if not status.startswith("2"):
                    assert schema == {"$ref": "#/components/schemas/Error"}, (path, status)
            if "requestBody" in op:
                body = op["requestBody"]["content"]["application/json"]["schema"]
                assert body["additionalProperties"] is False, path

    def body_validator(path: str) -> Any:
        s = OPENAPI_PATHS[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        return jsonschema_rs.validator_for(s)

    reg, key = body_validator("/auth/register"), body_validator("/auth/keys")
    assert reg.is_valid(GOOD_REG)
    for bad in [{**GOOD_REG, "email": "a@b"}, {**GOOD_REG, "password": "short"},
                {**GOOD_REG, "name": "  "}, {**GOOD_REG, "x": 1}, {**GOOD_REG, "name": "a\x00"},
                {**GOOD_REG, "name": "\x1f"}, {**GOOD_REG, "password": " " * 9}]:
        assert not reg.is_valid(bad), bad
    assert key.is_valid({}) and key.is_valid({"expires_at": None, "expires_in_days": 3})
    assert not key.is_valid({"expires_at": "2099-01-01T00:00:00Z", "expires_in_days": 3})
    assert not key.is_valid({"requests_per_minute": 0})
    login = body_validator("/auth/login")
    assert login.is_valid({"email": "a@example.com", "password": "x"})
    assert login.is_valid({"email": "a@example.com", "password": "x", "key_name": None})
    for bad in [{"email": "a@example.com"}, {"password": "x"},
                {"email": "a@b", "password": "x"}, {"email": "a@example.com", "password": ""},
                {"email": "a@example.com", "password": "x", "admin": True}]:
        assert not login.is_valid(bad), bad


# ---------------------------------------------------------------- schema-driven fuzz

ERROR_SCHEMA = {
    "type": "object", "required": ["error"], "additionalProperties": False,
    "properties": {"error": {
        "type": "object", "required": ["message", "type", "param", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]},
                       "code": {"type": ["string", "null"]}}}},
}


def test_fuzz_accounts_endpoints_never_500(api: TestClient) -> None:
    """Schema-generated valid and invalid requests: never a 5xx, every error OpenAI JSON."""
    import hypothesis
    import hypothesis.strategies as st
    import schemathesis
    from schemathesis.generation import GenerationMode

    doc = {"openapi": "3.1.0", "info": {"title": "accounts", "version": "1"},
           "paths": OPENAPI_PATHS,
           "components": {"schemas": {"Error": ERROR_SCHEMA}}}
    schema = schemathesis.openapi.from_dict(doc)
    owner = register(api)["api_key"]
    error_check = jsonschema_rs.validator_for(ERROR_SCHEMA)
    strategies = [
        op.ok().as_strategy(generation_mode=mode)
        # Random ids never match a real org or key, so disable/revoke cases touch nothing.
        for op in schema.get_all_operations()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    ]

    @hypothesis.settings(max_examples=150, deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(case=st.one_of(strategies))
    def run(case: Any) -> None:
        kw = case.as_transport_kwargs(base_url="http://testserver")
        auth = ADMIN if case.path.startswith("/admin") else bearer(owner)
        kw["headers"] = {**(kw.get("headers") or {}), **auth}
        if "data" in kw:
            kw["content"] = kw.pop("data")
        r = api.request(kw.pop("method"), kw.pop("url"), **{
            k: v for k, v in kw.items() if k in ("headers", "json", "content", "params")})
        if case.meta.generation.mode == GenerationMode.POSITIVE:
            # What the schema calls valid, the validation accepts (409: email taken,
            # 404: an id that does not exist; expires_at in the past is not expressible).
            body = case.body if isinstance(case.body, dict) else {}
            given = [body[f] for f in ("requests_per_minute", "requests_per_hour",
                                       "requests_per_day") if body.get(f) is not None]
            if case.path == "/auth/login":
                # A random email is not registered (JSON Schema cannot say "registered").
                assert r.status_code == 401, (kw, r.text)
            elif case.path == "/auth/keys" and case.method == "POST" and (
                    "expires_at" in body or given != sorted(given)):
                # Neither "in the future" nor "windows nest" is expressible in the schema.
                assert r.status_code in (201, 400), (kw, r.text)
            else:
                assert r.status_code in (200, 201, 404, 409), (case.path, kw, r.text)
        assert r.status_code < 500, (case.method, case.path, kw, r.text)
        assert r.headers["content-type"].startswith("application/json"), r.text
        if r.status_code >= 400:
            assert error_check.is_valid(r.json()), r.text

    run()


def test_integral_floats_count_as_integers(api: TestClient) -> None:
    # JSON Schema's "integer" includes 2.0; the validation agrees with the published schema.
    r = api.post("/auth/keys", headers=bearer(_owner(api)),
                 json={"expires_in_days": 2.0, "requests_per_minute": 7.0})
    assert r.status_code == 201 and r.json()["requests_per_minute"] == 7
    err = assert_openai_error(api.post("/auth/keys", headers=bearer(_owner(api)),
                                       json={"requests_per_minute": 7.5}), 400)
    assert err["param"] == "requests_per_minute"
