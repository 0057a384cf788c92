"""Keys: hashed in Postgres behind an in-process TTL cache, or declared in config.toml."""

from __future__ import annotations

import asyncio
import hashlib

import asyncpg
import httpx

from cognitude.auth import hash_key, new_key
from tests.conftest import assert_openai_error, chat


async def test_keys_are_stored_only_as_sha256(pg_dsn, org_factory):
    org = await org_factory()
    assert org.key.startswith("cog-") and len(org.key) >= 4 + 43  # >= 32 random bytes
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch("SELECT * FROM api_keys WHERE org_id = $1", org.org_id)
    finally:
        await conn.close()
    assert len(rows) == 1
    assert rows[0]["key_hash"] == hashlib.sha256(org.key.encode()).hexdigest()
    assert all(org.key not in str(v) for v in rows[0].values())


async def test_revoked_key_stops_after_the_cache_ttl(proxy_factory, org_factory, pg_dsn, mock):
    p = proxy_factory("[auth]\nkey_cache_ttl_s = 0.3\n")
    org = await org_factory()
    async with httpx.AsyncClient(base_url=p.url, timeout=10) as c:
        r = await c.post("/v1/chat/completions", json=chat("before"), headers=org.headers)
        assert r.status_code == 200
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE key_hash = $1",
                               hash_key(org.key))
        finally:
            await conn.close()
        await asyncio.sleep(0.4)
        r = await c.post("/v1/chat/completions", json=chat("after"), headers=org.headers)
        assert_openai_error(r, 401, code="invalid_api_key")


async def test_static_keys_from_env_and_sha256(proxy_factory, mock, redis_client):
    env_key, hashed_key = new_key(), new_key()
    extra = f"""
[[auth.static_keys]]
org = "sidecar-a"
key_env = "SIDECAR_A_KEY"
requests_per_minute = 2

[[auth.static_keys]]
org = "sidecar-b"
key_sha256 = "{hash_key(hashed_key)}"
"""
    p = proxy_factory(extra, env={"SIDECAR_A_KEY": env_key})
    async with httpx.AsyncClient(base_url=p.url, timeout=10) as c:
        for i in range(2):
            r = await c.post("/v1/chat/completions", json=chat(f"a{i}"),
                             headers={"Authorization": f"Bearer {env_key}"})
            assert r.status_code == 200 and r.headers["x-ratelimit-limit"] == "2"
        r = await c.post("/v1/chat/completions", json=chat("a3"),
                         headers={"Authorization": f"Bearer {env_key}"})
        assert r.status_code == 429  # the per-key limit from config.toml
        r = await c.post("/v1/chat/completions", json=chat("b"), headers={"X-API-Key": hashed_key})
        assert r.status_code == 200 and r.headers["x-ratelimit-limit"] == "100"
    # Each static org has its own limiter state under its own hash tag.
    assert await redis_client.exists("cog:{org:sidecar-a}:rl:m") == 1
    assert await redis_client.exists("cog:{org:sidecar-b}:rl:m") == 1


async def test_static_key_env_missing_refuses_start(proxy_factory):
    import pytest

    with pytest.raises(RuntimeError, match="SIDECAR_MISSING is not set") as info:
        proxy_factory('[[auth.static_keys]]\norg = "x"\nkey_env = "SIDECAR_MISSING"\n')
    assert "Traceback" not in str(info.value)


def test_cognitude_migrate_command(pg_dsn, tmp_path):
    """`cognitude migrate` against a real DSN: applies nothing twice, says so."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "COGNITUDE_POSTGRES_DSN": pg_dsn, "COGNITUDE_REDIS_URL": "redis://x:1"}
    p = subprocess.run([sys.executable, "-m", "cognitude.cli", "migrate"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "up to date" in p.stdout
    env["COGNITUDE_POSTGRES_DSN"] = pg_dsn.rsplit("/", 1)[0] + "/no_such_db"
    p = subprocess.run([sys.executable, "-m", "cognitude.cli", "migrate"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "postgres.dsn: migration failed" in p.stderr and "Traceback" not in p.stderr


async def test_revocation_reaches_every_replica_within_a_second(
        proxy_factory, org_factory, pg_dsn, redis_client, mock):
    """Two proxies trusting their key cache for 60 s; a revocation published on the
    invalidation channel stops the key on both at once."""
    from cognitude.keys import INVALIDATION_CHANNEL

    replicas = [proxy_factory("[auth]\nkey_cache_ttl_s = 60.0\n") for _ in range(2)]
    org = await org_factory()
    clients = [httpx.AsyncClient(base_url=p.url, timeout=10) for p in replicas]
    try:
        for c in clients:
            assert (await c.post("/v1/chat/completions", json=chat("warm"),
                                 headers=org.headers)).status_code == 200
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE key_hash = $1",
                               hash_key(org.key))
        finally:
            await conn.close()
        t0 = asyncio.get_running_loop().time()
        assert await redis_client.publish(INVALIDATION_CHANNEL, f"key:{hash_key(org.key)}") == 2
        for c in clients:
            while True:
                r = await c.post("/v1/chat/completions", json=chat("after"),
                                 headers=org.headers)
                if r.status_code == 401:
                    break
                assert asyncio.get_running_loop().time() - t0 < 1.0, "still accepted after 1 s"
                await asyncio.sleep(0.02)
    finally:
        for c in clients:
            await c.aclose()


def test_key_cache_trusts_entries_briefly_without_a_subscription():
    from cognitude import config
    from cognitude.auth import UNSUBSCRIBED_TTL_S, KeyCache

    cfg = config.parse({"auth": {"key_cache_ttl_s": 30.0}}, "x", env={})
    cache = KeyCache(cfg, config.read_secrets(cfg, env={}), None)
    assert cache.ttl == UNSUBSCRIBED_TTL_S <= 1.0
    cache.subscribed = True
    assert cache.ttl == 30.0
