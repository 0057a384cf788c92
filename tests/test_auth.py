"""Keys: hashed in Postgres behind an in-process TTL cache, or declared in config.toml."""

from __future__ import annotations

import asyncio
import hashlib

import asyncpg
import httpx

from cognitude.identity.apikeys import hash_key, new_key
from tests.conftest import HEADERS_FOR, assert_openai_error, chat


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
    from cognitude.gate.keys import INVALIDATION_CHANNEL

    # Other proxies of the session (the shared one) may be subscribed too.
    (_, others), = await redis_client.pubsub_numsub(INVALIDATION_CHANNEL)
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
        receivers = await redis_client.publish(INVALIDATION_CHANNEL, f"key:{hash_key(org.key)}")
        assert receivers == others + 2
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
    from cognitude.identity.keycache import UNSUBSCRIBED_TTL_S, KeyCache

    cfg = config.parse({"auth": {"key_cache_ttl_s": 30.0}}, "x", env={})
    cache = KeyCache(cfg, config.read_secrets(cfg, env={}), None, HEADERS_FOR)
    assert cache.ttl == UNSUBSCRIBED_TTL_S <= 1.0
    cache.subscribed = True
    assert cache.ttl == 30.0


class ScriptedKeyCache:
    """A KeyCache whose Postgres lookup is scripted: counts calls, can be held open."""

    @staticmethod
    def make(ttl: float = 10.0):
        from cognitude import config
        from cognitude.gate.gate import Limits
        from cognitude.identity.keycache import KeyCache, KeyInfo

        class Scripted(KeyCache):
            __slots__ = ("calls", "gate", "fail")

            async def _lookup(self, digest):
                self.calls += 1
                n = self.calls  # this lookup's answer: k1 for the first, k2 for the next...
                await self.gate.wait()
                if self.fail:
                    raise OSError("postgres down")
                return KeyInfo(f"k{n}", "org", Limits(1, 2, 3))

        cfg = config.parse({"auth": {"key_cache_ttl_s": ttl}}, "x", env={})
        cache = Scripted(cfg, config.read_secrets(cfg, env={}), None, HEADERS_FOR)
        cache.subscribed = True
        cache.calls, cache.gate, cache.fail = 0, asyncio.Event(), False
        return cache


async def test_concurrent_lookups_of_one_key_share_one_query():
    cache = ScriptedKeyCache.make()
    waiting = [asyncio.ensure_future(cache.resolve("cog-burst")) for _ in range(50)]
    await asyncio.sleep(0.01)
    cache.gate.set()
    infos = await asyncio.gather(*waiting)
    assert cache.calls == 1 and {i.key_id for i in infos} == {"k1"}
    assert cache.lookups == 1 and cache.lookup_errors == 0


async def test_a_request_giving_up_does_not_cancel_the_shared_lookup():
    cache = ScriptedKeyCache.make()
    quitter = asyncio.ensure_future(cache.resolve("cog-q"))
    stayer = asyncio.ensure_future(cache.resolve("cog-q"))
    await asyncio.sleep(0.01)
    quitter.cancel()
    cache.gate.set()
    assert (await stayer).key_id == "k1"
    assert cache.calls == 1


async def test_an_entry_in_use_is_renewed_before_it_expires_without_waiting():
    from cognitude.identity.keycache import REFRESH_AHEAD

    cache = ScriptedKeyCache.make(ttl=10.0)
    cache.gate.set()
    assert (await cache.resolve("cog-r")).key_id == "k1"
    digest = hashlib.sha256(b"cog-r").hexdigest()
    fetched, info = cache._entries[digest]
    # Age the entry past the refresh point, still inside its TTL; hold the next lookup.
    cache._entries[digest] = (fetched - 10.0 * REFRESH_AHEAD - 0.1, info)
    cache.gate.clear()
    served = asyncio.ensure_future(cache.resolve("cog-r"))
    await asyncio.sleep(0.01)
    # Answered from the entry while the new lookup is still held open: it did not wait.
    assert served.done() and served.result().key_id == "k1"
    assert cache.calls == 2 and not cache.gate.is_set() and cache.refreshes == 1
    cache.gate.set()
    await asyncio.sleep(0.01)
    assert (await cache.resolve("cog-r")).key_id == "k2"  # the background read landed
    assert cache.calls == 2


async def test_a_lookup_overtaken_by_an_invalidation_is_neither_shared_nor_cached():
    cache = ScriptedKeyCache.make()
    first = asyncio.ensure_future(cache.resolve("cog-inv"))
    await asyncio.sleep(0.01)
    cache.invalidate(hashlib.sha256(b"cog-inv").hexdigest())  # e.g. revoked meanwhile
    # A request arriving now must not ride on the lookup that began before the revocation.
    second = asyncio.ensure_future(cache.resolve("cog-inv"))
    await asyncio.sleep(0.01)
    cache.gate.set()
    assert (await first).key_id == "k1"  # that request was already on its way
    assert (await second).key_id == "k2" and cache.calls == 2
    assert (await cache.resolve("cog-inv")).key_id == "k2"  # the new lookup's answer is kept
    assert cache.calls == 2


async def test_postgres_down_keeps_known_keys_unless_invalidated_meanwhile():
    from cognitude.errors import ServiceUnavailable

    cache = ScriptedKeyCache.make(ttl=0.05)
    cache.gate.set()
    await cache.resolve("cog-known")
    await asyncio.sleep(0.06)
    cache.fail = True
    assert (await cache.resolve("cog-known")).key_id == "k1"  # stale, but served
    await asyncio.sleep(0.06)
    cache.gate.clear()
    pending = asyncio.ensure_future(cache.resolve("cog-known"))
    await asyncio.sleep(0.01)
    cache.invalidate()
    cache.gate.set()
    try:
        await pending
    except ServiceUnavailable:
        pass
    else:
        raise AssertionError("an invalidated key must not be served from a stale entry")


async def test_close_cancels_the_lookups_still_running():
    cache = ScriptedKeyCache.make()
    pending = asyncio.ensure_future(cache.resolve("cog-closing"))
    await asyncio.sleep(0.01)
    await cache.close()  # the lifespan does this before the pool closes
    assert not cache._inflight
    try:
        await pending
    except asyncio.CancelledError:
        pass
    else:
        raise AssertionError("a lookup cut short by close() cannot have an answer")


async def test_a_full_key_cache_evicts_the_least_recently_used_not_everything(monkeypatch):
    """A flood of distinct (unknown) keys once cleared the whole cache, sending every key in
    use back to Postgres at once; now only the least recently used entries go."""
    from cognitude.identity import keycache as auth

    monkeypatch.setattr(auth, "MAX_CACHED_KEYS", 3)
    cache = ScriptedKeyCache.make()
    cache.gate.set()
    for token in ("cog-a", "cog-b", "cog-c"):
        await cache.resolve(token)
    await cache.resolve("cog-a")  # in use: now the most recently used
    assert cache.calls == 3
    await cache.resolve("cog-flood")  # one more than fits: "cog-b" goes
    await cache.resolve("cog-a")
    await cache.resolve("cog-c")
    assert cache.calls == 4  # both still cached
    await cache.resolve("cog-b")
    assert cache.calls == 5  # looked up again
