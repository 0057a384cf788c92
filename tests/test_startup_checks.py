"""What `cognitude serve` refuses at start and what it only warns about (DESIGN §3a, §14).

Refused, naming the variable or key: a `COGNITUDE_*` variable nobody reads (a typo), a shared
provider whose key variable is unset, credentials stored in Postgres while the encryption key
is missing, and a mock upstream port someone else holds. Warned about once: a provider whose
organizations bring their own key, and a missing encryption key (storing then answers 503).

Proxies started here without an encryption key get a database of their own (`fresh_dsn`):
the session's database may hold other tests' stored credentials, which would (rightly) stop
them from starting.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from cognitude import db
from tests.conftest import Proxy, assert_openai_error, chat, free_port, make_org, write_config

# The suite's proxies get a session encryption key by default; these tests need none.
NO_KEY: dict[str, str | None] = {"COGNITUDE_ENCRYPTION_KEY": None}


def _enc_key() -> dict[str, str]:
    return {"COGNITUDE_ENCRYPTION_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode()}


async def _execute(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def fresh_dsn(pg_dsn: str) -> Iterator[str]:
    """An empty database on the session's server, dropped after the test."""
    name = f"startup_{uuid.uuid4().hex[:12]}"
    asyncio.run(_execute(pg_dsn, f'CREATE DATABASE "{name}"'))
    yield pg_dsn.rsplit("/", 1)[0] + "/" + name
    asyncio.run(_execute(pg_dsn, f'DROP DATABASE "{name}" WITH (FORCE)'))


def test_an_unknown_cognitude_variable_stops_the_start(proxy_factory: Callable[..., Proxy]):
    with pytest.raises(RuntimeError) as info:
        proxy_factory(env={"COGNITUDE_SERVR_PORT": "9001"})
    msg = str(info.value)
    assert "exited with 2" in msg
    assert "environment variable COGNITUDE_SERVR_PORT: unknown" in msg
    assert "did you mean COGNITUDE_SERVER_PORT?" in msg
    assert "Traceback" not in msg


def test_a_shared_provider_without_its_key_stops_the_start(proxy_factory: Callable[..., Proxy]):
    with pytest.raises(RuntimeError) as info:
        proxy_factory(env={"MOCK_PROVIDER_KEY": ""})
    msg = str(info.value)
    assert "exited with 2" in msg
    assert "providers.mock.api_key_env: environment variable MOCK_PROVIDER_KEY is not set" in msg
    assert "Traceback" not in msg


def test_a_provider_for_own_keys_only_starts_with_one_warning(
        proxy_factory: Callable[..., Proxy]):
    p = proxy_factory(env={**_enc_key(), "MOCK_PROVIDER_KEY": ""},
                      provider_extra="shared_key = false")
    assert httpx.get(p.url + "/ready", timeout=5).status_code == 200
    lines = [ln for ln in p.log().splitlines() if "MOCK_PROVIDER_KEY is not set" in ln]
    assert len(lines) == 1 and "WARNING" in lines[0], p.log()
    assert "providers.mock.api_key_env" in lines[0]


def test_without_an_encryption_key_outside_embedded_postgres(
        proxy_factory: Callable[..., Proxy], fresh_dsn: str):
    """Embedded Redis, real Postgres: no development key is made up; the proxy starts, says
    so once, and POST /providers/config answers 503 naming the configured variable."""
    p = proxy_factory(redis_url="embedded", pg_dsn=fresh_dsn, env=NO_KEY,
                      extra='[auth]\nencryption_key_env = "ACME_ENCRYPTION_KEY"\n')
    assert not (p.config_path.parent / "data" / "encryption_key").exists()
    lines = [ln for ln in p.log().splitlines() if "ACME_ENCRYPTION_KEY is not set" in ln]
    assert len(lines) == 1 and "WARNING" in lines[0], p.log()
    org = asyncio.run(make_org(fresh_dsn))
    r = httpx.post(p.url + "/providers/config", headers=org.headers, timeout=10,
                   json={"provider": "mock", "api_key": "sk-own-1234567"})
    err = assert_openai_error(r, 503, code="encryption_key_missing")
    assert "ACME_ENCRYPTION_KEY" in err["message"]
    # The hot path needs no encryption key.
    r = httpx.post(p.url + "/v1/chat/completions", headers=org.headers, json=chat(), timeout=10)
    assert r.status_code == 200, r.text


