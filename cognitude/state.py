"""The resources the lifespan creates and every route shares, typed in one place."""

from __future__ import annotations

from dataclasses import dataclass, field

import aiohttp
import asyncpg
import redis.asyncio as aioredis

from cognitude.analytics.usage_report import RecentRefreshes
from cognitude.cache.cache_key import ValueCodec
from cognitude.cache.cold_cache import ColdCache
from cognitude.config import Config, Secrets
from cognitude.gate.gate import Gate, Outage, UsageReader
from cognitude.gate.redis_pipe import RedisPipe
from cognitude.identity.keycache import KeyCache
from cognitude.ledger.accounting import Accountant
from cognitude.providers.cooldowns import Cooldowns
from cognitude.providers.deadlines import Deadlines
from cognitude.providers.upstream import Providers
from cognitude.routing.router import Router
from cognitude.routing.rules import Policy


@dataclass(slots=True)
class AppState:
    cfg: Config
    secrets: Secrets
    redis: aioredis.Redis
    pipe: RedisPipe | None  # the hot path's client; None for TLS or Cluster (redis-py then)
    pg: asyncpg.Pool | None
    gate: Gate
    limits_usage: UsageReader  # GET /rate-limits (redis-py: never on the hot path)
    keys: KeyCache
    providers: Providers
    session: aiohttp.ClientSession
    codec: ValueCodec
    accountant: Accountant
    cold: ColdCache | None  # None when cache.cold_tier = false
    outage: Outage  # fail-open bookkeeping: logged once when Redis goes, once when it is back
    analytics: RecentRefreshes  # when each org's rollup was last refreshed by a GET
    deadlines: Deadlines  # upstream.total_timeout_s for every exchange in flight
    cooldowns: Cooldowns  # deployments to pass over for a while, shared across replicas
    router: Router  # smart-* model choice over the catalog and the providers
    routing_policy: Policy  # the operator's [routing] policy (an org's goes on top)
    # Upstream calls, retries, fallbacks, skipped deployments (hotpath.dispatch; /metrics).
    upstream_counts: dict[str, int] = field(default_factory=dict)
