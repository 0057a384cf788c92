"""Configuration: ``config.toml`` → frozen, typed dataclasses, in one place.

The file is read once at start (``COGNITUDE_CONFIG`` or ``--config`` picks it). Unknown keys,
wrong types and bad values are refused with a message naming the file and the key. Single
keys may be overridden by ``COGNITUDE_<SECTION>_<KEY>`` environment variables (e.g.
``COGNITUDE_REDIS_URL``, ``COGNITUDE_SERVER_PORT``, ``COGNITUDE_DATA_DIR``). Secrets never
live in the file: it names environment variables (``api_key_env``, ``key_env``) and this
module is the only place that reads them.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tomllib
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
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
    pool_size: int = 256


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


@dataclass(frozen=True, slots=True)
class Secrets:
    """Values read from the environment variables the config names. Never logged."""

    provider_keys: dict[str, str]  # provider name → key ("" when the env var is unset)
    static_key_hashes: dict[str, StaticKey]  # sha256 hex → declaration
    admin_key_hash: str  # sha256 hex of the operator key, "" when unset
    encryption_key: bytes | None = None  # 32 bytes for AES-256-GCM, None when unset


_SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "redis": RedisConfig,
    "postgres": PostgresConfig,
    "cache": CacheConfig,
    "rate_limits": RateLimitConfig,
    "usage": UsageConfig,
    "maintenance": MaintenanceConfig,
    "upstream": UpstreamConfig,
    "auth": AuthConfig,
    "alerts": AlertsConfig,
    "budgets": BudgetsConfig,
}

_PROVIDER_KINDS = ("openai", "anthropic")


def _type_name(tp: Any) -> str:
    return {int: "integer", float: "number", bool: "boolean", str: "string"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected an array, got {type(value).__name__}")
        return tuple(_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected boolean (true/false), got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected string, got {value!r}")
        return value
    if isinstance(tp, type) and is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {type(value).__name__}")
        return _build(tp, value, where)
    raise ConfigError(f"{where}: unsupported type {tp}")  # pragma: no cover - schema bug


def _build(cls: type, table: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls) if f.name != "source"}
    for key in table:
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown key (known: {', '.join(sorted(known))})")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in table.items()}
    return cls(**kwargs)


def _parse_env_value(raw: str, tp: Any, where: str) -> Any:
    if tp is bool:
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected boolean, got {raw!r}")
    try:
        if tp is int:
            return int(raw)
        if tp is float:
            return float(raw)
    except ValueError:
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {raw!r}") from None
    if tp is str:
        return raw
    raise ConfigError(f"{where}: cannot be set from the environment")


def _apply_env(raw: dict[str, Any], env: typing.Mapping[str, str]) -> None:
    """Fold ``COGNITUDE_<SECTION>_<KEY>`` overrides into the raw TOML table."""
    top = f"{ENV_PREFIX}DATA_DIR"
    if top in env:
        raw["data_dir"] = env[top]
    for section, cls in _SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            name = f"{ENV_PREFIX}{section.upper()}_{f.name.upper()}"
            if name in env:
                where = f"environment variable {name}"
                tbl = raw.setdefault(section, {})
                if not isinstance(tbl, dict):
                    raise ConfigError(f"[{section}]: expected a table")
                tbl[f.name] = _parse_env_value(env[name], hints[f.name], where)


def _validate(cfg: Config) -> None:
    def positive(value: float, key: str) -> None:
        if value <= 0:
            raise ConfigError(f"{key}: must be > 0, got {value!r}")

    s = cfg.server
    if not 0 <= s.port <= 65535:
        raise ConfigError(f"server.port: must be 0..65535, got {s.port}")
    positive(s.workers, "server.workers")
    positive(s.max_body_bytes, "server.max_body_bytes")
    if s.log_level not in ("critical", "error", "warning", "info", "debug", "trace"):
        raise ConfigError(f"server.log_level: unknown level {s.log_level!r}")
    if cfg.redis.url != "embedded" and not cfg.redis.url.startswith(
        ("redis://", "rediss://", "unix://")
    ):
        raise ConfigError(
            f"redis.url: expected \"embedded\" or a redis:// URL, got {cfg.redis.url!r}"
        )
    positive(cfg.redis.pool_size, "redis.pool_size")
    positive(cfg.redis.socket_timeout_ms, "redis.socket_timeout_ms")
    if cfg.postgres.dsn != "embedded" and not cfg.postgres.dsn.startswith(
        ("postgres://", "postgresql://")
    ):
        raise ConfigError("postgres.dsn: expected \"embedded\" or a postgresql:// DSN")
    positive(cfg.postgres.pool_max, "postgres.pool_max")
    if not 0 <= cfg.postgres.pool_min <= cfg.postgres.pool_max:
        raise ConfigError("postgres.pool_min: must be between 0 and postgres.pool_max")
    positive(cfg.cache.ttl_s, "cache.ttl_s")
    positive(cfg.cache.max_ttl_s, "cache.max_ttl_s")
    positive(cfg.cache.cold_read_timeout_ms, "cache.cold_read_timeout_ms")
    rl = cfg.rate_limits
    positive(rl.requests_per_minute, "rate_limits.requests_per_minute")
    positive(rl.requests_per_hour, "rate_limits.requests_per_hour")
    positive(rl.requests_per_day, "rate_limits.requests_per_day")
    positive(cfg.usage.flush_rows, "usage.flush_rows")
    positive(cfg.usage.flush_interval_ms, "usage.flush_interval_ms")
    positive(cfg.usage.queue_max, "usage.queue_max")
    positive(cfg.usage.spill_max_bytes, "usage.spill_max_bytes")
    positive(cfg.usage.shutdown_deadline_s, "usage.shutdown_deadline_s")
    positive(cfg.maintenance.interval_s, "maintenance.interval_s")
    positive(cfg.maintenance.partition_days_ahead, "maintenance.partition_days_ahead")
    if cfg.maintenance.retention_days < 0:
        raise ConfigError("maintenance.retention_days: must be >= 0")
    if cfg.maintenance.rollup_lateness_s < 600:
        raise ConfigError("maintenance.rollup_lateness_s: must be >= 600")
    positive(cfg.upstream.connect_timeout_s, "upstream.connect_timeout_s")
    positive(cfg.upstream.read_timeout_s, "upstream.read_timeout_s")
    positive(cfg.upstream.pool_size, "upstream.pool_size")
    positive(cfg.auth.key_cache_ttl_s, "auth.key_cache_ttl_s")
    for i, sk in enumerate(cfg.auth.static_keys):
        where = f"auth.static_keys[{i}]"
        if not sk.org:
            raise ConfigError(f"{where}.org: must not be empty")
        if bool(sk.key_env) == bool(sk.key_sha256):
            raise ConfigError(f"{where}: set exactly one of key_env and key_sha256")
        if sk.key_sha256 and (
            len(sk.key_sha256) != 64 or any(c not in "0123456789abcdef" for c in sk.key_sha256)
        ):
            raise ConfigError(f"{where}.key_sha256: expected 64 lowercase hex characters")
    owner: dict[str, str] = {}
    for p in cfg.providers:
        where = f"providers.{p.name}"
        if p.kind not in _PROVIDER_KINDS:
            raise ConfigError(f"{where}.kind: expected one of {_PROVIDER_KINDS}, got {p.kind!r}")
        if not p.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.base_url: expected an http(s) URL, got {p.base_url!r}")
        for m in p.models:
            if m in owner:
                raise ConfigError(
                    f"{where}.models: {m!r} is already served by providers.{owner[m]}"
                )
            owner[m] = p.name


def parse(raw: dict[str, Any], source: str, env: typing.Mapping[str, str] | None = None) -> Config:
    """Build a validated Config from a TOML table; ``source`` names it in errors."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    try:
        _apply_env(raw, os.environ if env is None else env)
        kwargs: dict[str, Any] = {"source": source}
        for key, value in raw.items():
            if key == "data_dir":
                kwargs[key] = _coerce(value, str, "data_dir")
            elif key == "providers":
                if not isinstance(value, dict):
                    raise ConfigError("providers: expected tables [providers.<name>]")
                kwargs[key] = tuple(
                    _build(ProviderConfig, {"name": name, **_table(tbl, f"providers.{name}")},
                           f"providers.{name}")
                    for name, tbl in value.items()
                )
            elif key == "prices":
                kwargs[key] = _prices(value)
            elif key in _SECTIONS:
                kwargs[key] = _coerce(value, _SECTIONS[key], key)
            else:
                known = ", ".join(["data_dir", "providers", "prices", *_SECTIONS])
                raise ConfigError(f"{key}: unknown key (known: {known})")
        cfg = Config(**kwargs)
        _validate(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return cfg


def _prices(value: Any) -> tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]:
    from .pricing import load_catalog  # the catalog's own validation names model and field

    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ConfigError('prices: expected tables [prices."<model>"]')
    try:
        load_catalog(value)
    except ValueError as exc:
        raise ConfigError(f"prices: {exc}") from None
    return tuple((model, tuple(tbl.items())) for model, tbl in value.items())


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table")
    if "name" in value:
        raise ConfigError(f"{where}.name: unknown key (the name is the table's own name)")
    return value


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Read the config file: ``path``, else ``$COGNITUDE_CONFIG``, else ./config.toml.

    A missing default file means "all defaults"; a missing named file is an error.
    """
    named = path or os.environ.get(f"{ENV_PREFIX}CONFIG")
    p = Path(named or DEFAULT_CONFIG_PATH)
    if not p.exists():
        if named:
            raise ConfigError(f"{p}: config file not found")
        return parse({}, "<defaults>")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return parse(raw, str(p))


def export_env(overrides: dict[str, str]) -> None:
    """Set ``COGNITUDE_<NAME>`` variables for this process and the workers it starts.

    The embedded launcher uses this to hand the child servers' real URLs to uvicorn's app
    factory, which may run in other processes (``server.workers`` > 1).
    """
    for name, value in overrides.items():
        os.environ[f"{ENV_PREFIX}{name}"] = value


def ensure_dev_encryption_key(cfg: Config, path: Path) -> None:
    """Embedded (development) mode only: when ``auth.encryption_key_env`` is unset, use a
    persistent key kept (mode 0600) at ``path`` so provider credentials stored through the
    API survive restarts. Production deployments set their own key."""
    name = cfg.auth.encryption_key_env
    if not name or os.environ.get(name):
        return
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(base64.urlsafe_b64encode(os.urandom(32)).decode() + "\n")
    os.environ[name] = path.read_text().strip()


def sha256_hex(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def read_secrets(cfg: Config, env: typing.Mapping[str, str] | None = None) -> Secrets:
    """Read every secret the config names from the environment, once, at start."""
    env = os.environ if env is None else env
    provider_keys = {p.name: env.get(p.api_key_env, "") if p.api_key_env else ""
                     for p in cfg.providers}
    static: dict[str, StaticKey] = {}
    for i, sk in enumerate(cfg.auth.static_keys):
        if sk.key_env:
            value = env.get(sk.key_env, "")
            if not value:
                raise ConfigError(
                    f"{cfg.source}: auth.static_keys[{i}].key_env: environment variable "
                    f"{sk.key_env} is not set"
                )
            static[sha256_hex(value)] = sk
        else:
            static[sk.key_sha256] = sk
    admin = env.get(cfg.auth.admin_key_env, "") if cfg.auth.admin_key_env else ""
    enc = None
    raw = env.get(cfg.auth.encryption_key_env, "") if cfg.auth.encryption_key_env else ""
    if raw:
        try:
            enc = base64.urlsafe_b64decode(raw.encode() + b"=" * (-len(raw) % 4))
        except ValueError:
            enc = None
        if enc is None or len(enc) != 32:
            raise ConfigError(
                f"{cfg.source}: auth.encryption_key_env: {cfg.auth.encryption_key_env} must "
                "hold 32 bytes in urlsafe base64")
    return Secrets(provider_keys, static, sha256_hex(admin) if admin else "", enc)


__all__ = [
    "AlertsConfig", "AuthConfig", "BudgetsConfig", "CacheConfig", "Config", "ConfigError",
    "MaintenanceConfig",
    "PostgresConfig", "ProviderConfig", "RateLimitConfig", "RedisConfig", "Secrets",
    "ServerConfig", "StaticKey", "UpstreamConfig", "UsageConfig", "load", "parse",
    "ensure_dev_encryption_key", "export_env", "read_secrets", "sha256_hex",
]
