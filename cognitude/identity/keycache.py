"""API keys: generation, hashing, and the in-process TTL cache the hot path resolves them with.

Keys are ``cog-`` + 43 URL-safe characters (32 random bytes) and stored only as SHA-256 hex.
``KeyCache.resolve`` answers from memory for ``auth.key_cache_ttl_s`` after one Postgres
lookup, so the hot path does not query Postgres per request. Unknown keys are cached too
(negative entries), so a client hammering with a bad key costs Postgres one query per TTL.

No request waits for Postgres while its key is in use: an entry past ``REFRESH_AHEAD`` of
its TTL is re-read in the background while it is still served, so under steady traffic it
is renewed before it expires (an entry is still never trusted past its TTL). Concurrent
lookups of one key share a single query, so a burst of first requests, or every request
that arrives while a slow lookup runs, costs Postgres one query, not one each. A lookup
that was running when an invalidation arrived is not cached: it may have read the row as
it was before the change.

No request waits on a slow Postgres longer than ``auth.lookup_timeout_ms`` either: lookups run
on the hot path's own small pool (never queued behind analytics or maintenance queries) and
are cut off at that bound, connection wait included; a key seen before then keeps its last
resolution, a key never seen gets 503. The cache is an LRU bounded by ``MAX_CACHED_KEYS``: a
flood of unknown keys evicts the least recently used entries, never the keys in use.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import asyncpg
import orjson

from cognitude import db
from cognitude.cache.policy import CachePolicy
from cognitude.config import Config, Secrets
from cognitude.errors import ServiceUnavailable
from cognitude.gate.gate import Limits
from cognitude.identity.apikeys import hash_key
from cognitude.identity.credentials import (
    Credential,
    HeadersFor,
    OrgCredentials,
    load_org_credentials,
)
from cognitude.routing.rules import Policy, PolicyError, parse_policy

log = logging.getLogger("cognitude.auth")

# Bound on cached resolutions (about 1 KB each); past it the least recently used go.
MAX_CACHED_KEYS = 100_000
# Without a live invalidation subscription a revoked key must still stop within ~1 s on
# every replica, so cached resolutions are trusted this long at most.
UNSUBSCRIBED_TTL_S = 1.0
# Share of the TTL after which a used entry is re-read in the background.
REFRESH_AHEAD = 0.8


@dataclass(frozen=True, slots=True)
class KeyInfo:
    key_id: str
    org_id: str
    limits: Limits
    key_limits: Limits | None = None  # the key's own, narrower limits (all three set)
    cache: CachePolicy | None = None  # None: the [cache] defaults
    credentials: dict[str, Credential] = field(default_factory=dict)  # provider → own key
    # Providers whose stored key does not decrypt: 503 for them, never the shared key.
    unreadable: frozenset[str] = frozenset()
    # The key is valid but its organization was disabled by the operator (403, not 401).
    disabled: bool = False
    routing: Policy | None = None  # the org's own routing policy (PUT /routing/config)


# One query per key per TTL: the key, its org's limits and cache settings, and whether the
# org stored provider credentials (fetched and decrypted only then). A disabled org's keys
# are found too, so that they are told so (403) rather than "invalid key".
_LOOKUP_SQL = """
SELECT k.id, k.org_id, o.disabled,
       r.requests_per_minute, r.requests_per_hour, r.requests_per_day,
       k.requests_per_minute AS key_rpm, k.requests_per_hour AS key_rph,
       k.requests_per_day AS key_rpd,
       c.enabled AS cache_enabled, c.ttl_s AS cache_ttl_s,
       c.only_deterministic AS cache_only_deterministic,
       g.policy AS routing_policy,
       EXISTS (SELECT 1 FROM provider_credentials p WHERE p.org_id = k.org_id) AS has_creds
FROM api_keys k
JOIN organizations o ON o.id = k.org_id
LEFT JOIN rate_limit_configs r ON r.org_id = k.org_id
LEFT JOIN cache_configs c ON c.org_id = k.org_id
LEFT JOIN routing_configs g ON g.org_id = k.org_id
WHERE k.key_hash = $1 AND k.revoked_at IS NULL
  AND (k.expires_at IS NULL OR k.expires_at > now())
