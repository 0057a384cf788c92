"""``POST /auth/login``: email and password → a new API key for the org; the same 401 for an
unknown email, a wrong password and an account without one (after the same one KDF run);
403 for a disabled org only once the password matched; throttled per client address and per
email's failures.

In process (TestClient, real Redis/Postgres) for the answers and the KDF count; through
real ``cognitude serve`` processes, with clients bound to different loopback addresses, for
the throttles.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.testclient import TestClient

from cognitude.app import CognitudeApp
from cognitude.config import parse
from cognitude.identity import passwords
from cognitude.identity.apikeys import new_key
from cognitude.mock_upstream import MockUpstream
from tests.conftest import assert_openai_error

ADMIN_ENV = "COG_TEST_LOGIN_ADMIN_KEY"
ADMIN_KEY = new_key()
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
PASSWORD = "correct horse battery"
BAD_LOGIN = {"message": "Invalid email or password.", "type": "invalid_request_error",
             "param": None, "code": "invalid_credentials"}


def email() -> str:
    return f"login-{os.urandom(5).hex()}@example.com"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def serve(tmp_path: Path, redis_url: str, pg_dsn: str, mock_server: MockUpstream,
          monkeypatch: pytest.MonkeyPatch, redis_client: Any) -> Any:
    """An in-process app; ``redis_client`` flushed Redis, so every throttle starts at 0."""
    monkeypatch.setenv(ADMIN_ENV, ADMIN_KEY)

    def factory(**auth: Any) -> TestClient:
        cfg = parse({
            "data_dir": str(tmp_path),
            "redis": {"url": redis_url, "socket_timeout_ms": 500},
            "postgres": {"dsn": pg_dsn},
            "cache": {"cold_tier": False},
            "providers": {"mock": {"base_url": mock_server.url + "/v1",
                                   "models": ["gpt-4o-mini"]}},
            "auth": {"admin_key_env": ADMIN_ENV, "register_per_hour": 1000,
                     "login_per_hour": 1000, **auth},
        }, "test", env={})
        return TestClient(CognitudeApp(cfg))  # type: ignore[arg-type]

    return factory


@pytest.fixture
def kdf_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every password verification the app runs (the stored hash it was checked against)."""
    runs: list[str] = []
    real = passwords.verify_password

    def counting(stored: str, password: str) -> bool:
        runs.append(stored)
        return real(stored, password)

    monkeypatch.setattr(passwords, "verify_password", counting)
    return runs


def register(c: TestClient, address: str) -> dict[str, Any]:
    r = c.post("/auth/register", json={"name": "Login", "email": address, "password": PASSWORD})
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_login_returns_a_new_working_key(serve, pg_dsn: str) -> None:
    with serve() as c:
        address = email()
        reg = register(c, address)
        r = c.post("/auth/login", json={"email": address.upper(), "password": PASSWORD,
                                        "key_name": "laptop"})
        assert r.status_code == 201, r.text
        body = r.json()
        assert set(body) == {"organization_id", "api_key", "key_id"}
        assert body["organization_id"] == reg["organization_id"]
        assert body["api_key"].startswith("cog-") and body["api_key"] != reg["api_key"]
        listed = c.get("/auth/keys", headers=bearer(body["api_key"])).json()["data"]
        assert {k["name"] for k in listed} == {"default", "laptop"}
        assert next(k for k in listed if k["name"] == "laptop")["id"] == body["key_id"]
        # Stored like every other key: its SHA-256, never the key.
        rows = asyncio.run(_fetch(pg_dsn, "SELECT key_hash FROM api_keys WHERE id = $1",
                                  body["key_id"]))
        assert rows == [hashlib.sha256(body["api_key"].encode()).hexdigest()]
        r = c.post("/auth/login", json={"email": address, "password": PASSWORD})
        assert r.status_code == 201
        names = [k["name"] for k in c.get("/auth/keys", headers=bearer(body["api_key"]))
                 .json()["data"]]
        assert names.count("login") == 1  # the default name


