"""The configuration schema: one frozen dataclass per ``config.toml`` table, with defaults.

Loading, validation and environment overrides are in ``loader``; secrets in ``secrets``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

DEFAULT_CONFIG_PATH = "config.toml"
ENV_PREFIX = "COGNITUDE_"


class ConfigError(Exception):
    """A config file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    # Bodies above this are refused with 413 while still streaming in, never fully buffered.
    max_body_bytes: int = 8 * 1024 * 1024
    log_level: str = "info"
    # One line per request on the "uvicorn.access" logger; off by default because a sidecar's
    # application usually logs its own calls, and the line costs ~10 us per request.
    access_log: bool = False


@dataclass(frozen=True, slots=True)
class RedisConfig:
    url: str = "embedded"
    cluster: bool = False
    pool_size: int = 64
    socket_timeout_ms: int = 1000
    # Redis unreachable: serve without limits/cache (True) or refuse with 503 (False).
    fail_open: bool = True


@dataclass(frozen=True, slots=True)
class PostgresConfig:
    dsn: str = "embedded"
    auto_migrate: bool = True
    pool_min: int = 1
    pool_max: int = 10
    # Every query of the management/analytics/maintenance pool is cancelled after this long,
    # so a slow Postgres cannot hold a request (or a background round) forever.
    command_timeout_s: float = 30.0
    # The hot path's own small pool (API-key lookups): never queued behind analytics or
    # maintenance queries on the shared pool.
    key_pool_max: int = 4


@dataclass(frozen=True, slots=True)
class CacheConfig:
    enabled: bool = True
    ttl_s: int = 86400
    # Cache only requests that ask for deterministic output (temperature 0 / seed set).
    only_deterministic: bool = False
    cold_tier: bool = True
    # A cold-tier read slower than this counts as a miss (the upstream answers instead).
    cold_read_timeout_ms: int = 50
    # Values above this many bytes are stored zstd-compressed (measured: below ~1 KB the
    # compression costs more CPU than the bytes it saves in Redis).
    compress_min_bytes: int = 1024
    # Upper bound for a client's X-Cognitude-Cache-TTL.
    max_ttl_s: int = 30 * 86400
    # Bytes of cache entries waiting for the cold tier's next batch; past it entries are
    # dropped (and counted), so a slow Postgres cannot grow the process without bound.
    cold_queue_max_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    requests_per_minute: int = 100
    requests_per_hour: int = 3000
    requests_per_day: int = 50000
    count_cache_hits: bool = True


@dataclass(frozen=True, slots=True)
class UsageConfig:
    flush_rows: int = 500
    flush_interval_ms: int = 200
    queue_max: int = 100_000
    spill_dir: str = ""  # empty: <data_dir>/spill
    spill_max_bytes: int = 1 << 30  # disk bound for spill files; past it rows are lost, loudly
    # On shutdown, how long to keep writing to Postgres before spilling the rest to disk.
    shutdown_deadline_s: float = 10.0


@dataclass(frozen=True, slots=True)
class MaintenanceConfig:
    """Leader-locked background work: partitions, retention, the hourly rollup."""

    interval_s: float = 60.0
    partition_days_ahead: int = 7
    retention_days: int = 0  # 0: keep raw usage_log forever (rollups are kept anyway)
    # Hours this far back are recomputed every round (see cognitude/maintenance.py); >= 600.
    rollup_lateness_s: float = 900.0


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    connect_timeout_s: float = 5.0
    # Non-stream: the whole response. Stream: the longest silence between two chunks.
    read_timeout_s: float = 600.0
    # The whole upstream exchange, first byte to last (a stream that trickles forever ends).
    total_timeout_s: float = 900.0
    # Largest upstream response body read (non-stream), or SSE data held for one stream; a
    # larger one is a 502, never an unbounded buffer.
    max_response_bytes: int = 32 * 1024 * 1024
    pool_size: int = 256
    # One budget for retries and fallbacks together: at most this many upstream calls per
    # request (DESIGN §11). 1 turns both off.
    max_attempts: int = 3
    # A Retry-After longer than this is not waited for: the next deployment is tried, or
    # the error goes to the client (who can wait, with the header passed on).
    retry_after_max_s: float = 5.0
    # Full-jitter backoff before calling a deployment again: uniform(0, min(max, base * 2^n)).
    backoff_base_ms: int = 100
    backoff_max_ms: int = 2000
    # A deployment whose last calls failed at this rate (over at least cooldown_min_calls),
    # or that refused the shared key, is skipped for cooldown_s (doubled, up to 8x, each
    # time it fails again on its first call back).
    cooldown_s: float = 30.0
    cooldown_failure_rate: float = 0.5
    cooldown_min_calls: int = 5


