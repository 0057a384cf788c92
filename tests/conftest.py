"""Shared fixtures: private Valkey + PostgreSQL from the embedded launcher, the mock upstream
served over HTTP, and ``cognitude serve`` running as a real subprocess against them.

Nothing here touches the machine's shared Redis/Postgres: every server is started on a free
loopback port under the test session's temporary directory.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from cognitude import db
from cognitude.embedded import EmbeddedServices
from cognitude.identity.apikeys import create_org, new_key, store_key
from cognitude.mock_upstream import MockUpstream
from cognitude.mock_upstream.state import DEFAULT_HUGE_BYTES, DEFAULT_REDIRECT
from cognitude.providers.openai import OpenAIAdapter

REPO = Path(__file__).resolve().parent.parent
SESSION_ENCRYPTION_KEY = base64.urlsafe_b64encode(os.urandom(32)).decode()


def HEADERS_FOR(provider: str, key: str) -> dict[str, str]:  # noqa: N802 - a constant's role
    """What the lifespan gives the key cache (``Providers.headers_for``), for an OpenAI-kind
    provider, in tests that build a KeyCache themselves."""
    return OpenAIAdapter.headers(key)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServices]:
    svc = EmbeddedServices(tmp_path_factory.mktemp("embedded"), fast=True)
    svc.start()
    asyncio.run(_migrate(svc.postgres_dsn or ""))
    yield svc
    svc.stop()


async def _migrate(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await db.migrate(conn)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def redis_url(services: EmbeddedServices) -> str:
    assert services.redis_url
    return services.redis_url


@pytest.fixture(scope="session")
def pg_dsn(services: EmbeddedServices) -> str:
    assert services.postgres_dsn
    return services.postgres_dsn


@pytest.fixture
async def redis_client(redis_url: str) -> Any:
    client = aioredis.Redis.from_url(redis_url, decode_responses=False)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def mock_server() -> Iterator[MockUpstream]:
    with MockUpstream() as m:
        yield m


@pytest.fixture
def mock(mock_server: MockUpstream) -> MockUpstream:
    mock_server.reset()
    mock_server.configure(latency_ms=0, chunk_delay_ms=0, redirect_location=DEFAULT_REDIRECT,
                          huge_bytes=DEFAULT_HUGE_BYTES)
    return mock_server


@dataclass
class Org:
    org_id: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


async def make_org(dsn: str, *, rpm: int | None = None, rph: int | None = None,
                   rpd: int | None = None, name: str = "test") -> Org:
    """A fresh organization with one key (and per-org limits when given), straight in SQL."""
    conn = await asyncpg.connect(dsn)
    try:
        org_id = await create_org(conn, name)
        key = new_key()
        await store_key(conn, org_id, key, "test")
        if rpm or rph or rpd:
            await conn.execute(
                "INSERT INTO rate_limit_configs (org_id, requests_per_minute, requests_per_hour,"
                " requests_per_day) VALUES ($1, $2, $3, $4)", org_id, rpm, rph, rpd)
    finally:
        await conn.close()
    return Org(org_id, key)


async def sql(dsn: str, query: str, *args: object) -> None:
    """One statement on its own connection (tests reaching around the API on purpose)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(query, *args)
    finally:
        await conn.close()


@pytest.fixture
def org_factory(pg_dsn: str) -> Callable[..., Any]:
    async def factory(**kw: Any) -> Org:
        return await make_org(pg_dsn, **kw)
    return factory


@dataclass
class Proxy:
    url: str
    proc: subprocess.Popen[bytes]
    config_path: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def write_config(path: Path, *, redis_url: str, pg_dsn: str, upstream_url: str, port: int,
                 extra: str = "", provider_extra: str = "", max_attempts: int = 1,
                 upstream_extra: str = "") -> None:
    path.write_text(f"""
data_dir = "{path.parent / 'data'}"
[server]
port = {port}
max_body_bytes = 65536
log_level = "warning"
[redis]
url = "{redis_url}"
socket_timeout_ms = 500
[postgres]
dsn = "{pg_dsn}"
[cache]
compress_min_bytes = 400
[upstream]
connect_timeout_s = 2.0
read_timeout_s = 2.0
# One call per request: most tests inject one upstream failure and assert how it is
# answered. Retries and fallbacks (the default is 3) are tested in test_attempts.py with
# proxies of their own (upstream_extra adds keys to this table).
max_attempts = {max_attempts}
{upstream_extra}
[providers.mock]
base_url = "{upstream_url}/v1"
api_key_env = "MOCK_PROVIDER_KEY"
models = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]
{provider_extra}
{extra}
""")


