"""The usage ledger end to end: every proxied request leaves exactly one row in Postgres,
whatever happens to Postgres, the proxy or the client."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from tests.conftest import chat


async def rows_for(dsn: str, org_id: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch("SELECT * FROM usage_log WHERE org_id = $1 ORDER BY ts", org_id)
    finally:
        await conn.close()


async def wait_rows(dsn: str, org_id: str, n: int, timeout: float = 20.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    rows: list[Any] = []
    while time.monotonic() < deadline:
        rows = await rows_for(dsn, org_id)
        if len(rows) >= n:
            await asyncio.sleep(0.3)  # would a duplicate still arrive?
            return await rows_for(dsn, org_id)
        await asyncio.sleep(0.1)
    return rows


async def test_every_kind_of_request_leaves_one_correct_row(client, org_factory, mock, pg_dsn):
    # 5 admitted below (the unknown model is refused before the gate), the 6th is limited.
    org = await org_factory(rpm=5)
    sent: dict[str, dict[str, Any]] = {}

    async def go(body: dict[str, Any], expect: int, **kw: Any) -> httpx.Response:
        r = await client.post("/v1/chat/completions", json=body, headers=org.headers, **kw)
        assert r.status_code == expect, r.text
        sent[r.headers["x-request-id"]] = {"status": expect, "body": body, "resp": r}
        await asyncio.sleep(0.05)
        return r

    await go(chat("ledger miss", user="end-user-7"), 200)
    await go(chat("ledger miss", user="end-user-7"), 200)  # hit
    await go(chat("ledger stream", stream=True, stream_options={"include_usage": True}), 200)
    mock.fail("500")
    await go(chat("ledger upstream error"), 502)
    await go(chat("ledger unknown model", model="gpt-nope"), 404)
    await go(chat("ledger sixth"), 200)
    await go(chat("ledger limited"), 429)
    rows = await wait_rows(pg_dsn, org.org_id, len(sent))
    assert len(rows) == len(sent)
    by_id = {r["request_id"]: r for r in rows}
    assert set(by_id) == set(sent)
    for rid, s in sent.items():
        row = by_id[rid]
        assert row["status_code"] == s["status"]
        assert row["org_id"] == org.org_id and row["key_id"]
        assert row["endpoint"] == "chat"
        assert row["latency_ms"] >= row["upstream_ms"] >= 0
        assert row["overhead_ms"] >= 0
    miss, hit = (by_id[rid] for rid in list(sent)[:2])
    assert miss["cache_status"] == "MISS" and hit["cache_status"] == "HIT"
    usage = orjson.loads(sent[miss["request_id"]]["resp"].content)["usage"]
    for row in (miss, hit):
        assert row["prompt_tokens"] == usage["prompt_tokens"]
        assert row["completion_tokens"] == usage["completion_tokens"]
        assert row["model_requested"] == row["model_used"] == "gpt-4o-mini"
        assert row["provider"] == "mock"
        assert row["end_user"] == "end-user-7"
        assert row["baseline_cost_micros"] > 0
    # gpt-4o-mini: $0.15 / $0.60 per million tokens, integer micro-USD rounded half up.
    expected = (150_000 * usage["prompt_tokens"] + 600_000 * usage["completion_tokens"]
                + 500_000) // 1_000_000
    assert miss["cost_micros"] == miss["baseline_cost_micros"] == expected
    assert hit["cost_micros"] == 0  # a hit costs nothing; the baseline is the saving
    stream_row = by_id[list(sent)[2]]
    assert stream_row["stream"] is True and stream_row["completion_tokens"] > 0
    errors = {r["status_code"]: r["error_type"] for r in rows if r["status_code"] >= 400}
    assert errors == {502: "upstream_500", 404: "model_not_found", 429: "rate_limit_exceeded"}


async def test_unauthenticated_requests_are_not_recorded(client, pg_dsn):
    conn = await asyncpg.connect(pg_dsn)
    try:
        before = await conn.fetchval("SELECT count(*) FROM usage_log WHERE org_id IS NULL")
        r = await client.post("/v1/chat/completions", json=chat(),
                              headers={"Authorization": "Bearer cog-bogus"})
        assert r.status_code == 401
        await asyncio.sleep(0.5)
        after = await conn.fetchval("SELECT count(*) FROM usage_log WHERE org_id IS NULL")
    finally:
        await conn.close()
    assert before == after == 0


class TcpCut:
    """A loopback TCP forwarder that can cut every connection and refuse new ones: from the
    proxy's side, exactly what a Postgres crash or network partition looks like."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sock.listen(64)
        self.up = True
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        a.close()  # each socket is the reading side of exactly one pipe

    def cut(self) -> None:
        self.up = False
        with self.lock:
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.conns.clear()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.sock.close()


