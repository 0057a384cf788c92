"""The ASGI application: hot routes dispatched raw, everything else through Starlette.

``create_app()`` is the uvicorn factory. The lifespan owns every resource (Redis pool,
Postgres pool, upstream session, gate script) and closes them on shutdown; nothing is
created at import time.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cognitude import config as config_mod
from cognitude import db, openapi
from cognitude.analytics.usage_report import RecentRefreshes
from cognitude.cache.cache_key import ValueCodec
from cognitude.cache.cold_cache import ColdCache
from cognitude.config import Config
from cognitude.errors import ProxyError, error_body, for_status
from cognitude.gate.gate import Gate, Outage, UsageReader
from cognitude.gate.redis_pipe import RedisPipe, supports
from cognitude.hotpath.route import ProxyRoute
from cognitude.identity.apikeys import create_org
from cognitude.identity.invalidation import Invalidator
from cognitude.identity.keycache import KeyCache
from cognitude.ledger import tokens
from cognitude.ledger.accounting import Accountant
from cognitude.ledger.maintenance import Maintenance
from cognitude.ledger.pricing import catalog_of
from cognitude.ledger.usage import UsageWriter
from cognitude.management import accounts, cache_settings, limits, providers, routing, service
from cognitude.management.analytics import analytics_usage
from cognitude.management.common import error_response
from cognitude.metrics import metrics
from cognitude.providers.cooldowns import CooldownFeed, Cooldowns
from cognitude.providers.deadlines import Deadlines
from cognitude.providers.upstream import Providers, create_session
from cognitude.routing.router import Router
from cognitude.routing.rules import operator_policy
from cognitude.state import AppState

log = logging.getLogger("cognitude")


async def _proxy_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProxyError)
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (and any HTTPException) as OpenAI JSON."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        err = for_status(404, f"Unknown path: {request.method} {request.url.path}")
    elif exc.status_code == 405:
        err = for_status(405, f"Method {request.method} not allowed on {request.url.path}")
    else:
        err = for_status(exc.status_code, str(exc.detail))
    resp = error_response(err)
    if exc.status_code != err.status_code:
        resp.status_code = exc.status_code
    for k, v in (exc.headers or {}).items():
        resp.headers[k] = v
    return resp


async def _server_error(request: Request, exc: Exception) -> Response:
    # Last-resort boundary: anything unexpected becomes an OpenAI-shaped 500, never a trace.
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return Response(error_body("Internal server error.", "server_error", None, "internal_error"),
                    status_code=500, media_type="application/json")


# Every error Starlette sees, rendered in the OpenAI envelope (its defaults are plain text).
EXCEPTION_HANDLERS: dict[Any, Any] = {
    ProxyError: _proxy_error,
    HTTPException: _http_error,
    Exception: _server_error,
}


def _redis_client(cfg: Config) -> aioredis.Redis:
    timeout = cfg.redis.socket_timeout_ms / 1000
    if cfg.redis.cluster:
        return RedisCluster.from_url(  # type: ignore[return-value]
            cfg.redis.url, socket_timeout=timeout, socket_connect_timeout=timeout,
            max_connections=cfg.redis.pool_size,
        )
    # A blocking pool: when every connection is busy a request waits (up to the socket
    # timeout) for one. The default pool raises MaxConnectionsError instead, which fail-open
    # turned into requests served without limits or cache under load (found by
    # bench/throughput.py at 32-64 concurrent connections).
    pool = aioredis.BlockingConnectionPool.from_url(
        cfg.redis.url, socket_timeout=timeout, socket_connect_timeout=timeout,
        max_connections=cfg.redis.pool_size, timeout=timeout, decode_responses=False,
    )
    return aioredis.Redis.from_pool(pool)  # the client owns (and closes) the pool


async def _open_postgres(cfg: Config) -> asyncpg.Pool:
    try:
        pool = await db.create_pool(cfg.postgres.dsn, cfg.postgres.pool_min, cfg.postgres.pool_max,
                                    command_timeout=cfg.postgres.command_timeout_s)
    except (OSError, asyncpg.PostgresError) as exc:
        raise config_mod.ConfigError(
            f"{cfg.source}: postgres.dsn: cannot connect to Postgres: {type(exc).__name__}: {exc}"
        ) from None
    if cfg.postgres.auto_migrate:
        async with pool.acquire() as conn:
            await db.migrate(conn)
    return pool


def openapi_document(cfg: Config) -> dict[str, Any]:
    return openapi.build(
        accounts.OPENAPI_PATHS,
        providers.openapi_paths(tuple(p.name for p in cfg.providers)),
        limits.OPENAPI_PATHS,
        cache_settings.openapi_paths(cfg),
        routing.OPENAPI_PATHS,
    )


class CognitudeApp:
    """Top-level ASGI callable: exact-path dispatch to the raw hot routes, else Starlette."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.hot: dict[str, ProxyRoute] = {}
        self.starlette = Starlette(
            routes=[
                *service.ROUTES,
                Route("/analytics/usage", analytics_usage, methods=["GET"]),
                Route("/metrics", metrics, methods=["GET"]),
                Route("/openapi.json", openapi.endpoint(openapi_document(cfg)), methods=["GET"]),
                *accounts.ROUTES,
                *providers.ROUTES,
                *limits.ROUTES,
                *cache_settings.ROUTES,
                *routing.ROUTES,
            ],
            exception_handlers=EXCEPTION_HANDLERS,
            lifespan=self.lifespan,
        )

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            route = self.hot.get(scope["path"])
            if route is not None:
                await route(scope, receive, send)
                return
        await self.starlette(scope, receive, send)

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        cfg = self.cfg
        secrets = config_mod.read_secrets(cfg)
        providers = Providers(cfg, secrets)
        pg = await _open_postgres(cfg)
        redis = _redis_client(cfg)
        session = create_session(cfg)
        stack = AsyncExitStack()
        try:
            async with pg.acquire() as conn:
                for sk in cfg.auth.static_keys:
                    await create_org(conn, sk.org, sk.org)
            accountant = await _start_ledger(cfg, pg, stack)
            cold = await _start_cold_tier(cfg, stack)
            pipe, gate = await _start_gate(cfg, redis, stack)
            keycache = await _start_identity(cfg, secrets, providers, redis, stack)
            deadlines = Deadlines(cfg.upstream.total_timeout_s)
            deadlines.start()
            stack.push_async_callback(deadlines.close)
            cooldowns = await _start_cooldowns(cfg, redis, stack)
            state = AppState(
                cfg=cfg, secrets=secrets, redis=redis, pipe=pipe, pg=pg, gate=gate,
                limits_usage=UsageReader(redis), keys=keycache, providers=providers,
                session=session, codec=ValueCodec(cfg.cache.compress_min_bytes),
                accountant=accountant, cold=cold, outage=Outage(),
                analytics=RecentRefreshes(), deadlines=deadlines, cooldowns=cooldowns,
                router=Router(providers, accountant.catalog, cfg.routing.default_class),
                routing_policy=operator_policy(cfg),
            )
            app.state.cognitude = state
            self.hot = {
                "/v1/chat/completions": ProxyRoute(state, "chat", True),
                "/v1/embeddings": ProxyRoute(state, "embeddings", False),
            }
            # Everything allocated so far lives until shutdown: move it out of the cyclic
            # GC's generations so collections during traffic scan only per-request objects.
            gc.freeze()
            yield
        finally:
            self.hot = {}
            # The usage writer drains first (it needs Postgres), then the pools close.
            await stack.aclose()
            await session.close()
            await redis.aclose()
            await pg.close()