@dataclass(frozen=True, slots=True)
class StaticKey:
    """A key declared in config.toml for sidecar use (no Postgres round trip to create it)."""

    org: str
    key_env: str = ""  # env var holding the key's value
    key_sha256: str = ""  # or the key's SHA-256 hex digest
    requests_per_minute: int = 0  # 0: the [rate_limits] default
    requests_per_hour: int = 0
    requests_per_day: int = 0


@dataclass(frozen=True, slots=True)
class AuthConfig:
    admin_key_env: str = "COGNITUDE_ADMIN_KEY"
    # Env var with the key that encrypts provider credentials at rest: 32 bytes, urlsafe
    # base64 (`python -c "import os,base64;print(base64.urlsafe_b64encode(os.urandom(32)))"`).
    encryption_key_env: str = "COGNITUDE_ENCRYPTION_KEY"
    allow_registration: bool = True
    # How long a key → org resolution is trusted in process before Postgres is asked again.
    key_cache_ttl_s: float = 5.0
    # A key lookup in Postgres slower than this fails (503 for a key never seen; a key seen
    # before keeps its last resolution), so no request waits on a slow database longer.
    lookup_timeout_ms: int = 1000
    # Per client address, in Redis (so across replicas): registrations per hour, and login
    # attempts per hour (failed logins per email are held to the same number).
    register_per_hour: int = 10
    login_per_hour: int = 30
    static_keys: tuple[StaticKey, ...] = ()


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    base_url: str
    kind: str = "openai"
    api_key_env: str = ""
    models: tuple[str, ...] = ()
    # Orgs that stored no key of their own (POST /providers/config) may use this provider's
    # config-level key; false makes every org bring its own.
    shared_key: bool = True
    # Ask for usage on every chat stream (stream_options.include_usage, the extra chunk
    # removed for clients that did not ask), so that every cached stream carries its token
    # counts; false for OpenAI-compatible servers that refuse the field.
    stream_usage: bool = True


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """``[routing]``: where a model's requests go besides its own deployments, and how the
    ``smart-*`` models choose one."""

    # model → the models to try, in order, once the model's own deployments failed
    # (transient failures only, within upstream.max_attempts).
    fallbacks: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # name → model: a name clients may ask for that is served as another model.
    aliases: tuple[tuple[str, str], ...] = ()
    # What `model = "smart"` means: "cost" | "latency" | "quality".
    default_mode: str = "cost"
    # The class of a prompt on which no classifier signal fired (never silently the
    # cheapest): "simple" | "medium" | "complex".
    default_class: str = "medium"
    # What baseline_cost_micros is priced at ("" : the model asked for; for smart-* the
    # model smart-quality would pick for a complex prompt).
    baseline_model: str = ""
    # Never routed to (smart-*), and for exclude_providers never called at all.
    exclude_models: tuple[str, ...] = ()
    exclude_providers: tuple[str, ...] = ()
    # Classify every chat request a model answered, smart or not, for usage_log.complexity
    # (~15 µs of CPU per new prompt, after the response; see bench/RESULTS.md). false: only
    # smart-* requests carry a class.
    classify_all: bool = True
    # [[routing.rules]]: {match = {contains | code | class}, model | class}, checked in
    # order (routing.rules validates them at start, naming the rule).
    rules: tuple[tuple[tuple[str, Any], ...], ...] = ()

    def fallbacks_of(self, model: str) -> tuple[str, ...]:
        return next((to for name, to in self.fallbacks if name == model), ())


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    check_interval_s: int = 3600
    allow_private_targets: bool = False
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_user: str = ""
    smtp_password_env: str = ""
    smtp_from: str = ""


@dataclass(frozen=True, slots=True)
class BudgetsConfig:
    daily_usd: float = 0.0  # 0: no budget
    monthly_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class Config:
    data_dir: str = ".cognitude"
    server: ServerConfig = field(default_factory=ServerConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    postgres: PostgresConfig = field(default_factory=PostgresConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    rate_limits: RateLimitConfig = field(default_factory=RateLimitConfig)
    usage: UsageConfig = field(default_factory=UsageConfig)
    maintenance: MaintenanceConfig = field(default_factory=MaintenanceConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    providers: tuple[ProviderConfig, ...] = ()
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    budgets: BudgetsConfig = field(default_factory=BudgetsConfig)
    # [prices."<model>"] tables overriding or extending the shipped catalog (prices.toml):
    # (model, ((field, value), ...)), validated by cognitude.pricing.
    prices: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    # Where the file came from, for error messages; not a key.
    source: str = field(default="<defaults>", compare=False)

    @property
    def embedded_redis(self) -> bool:
        return self.redis.url == "embedded"

    @property
    def embedded_postgres(self) -> bool:
        return self.postgres.dsn == "embedded"

    @property
    def spill_path(self) -> str:
        return self.usage.spill_dir or os.path.join(self.data_dir, "spill")

    def price_overrides(self) -> dict[str, dict[str, Any]]:
        return {model: dict(items) for model, items in self.prices}