async def test_postgres_lost_mid_load_loses_and_duplicates_nothing(
        proxy_factory, org_factory, pg_dsn, mock):
    host_port = pg_dsn.split("@", 1)[1].split("/", 1)[0]
    cut = TcpCut(int(host_port.split(":")[1]))
    try:
        # Short key-cache TTL: keys must keep working from the stale cache during the outage.
        p = proxy_factory("[auth]\nkey_cache_ttl_s = 0.5\n",
                          pg_dsn=pg_dsn.replace(host_port, f"127.0.0.1:{cut.port}"))
        org = await org_factory(rpm=10_000)
        ids: list[str] = []
        async with httpx.AsyncClient(base_url=p.url, timeout=10) as c:
            for i in range(150):
                if i == 40:
                    cut.cut()
                if i == 110:
                    cut.restore()
                r = await c.post("/v1/chat/completions", json=chat(f"outage {i}"),
                                 headers=org.headers)
                assert r.status_code == 200, (i, r.text)
                ids.append(r.headers["x-request-id"])
                await asyncio.sleep(0.01)
        rows = await wait_rows(pg_dsn, org.org_id, len(ids), timeout=30)
        assert sorted(r["request_id"] for r in rows) == sorted(ids)
    finally:
        cut.close()


async def test_postgres_process_stopped_and_restarted_mid_load(
        proxy_factory, redis_url, mock, tmp_path):
    """A real stop of the PostgreSQL server (backends killed, in-flight transactions gone)
    and a restart, mid-load. A private server is used so the rest of the suite is untouched;
    the forwarder gives the restarted server (on a new port) the proxy's old address."""
    from cognitude.embedded import EmbeddedServices
    from tests.conftest import _migrate, make_org

    svc = EmbeddedServices(tmp_path / "pg", redis=False, postgres=True, fast=True)
    svc.start()
    try:
        dsn = svc.postgres_dsn or ""
        await _migrate(dsn)
        host_port = dsn.split("@", 1)[1].split("/", 1)[0]
        fwd = TcpCut(int(host_port.split(":")[1]))
        p = proxy_factory("[auth]\nkey_cache_ttl_s = 0.5\n", redis_url=redis_url,
                          pg_dsn=dsn.replace(host_port, f"127.0.0.1:{fwd.port}"))
        org = await make_org(dsn, rpm=10_000)
        ids: list[str] = []
        async with httpx.AsyncClient(base_url=p.url, timeout=10) as c:
            for i in range(120):
                if i == 30:
                    svc.stop()  # SIGINT fast shutdown: every connection is dropped
                    fwd.cut()
                if i == 90:
                    svc.start()
                    new = (svc.postgres_dsn or "").split("@", 1)[1].split("/", 1)[0]
                    fwd.target = int(new.split(":")[1])
                    dsn = svc.postgres_dsn or ""
                    fwd.restore()
                r = await c.post("/v1/chat/completions", json=chat(f"restart {i}"),
                                 headers=org.headers)
                assert r.status_code == 200, (i, r.text)
                ids.append(r.headers["x-request-id"])
                await asyncio.sleep(0.01)
        rows = await wait_rows(dsn, org.org_id, len(ids), timeout=30)
        assert sorted(r["request_id"] for r in rows) == sorted(ids)
        fwd.close()
    finally:
        svc.stop()