def test_stored_credentials_without_the_key_stop_the_start(
        proxy_factory: Callable[..., Proxy], fresh_dsn: str):
    async def store_credentials() -> None:
        conn = await asyncpg.connect(fresh_dsn)
        try:
            await db.migrate(conn)
        finally:
            await conn.close()
        for _ in range(2):
            org = await make_org(fresh_dsn)
            await _execute(fresh_dsn, "INSERT INTO provider_credentials (org_id, provider, "
                           f"ciphertext) VALUES ('{org.org_id}', 'mock', '\\x00'::bytea)")

    asyncio.run(store_credentials())
    with pytest.raises(RuntimeError) as info:
        proxy_factory(pg_dsn=fresh_dsn, env=NO_KEY)
    msg = str(info.value)
    assert "exited with 2" in msg and "Traceback" not in msg
    assert "auth.encryption_key_env: COGNITUDE_ENCRYPTION_KEY is not set" in msg
    assert "provider credentials of 2 organization(s)" in msg
    # With a key set the same database is fine (whether it decrypts is each org's matter).
    proxy_factory(pg_dsn=fresh_dsn, env=_enc_key())


def _serve_with_mock(tmp: Path, redis_url: str, pg_dsn: str, mock_port: int
                     ) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    cfg = tmp / "config.toml"
    write_config(cfg, redis_url=redis_url, pg_dsn=pg_dsn, port=port,
                 upstream_url=f"http://127.0.0.1:{mock_port}")
    log = tmp / "serve.log"
    env = {**os.environ, **_enc_key(), "MOCK_PROVIDER_KEY": "sk-mock"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cognitude.cli", "serve", "--config", str(cfg), "--with-mock"],
            cwd=tmp, stdout=out, stderr=subprocess.STDOUT, env=env)
    return proc, f"http://127.0.0.1:{port}", log


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_taken_mock_port_fails_the_start_naming_it(tmp_path: Path, redis_url: str,
                                                     pg_dsn: str):
    """Whoever holds the port (here a socket that never answers) must not become the
    upstream: serve exits non-zero and names the port."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        mock_port = squatter.getsockname()[1]
        proc, url, log = _serve_with_mock(tmp_path, redis_url, pg_dsn, mock_port)
        try:
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                assert not _healthy(url), "serve started on a taken mock port:\n" + log.read_text()
                time.sleep(0.1)
            assert proc.poll() not in (None, 0), log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert f"127.0.0.1:{mock_port}" in text and f"port {mock_port}" in text, text
    assert "Traceback" not in text


def test_with_mock_serves_through_the_handed_over_socket(tmp_path: Path, redis_url: str,
                                                         pg_dsn: str):
    mock_port = free_port()
    proc, url, log = _serve_with_mock(tmp_path, redis_url, pg_dsn, mock_port)
    try:
        deadline = time.monotonic() + 60
        while not _healthy(url):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        org = asyncio.run(make_org(pg_dsn))
        r = httpx.post(url + "/v1/chat/completions", headers=org.headers,
                       json=chat("via fd"), timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "mock reply to: via fd"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        # The mock went with it: its port is free again.
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", mock_port))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("on", [True, False])
def test_access_log_switch(proxy_factory: Callable[..., Proxy], on: bool):
    env = {**_enc_key(), "COGNITUDE_SERVER_LOG_LEVEL": "info"}
    if on:
        env["COGNITUDE_SERVER_ACCESS_LOG"] = "true"  # off is the default
    p = proxy_factory(env=env)
    probe = f"/health?probe={uuid.uuid4().hex}"
    assert httpx.get(p.url + probe, timeout=5).status_code == 200
    line = f'"GET {probe} HTTP/1.1" 200'
    deadline = time.monotonic() + (5 if on else 1)
    while line not in p.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (line in p.log()) is on, p.log()