"""


class KeyCache:
    """key hash → KeyInfo, from config (static keys) or Postgres, cached with a TTL."""

    __slots__ = ("_pool", "_headers_for", "_ttl", "_timeout", "_defaults", "_cache_defaults",
                 "_encryption_key", "_static", "_entries", "_inflight", "_generation",
                 "_served_models", "_provider_names",
                 "subscribed", "lookups", "lookup_errors", "refreshes")

    def __init__(self, cfg: Config, secrets_: Secrets, pool: asyncpg.Pool | None,
                 headers_for: HeadersFor) -> None:
        self._pool = pool  # the hot path's own small pool (postgres.key_pool_max)
        self._headers_for = headers_for
        self._ttl = cfg.auth.key_cache_ttl_s
        self._timeout = cfg.auth.lookup_timeout_ms / 1000
        self._cache_defaults = cfg.cache
        self._served_models = frozenset(m for p in cfg.providers for m in p.models)
        self._provider_names = frozenset(p.name for p in cfg.providers)
        self._encryption_key = secrets_.encryption_key
        rl = cfg.rate_limits
        self._defaults = Limits(rl.requests_per_minute, rl.requests_per_hour, rl.requests_per_day)
        self._static = {
            h: KeyInfo(
                key_id=f"static:{h[:12]}",
                org_id=sk.org,
                limits=Limits(
                    sk.requests_per_minute or self._defaults.minute,
                    sk.requests_per_hour or self._defaults.hour,
                    sk.requests_per_day or self._defaults.day,
                ),
            )
            for h, sk in secrets_.static_key_hashes.items()
        }
        # digest → (fetched at, resolution), least recently used first
        self._entries: OrderedDict[str, tuple[float, KeyInfo | None]] = OrderedDict()
        # digest → (generation it started in, the lookup running for it): awaited by every
        # request that needs it, unless an invalidation came since (then a new one starts)
        self._inflight: dict[str, tuple[int, asyncio.Task[KeyInfo | None]]] = {}
        # Bumped by every invalidation: a lookup started before one is not cached.
        self._generation = 0
        # For /metrics: Postgres lookups started (one per key however many requests wait
        # on it), those that failed, and those started ahead of expiry in the background.
        self.lookups = self.lookup_errors = self.refreshes = 0
        # Set by the Invalidator while its Redis subscription is live: only then can a
        # revocation reach this process at once, so only then is the full TTL safe.
        self.subscribed = False

    @property
    def ttl(self) -> float:
        return self._ttl if self.subscribed else min(self._ttl, UNSUBSCRIBED_TTL_S)

    async def resolve(self, token: str) -> KeyInfo | None:
        digest = hash_key(token)
        static = self._static.get(digest)
        if static is not None:
            return static
        now = time.monotonic()
        hit = self._entries.get(digest)
        if hit is not None:
            age, ttl = now - hit[0], self.ttl
            if age < ttl:
                self._entries.move_to_end(digest)
                if age >= ttl * REFRESH_AHEAD and digest not in self._inflight:
                    self.refreshes += 1
                    self._fetch(digest)  # renewed in the background; this request goes on
                return hit[1]
        generation = self._generation
        try:
            # shield: a request that gives up (client gone) must not cancel the lookup
            # the others are waiting for.
            return await asyncio.shield(self._fetch(digest))
        except db.DB_ERRORS as exc:
            # Postgres unreachable: a key we resolved before keeps working (stale entry,
            # re-checked one TTL later) so a database outage does not stop the proxy; a key
            # never seen, or invalidated meanwhile, cannot be verified and gets 503.
            if hit is not None and generation == self._generation:
                self._entries[digest] = (now, hit[1])
                return hit[1]
            raise ServiceUnavailable(
                "Cannot verify the API key right now (database unavailable); retry shortly."
            ) from exc

    async def close(self) -> None:
        """Cancel the lookups still running (background refreshes), before the pool closes."""
        tasks = [task for _, task in self._inflight.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    def _fetch(self, digest: str) -> asyncio.Task[KeyInfo | None]:
        """The lookup of ``digest``: the one already running, or a new one. One that began
        before the latest invalidation is not shared: it may read the row as it was (a key
        revoked meanwhile would pass), so a request arriving now starts its own."""
        running = self._inflight.get(digest)
        if running is not None and running[0] == self._generation:
            return running[1]
        self.lookups += 1
        task = asyncio.ensure_future(self._load(digest))
        self._inflight[digest] = (self._generation, task)
        task.add_done_callback(lambda t: self._fetched(digest, t))
        return task

    def _fetched(self, digest: str, task: asyncio.Task[KeyInfo | None]) -> None:
        running = self._inflight.get(digest)
        if running is not None and running[1] is task:
            del self._inflight[digest]
        if not task.cancelled() and (exc := task.exception()) is not None:
            # Retrieved here, so that a failed background refresh (nobody awaits it) is
            # not reported as "never retrieved"; awaiting requests see it themselves.
            self.lookup_errors += 1
            log.debug("key lookup failed: %s", type(exc).__name__)

    async def _load(self, digest: str) -> KeyInfo | None:
        generation, started = self._generation, time.monotonic()
        info = await self._lookup(digest)
        if generation == self._generation:  # no invalidation while it ran
            self._entries[digest] = (started, info)
            self._entries.move_to_end(digest)
            while len(self._entries) > MAX_CACHED_KEYS:
                self._entries.popitem(last=False)
        return info

    def invalidate(self, digest: str | None = None) -> None:
        """Forget one key's resolution (revoked, changed), or every one (``None``)."""
        self._generation += 1
        if digest is None:
            self._entries.clear()
        else:
            self._entries.pop(digest, None)

    def invalidate_org(self, org_id: str) -> None:
        """Forget every key of an org (its limits or settings changed, or it was disabled)."""
        self._generation += 1
        for digest in [d for d, (_, info) in self._entries.items()
                       if info is not None and info.org_id == org_id]:
            del self._entries[digest]

    async def _read(self, conn: asyncpg.Connection, digest: str
                    ) -> tuple[asyncpg.Record, OrgCredentials | None] | None:
        row = await conn.fetchrow(_LOOKUP_SQL, digest)
        if row is None:
            return None
        creds = None
        if row["has_creds"] and not row["disabled"]:
            creds = await load_org_credentials(conn, self._encryption_key, row["org_id"],
                                               self._headers_for)
        return row, creds

    async def _lookup(self, digest: str) -> KeyInfo | None:
        if self._pool is None:
            return None
        found = await db.bounded(self._pool, self._timeout,
                                 lambda conn: self._read(conn, digest))
        if found is None:
            return None
        row, creds = found
        if row["disabled"]:
            return KeyInfo(row["id"], row["org_id"], self._defaults, disabled=True)
        d = self._defaults
        limits = Limits(row["requests_per_minute"] or d.minute,
                        row["requests_per_hour"] or d.hour, row["requests_per_day"] or d.day)
        key_limits = None
        if row["key_rpm"] or row["key_rph"] or row["key_rpd"]:
            # A window the key does not narrow is bounded by the org's own limit anyway.
            key_limits = Limits(row["key_rpm"] or limits.minute, row["key_rph"] or limits.hour,
                                row["key_rpd"] or limits.day)
        cache = None
        if (row["cache_enabled"], row["cache_ttl_s"], row["cache_only_deterministic"]) != (
                None, None, None):
            c = self._cache_defaults
            cache = CachePolicy(
                c.enabled if row["cache_enabled"] is None else row["cache_enabled"],
                c.ttl_s if row["cache_ttl_s"] is None else row["cache_ttl_s"],
                c.only_deterministic if row["cache_only_deterministic"] is None
                else row["cache_only_deterministic"])
        routing = self._routing(row["org_id"], row["routing_policy"])
        if creds is None:
            return KeyInfo(row["id"], row["org_id"], limits, key_limits, cache, routing=routing)
        return KeyInfo(row["id"], row["org_id"], limits, key_limits, cache, creds.usable,
                       creds.unreadable, routing=routing)

    def _routing(self, org_id: str, raw: str | None) -> Policy | None:
        """The org's stored policy; one the config no longer allows (a model or provider
        since removed) is logged and left out, so the operator's applies."""
        if raw is None:
            return None
        try:
            return parse_policy(orjson.loads(raw), self._served_models, self._provider_names)
        except (PolicyError, orjson.JSONDecodeError) as exc:
            log.warning("routing policy of org %s ignored: %s", org_id, exc)
            return None


DISABLED_MESSAGE = ("This organization is disabled; its keys are refused until the operator "
                    "enables it again.")