async def test_sigterm_under_load_loses_no_row(proxy_factory, org_factory, pg_dsn, mock):
    p = proxy_factory()
    org = await org_factory(rpm=10_000)
    mock.configure(latency_ms=20)
    ids: list[str] = []

    async def worker(c: httpx.AsyncClient, w: int) -> None:
        for i in range(1000):
            try:
                r = await c.post("/v1/chat/completions", json=chat(f"term {w} {i}"),
                                 headers=org.headers)
            except httpx.HTTPError:
                return  # the server went away: stop
            if r.status_code == 200:
                ids.append(r.headers["x-request-id"])

    async with httpx.AsyncClient(base_url=p.url, timeout=10) as c:
        tasks = [asyncio.create_task(worker(c, w)) for w in range(8)]
        await asyncio.sleep(1.0)
        p.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert p.proc.wait(30) == 0
    assert len(ids) > 20
    rows = await wait_rows(pg_dsn, org.org_id, len(ids), timeout=10)
    got = [r["request_id"] for r in rows]
    assert len(got) == len(set(got))  # no duplicate
    assert set(ids) <= set(got)  # every answered request is in the ledger


async def test_queue_overflow_spills_then_replays_exactly(proxy_factory, org_factory, pg_dsn,
                                                          mock):
    # A queue of 2 and a slow flush: most records overflow to the spill file.
    p = proxy_factory("[usage]\nqueue_max = 2\nflush_rows = 1000\nflush_interval_ms = 3000\n")
    org = await org_factory(rpm=10_000)
    async with httpx.AsyncClient(base_url=p.url, timeout=10) as c:
        ids = [(await c.post("/v1/chat/completions", json=chat(f"spill {i}"),
                             headers=org.headers)).headers["x-request-id"] for i in range(40)]
    spill = p.config_path.parent / "data" / "spill"
    assert any(spill.iterdir())  # the overflow really went to disk
    rows = await wait_rows(pg_dsn, org.org_id, len(ids), timeout=30)
    assert sorted(r["request_id"] for r in rows) == sorted(ids)


async def test_client_disconnect_mid_stream_is_billed_for_what_it_got(
        client, org_factory, pg_dsn, mock):
    pytest.importorskip("cognitude.ledger.tokens")
    org = await org_factory()
    mock.configure(chunk_delay_ms=100)
    words = " ".join(f"w{i}" for i in range(30))
    received = b""
    async with client.stream("POST", "/v1/chat/completions",
                             json=chat(words, stream=True), headers=org.headers) as r:
        async for chunk in r.aiter_raw():
            received += chunk
            if received.count(b"data: ") >= 6:
                break
    rows = await wait_rows(pg_dsn, org.org_id, 1)
    assert len(rows) == 1
    row = rows[0]
    assert row["status_code"] == 499 and row["error_type"] == "client_disconnected"
    assert row["stream"] is True
    # Tokens counted with the real tokenizer from what was streamed before the disconnect:
    # some, but not the whole reply.
    full = len(("mock reply to: " + words).split())
    assert 0 < row["completion_tokens"] < full * 3
    assert row["prompt_tokens"] > 0
    assert row["cost_micros"] is not None


async def test_analytics_usage_end_to_end(client, org_factory, pg_dsn, mock):
    from tests.conftest import assert_openai_error

    org, other = await org_factory(), await org_factory()
    for i in range(3):
        await client.post("/v1/chat/completions", json=chat(f"report {i}"), headers=org.headers)
    await client.post("/v1/chat/completions", json=chat("report 0"), headers=org.headers)  # hit
    await client.post("/v1/chat/completions", json=chat("other org"), headers=other.headers)
    await wait_rows(pg_dsn, org.org_id, 4)
    r = await client.get("/analytics/usage", params={"group_by": "model"}, headers=org.headers)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["totals"]["requests"] == 4 and doc["totals"]["cache_hits"] == 1
    assert [d["key"] for d in doc["data"]] == ["gpt-4o-mini"]
    assert doc["totals"]["savings_usd"] > 0  # the hit's baseline
    r = await client.get("/analytics/usage", headers=other.headers)
    assert r.json()["totals"]["requests"] == 1  # strictly org-scoped
    assert_openai_error(await client.get("/analytics/usage"), 401)
    err = assert_openai_error(await client.get("/analytics/usage", params={"start": "x"},
                                               headers=org.headers), 400)
    assert err["param"] == "start"