async def _fetch(dsn: str, sql: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return [r[0] for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


def test_every_failure_looks_the_same_and_costs_one_kdf(serve, kdf_runs: list[str]) -> None:
    with serve() as c:
        known = email()
        register(c, known)
        no_password = email()
        assert c.post("/admin/organizations", headers=ADMIN,
                      json={"name": "Op", "email": no_password}).status_code == 201
        kdf_runs.clear()
        for body in ({"email": known, "password": PASSWORD + "!"},
                     {"email": email(), "password": PASSWORD},
                     {"email": no_password, "password": PASSWORD},
                     {"email": no_password, "password": "x"}):
            before = len(kdf_runs)
            err = assert_openai_error(c.post("/auth/login", json=body), 401)
            assert err == BAD_LOGIN, (body, err)
            # One full scrypt run each: unknown emails are checked against a dummy hash,
            # so answer time does not tell which emails are registered.
            assert len(kdf_runs) == before + 1
            assert kdf_runs[-1].startswith(f"scrypt${passwords.SCRYPT_N}$")


def test_disabled_org_is_told_only_after_the_password_matched(serve) -> None:
    with serve() as c:
        address = email()
        org_id = register(c, address)["organization_id"]
        assert c.post(f"/admin/organizations/{org_id}/disable", headers=ADMIN).status_code == 200
        err = assert_openai_error(c.post("/auth/login", json={"email": address,
                                                              "password": "wrong one"}), 401)
        assert err == BAD_LOGIN
        assert_openai_error(c.post("/auth/login", json={"email": address, "password": PASSWORD}),
                            403, code="organization_disabled")
        assert c.post(f"/admin/organizations/{org_id}/enable", headers=ADMIN).status_code == 200
        assert c.post("/auth/login", json={"email": address, "password": PASSWORD}
                      ).status_code == 201


def test_login_works_with_registration_off(serve, pg_dsn: str) -> None:
    address = email()

    async def seed() -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute("INSERT INTO organizations (name, email, password_hash)"
                               " VALUES ('Seeded', $1, $2)", address,
                               passwords.hash_password_sync(PASSWORD))
        finally:
            await conn.close()

    asyncio.run(seed())
    with serve(allow_registration=False) as c:
        assert_openai_error(c.post("/auth/register", json={
            "name": "x", "email": email(), "password": PASSWORD}), 403)
        r = c.post("/auth/login", json={"email": address, "password": PASSWORD})
        assert r.status_code == 201, r.text


@pytest.mark.parametrize(("body", "param"), [
    ({"password": PASSWORD}, "email"), ({"email": "nope", "password": PASSWORD}, "email"),
    ({"email": "a@example.com"}, "password"), ({"email": "a@example.com", "password": 5},
                                               "password"),
    ({"email": "a@example.com", "password": "x", "key_name": "k" * 101}, "key_name"),
    ({"email": "a@example.com", "password": "x", "remember": True}, "remember"),
])
def test_login_validation(serve, body: dict[str, Any], param: str) -> None:
    with serve() as c:
        assert assert_openai_error(c.post("/auth/login", json=body), 400)["param"] == param


def test_throttled_attempts_never_reach_the_kdf(serve, kdf_runs: list[str]) -> None:
    with serve(login_per_hour=2) as c:
        for _ in range(2):
            assert_openai_error(c.post("/auth/login", json={"email": email(), "password": "x"}),
                                401)
        assert len(kdf_runs) == 2
        r = c.post("/auth/login", json={"email": email(), "password": "x"})
        assert_openai_error(r, 429, "rate_limit_exceeded")
        assert 3590 < int(r.headers["retry-after"]) <= 3600
        assert len(kdf_runs) == 2


# ---------------------------------------------------------------- throttles, real server


def client_from(url: str, host: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=30,
                             transport=httpx.AsyncHTTPTransport(local_address=host))


async def test_login_throttled_per_address(proxy_factory, mock, redis_client) -> None:
    p = proxy_factory(env={"COGNITUDE_AUTH_LOGIN_PER_HOUR": "3"})
    async with client_from(p.url, "127.0.0.3") as c, client_from(p.url, "127.0.0.4") as other:
        # Any attempt counts, a malformed one included (each with a different email, so the
        # per-email failure count is not what stops them).
        assert_openai_error(await c.post("/auth/login", json={"email": "bad"}), 400)
        for _ in range(2):
            assert_openai_error(await c.post("/auth/login", json={
                "email": email(), "password": "x"}), 401)
        r = await c.post("/auth/login", json={"email": email(), "password": "x"})
        err = assert_openai_error(r, 429, "rate_limit_exceeded")
        assert "login attempts from this address" in err["message"]
        assert int(r.headers["retry-after"]) >= 3590
        assert_openai_error(await other.post("/auth/login", json={
            "email": email(), "password": "x"}), 401)


async def test_failed_logins_per_email_are_capped_exactly(proxy_factory, mock,
                                                          redis_client) -> None:
    """12 concurrent wrong guesses from 12 addresses, limit 4: exactly 4 are checked; then
    even the right password waits for the window (the email is locked for the hour)."""
    p = proxy_factory(env={"COGNITUDE_AUTH_LOGIN_PER_HOUR": "4"})
    clients = [client_from(p.url, f"127.0.1.{i}") for i in range(1, 15)]
    try:
        address = email()
        r = await clients[0].post("/auth/register", json={
            "name": "Guessed", "email": address, "password": PASSWORD})
        assert r.status_code == 201, r.text
        rs = await asyncio.gather(*(c.post("/auth/login", json={
            "email": address, "password": f"guess {i}"}) for i, c in enumerate(clients[:12])))
        codes = sorted(r.status_code for r in rs)
        assert codes == [401] * 4 + [429] * 8, codes
        r = await clients[12].post("/auth/login", json={"email": address, "password": PASSWORD})
        err = assert_openai_error(r, 429)
        assert "failed logins for this email" in err["message"]
        assert int(r.headers["retry-after"]) >= 3590
    finally:
        for c in clients:
            await c.aclose()


async def test_a_right_password_gives_its_try_back(proxy_factory, mock, redis_client) -> None:
    p = proxy_factory(env={"COGNITUDE_AUTH_LOGIN_PER_HOUR": "3"})
    clients = [client_from(p.url, f"127.0.2.{i}") for i in range(1, 8)]
    try:
        address = email()
        assert (await clients[0].post("/auth/register", json={
            "name": "Refund", "email": address, "password": PASSWORD})).status_code == 201
        wrong, right = {"email": address, "password": "nope"}, {"email": address,
                                                                "password": PASSWORD}
        codes = [(await c.post("/auth/login", json=body)).status_code
                 for c, body in zip(clients, [wrong, right, right, wrong, wrong, wrong],
                                    strict=False)]
        # Successes do not count: the 3 failures allowed are all still there.
        assert codes == [401, 201, 201, 401, 401, 429], codes
    finally:
        for c in clients:
            await c.aclose()
