"""The resources the lifespan creates and every route shares, typed in one place."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
import asyncpg
import redis.asyncio as aioredis

from .accounting import Accountant
from .analytics import RecentRefreshes
from .auth import KeyCache
from .cache_key import ValueCodec
from .cold_cache import ColdCache
from .config import Config, Secrets
from .deadlines import Deadlines
from .gate import Gate, Outage, UsageReader
from .redis_pipe import RedisPipe
from .upstream import Providers


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