# What the lifespan starts, each pushing its own shutdown onto the exit stack (LIFO: the
# last started stops first).

async def _start_ledger(cfg: Config, pg: asyncpg.Pool, stack: AsyncExitStack) -> Accountant:
    writer = UsageWriter(
        pg, flush_rows=cfg.usage.flush_rows, flush_interval_ms=cfg.usage.flush_interval_ms,
        queue_max=cfg.usage.queue_max, spill_dir=cfg.spill_path,
        spill_max_bytes=cfg.usage.spill_max_bytes,
    )
    # Replays spill files left by an earlier run before taking traffic.
    await writer.start()
    stack.push_async_callback(writer.close, cfg.usage.shutdown_deadline_s)
    m = cfg.maintenance
    maint = Maintenance(pg, interval_s=m.interval_s, days_ahead=m.partition_days_ahead,
                        retention_days=m.retention_days, lateness_s=m.rollup_lateness_s)
    maint.start()  # the first round runs at once, in the background
    # Pushed after the writer: the exit stack is LIFO, so maintenance stops first.
    stack.push_async_callback(maint.close)
    # The tokenizer's vocabularies take ~0.5 s to load: do it off the event loop now, not on
    # the first stream that ends without usage.
    warm = asyncio.create_task(asyncio.to_thread(tokens.warm))
    stack.push_async_callback(asyncio.wait_for, warm, 30)
    return Accountant(catalog_of(cfg), writer, cfg.routing.default_class,
                      cfg.routing.classify_all)