def start_proxy(tmp: Path, *, redis_url: str, pg_dsn: str, upstream_url: str,
                extra: str = "", provider_extra: str = "", max_attempts: int = 1,
                upstream_extra: str = "",
                env: dict[str, str | None] | None = None) -> Proxy:
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cfg = tmp / "config.toml"
    write_config(cfg, redis_url=redis_url, pg_dsn=pg_dsn, upstream_url=upstream_url,
                 port=port, extra=extra, provider_extra=provider_extra,
                 max_attempts=max_attempts, upstream_extra=upstream_extra)
    log_path = tmp / "proxy.log"
    full_env = {**os.environ, "MOCK_PROVIDER_KEY": "sk-mock-provider-secret-123",
                # One key for the session: credentials stored by one test's proxy must not
                # stop a later proxy from starting (it refuses to start keyless while
                # Postgres holds credentials). Tests pass their own via ``env``.
                "COGNITUDE_ENCRYPTION_KEY": SESSION_ENCRYPTION_KEY,
                # Every test registers from 127.0.0.1: the throttles would refuse the
                # suite's 11th registration. Throttle tests pass low values via ``env``
                # (environment beats config file, so not via ``extra``).
                "COGNITUDE_AUTH_REGISTER_PER_HOUR": "1000000",
                "COGNITUDE_AUTH_LOGIN_PER_HOUR": "1000000",
                **(env or {})}
    # A None in ``env`` removes the variable (a test of the proxy without an encryption key).
    full_env = {k: v for k, v in full_env.items() if v is not None}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cognitude.cli", "serve", "--config", str(cfg)],
            stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=tmp,
        )
    proxy = Proxy(f"http://127.0.0.1:{port}", proc, cfg, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"proxy exited with {proc.returncode}:\n{proxy.log()}")
        try:
            if httpx.get(proxy.url + "/health", timeout=0.5).status_code == 200:
                return proxy
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    stop_proxy(proxy)
    raise RuntimeError(f"proxy did not become healthy:\n{proxy.log()}")


def stop_proxy(proxy: Proxy) -> None:
    if proxy.proc.poll() is None:
        proxy.proc.send_signal(signal.SIGTERM)
        try:
            proxy.proc.wait(10)
        except subprocess.TimeoutExpired:
            proxy.proc.kill()
            proxy.proc.wait()


@pytest.fixture(scope="session")
def proxy(tmp_path_factory: pytest.TempPathFactory, redis_url: str, pg_dsn: str,
          mock_server: MockUpstream) -> Iterator[Proxy]:
    """The shared proxy under test (default config, pointed at the private servers)."""
    p = start_proxy(tmp_path_factory.mktemp("proxy"), redis_url=redis_url, pg_dsn=pg_dsn,
                    upstream_url=mock_server.url)
    yield p
    stop_proxy(p)


@pytest.fixture
def proxy_factory(tmp_path: Path, redis_url: str, pg_dsn: str,
                  mock_server: MockUpstream) -> Iterator[Callable[..., Proxy]]:
    """Extra proxies with their own config for one test; stopped at its end."""
    started: list[Proxy] = []

    def factory(extra: str = "", **kw: Any) -> Proxy:
        kw.setdefault("redis_url", redis_url)
        kw.setdefault("pg_dsn", pg_dsn)
        kw.setdefault("upstream_url", mock_server.url)
        p = start_proxy(tmp_path / f"proxy{len(started)}", extra=extra, **kw)
        started.append(p)
        return p

    yield factory
    for p in started:
        stop_proxy(p)


@pytest.fixture
async def client(proxy: Proxy) -> Any:
    async with httpx.AsyncClient(base_url=proxy.url, timeout=10) as c:
        yield c


class CommandMonitor:
    """Client-issued Redis commands seen through MONITOR (commands run inside Lua excluded)."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.lines: list[str] = []

    async def __aenter__(self) -> CommandMonitor:
        from urllib.parse import urlsplit

        u = urlsplit(self.redis_url)
        self._reader, self._writer = await asyncio.open_connection(u.hostname, u.port)
        self._writer.write(b"MONITOR\r\n")
        await self._writer.drain()
        assert (await self._reader.readline()).startswith(b"+OK")
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Drain what arrived; MONITOR lines are "+<ts> [<db> <client>] "CMD" ..." .
        while True:
            try:
                line = await asyncio.wait_for(self._reader.readline(), 0.3)
            except TimeoutError:
                break
            if not line:
                break
            self.lines.append(line.decode(errors="replace").strip())
        self._writer.close()
        await self._writer.wait_closed()

    @property
    def commands(self) -> list[str]:
        out = []
        for line in self.lines:
            if " lua]" in line:
                continue  # executed by a script, not a round trip
            parts = line.split('"')
            if len(parts) > 1:
                out.append(parts[1].lower())
        return out


def chat(content: str = "Hello!", model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def assert_openai_error(resp: httpx.Response, status: int, type_: str | None = None,
                        code: str | None = None) -> dict[str, Any]:
    """The response is ``status`` with an OpenAI error body; returns the error object."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    if type_ is not None:
        assert err["type"] == type_, err
    if code is not None:
        assert err["code"] == code, err
    return err


async def usage_row(dsn: str, request_id: str) -> Any:
    """The ledger row of one request (``X-Request-ID``), waiting for the writer's flush."""
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(100):
            row = await conn.fetchrow("SELECT * FROM usage_log WHERE request_id = $1",
                                      request_id)
            if row is not None:
                return row
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    raise AssertionError(f"no usage row for {request_id}")