async def _start_cold_tier(cfg: Config, stack: AsyncExitStack) -> ColdCache | None:
    if not (cfg.cache.enabled and cfg.cache.cold_tier):
        return None
    # Its own small pool whose connections skip asyncpg's reset-on-release (a second round
    # trip per read, measured at ~5 % of miss-path CPU): cold reads and upserts leave no
    # session state behind to reset.
    cold_pool = await db.create_pool(cfg.postgres.dsn, 1, 4, reset=db.no_reset,
                                     command_timeout=cfg.postgres.command_timeout_s)
    stack.push_async_callback(cold_pool.close)
    cold = ColdCache(cold_pool, flush_interval_ms=cfg.usage.flush_interval_ms,
                     queue_max=cfg.usage.queue_max,
                     queue_max_bytes=cfg.cache.cold_queue_max_bytes,
                     read_timeout_ms=cfg.cache.cold_read_timeout_ms)
    cold.start()
    stack.push_async_callback(cold.close)
    return cold


async def _start_gate(cfg: Config, redis: aioredis.Redis, stack: AsyncExitStack
                      ) -> tuple[RedisPipe | None, Gate]:
    # The hot path's EVALSHA and write-back SET go through the lean pipelined client where
    # it can serve this Redis (not TLS, not Cluster); see redis_pipe.
    pipe = None
    if supports(cfg.redis.url, cfg.redis.cluster):
        pipe = RedisPipe(cfg.redis.url, cfg.redis.socket_timeout_ms / 1000)
        stack.push_async_callback(pipe.aclose)
    gate = Gate(pipe if pipe is not None else redis)
    try:
        await gate.load()
    except (RedisError, OSError) as exc:
        # fail_open: serve without limits until Redis is back (check() reloads the script on
        # first contact); fail-closed deployments refuse to start.
        if not cfg.redis.fail_open:
            raise config_mod.ConfigError(
                f"{cfg.source}: redis.url: cannot reach Redis: {exc}") from None
        log.warning("redis unreachable at start (%s); failing open", exc)
    return pipe, gate


async def _start_identity(cfg: Config, secrets: config_mod.Secrets, providers: Providers,
                          redis: aioredis.Redis, stack: AsyncExitStack) -> KeyCache:
    # The hot path's key lookups get their own small pool: never queued behind an analytics
    # query or a maintenance round on the shared one (each lookup is bounded by
    # auth.lookup_timeout_ms itself).
    key_pool = await db.create_pool(cfg.postgres.dsn, 1, cfg.postgres.key_pool_max,
                                    reset=db.no_reset,
                                    command_timeout=cfg.postgres.command_timeout_s)
    stack.push_async_callback(key_pool.close)
    keycache = KeyCache(cfg, secrets, key_pool, providers.headers_for)
    stack.push_async_callback(keycache.close)
    invalidator = Invalidator(redis, keycache)
    await invalidator.start()
    stack.push_async_callback(invalidator.close)
    return keycache


async def _start_cooldowns(cfg: Config, redis: aioredis.Redis,
                           stack: AsyncExitStack) -> Cooldowns:
    cooldowns = Cooldowns(cfg.upstream)
    feed = CooldownFeed(redis, cooldowns)  # every replica hears of a cooldown in ~1 s
    await feed.start()
    stack.push_async_callback(feed.close)
    return cooldowns


def create_app(cfg: Config | None = None) -> CognitudeApp:
    """uvicorn factory; reads the config (``COGNITUDE_CONFIG``) when none is given."""
    return CognitudeApp(cfg if cfg is not None else config_mod.load())
