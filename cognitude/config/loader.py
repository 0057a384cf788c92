"""``config.toml`` → a validated, frozen ``Config``: types, unknown keys, bad values, and
``COGNITUDE_<SECTION>_<KEY>`` overrides, every error naming the file and the key.

An unknown ``COGNITUDE_*`` variable is refused like an unknown key: a typo such as
``COGNITUDE_SERVR_PORT`` would otherwise leave the port at its default without a word.
"""

from __future__ import annotations

import difflib
import os
import tomllib
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from cognitude.config.routing_table import routing_table, validate_routing
from cognitude.config.schema import (
    DEFAULT_CONFIG_PATH,
    ENV_PREFIX,
    AlertsConfig,
    AuthConfig,
    BudgetsConfig,
    CacheConfig,
    Config,
    ConfigError,
    MaintenanceConfig,
    PostgresConfig,
    ProviderConfig,
    RateLimitConfig,
    RedisConfig,
    ServerConfig,
    UpstreamConfig,
    UsageConfig,
)
from cognitude.config.secrets import secret_env_names

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


# Variables that are not config keys but are still ours: the file to read, and the
# benchmark tools' own settings (bench/locustfile.py), which a developer may export in the
# shell that also starts the proxy.
_CONFIG_VAR = f"{ENV_PREFIX}CONFIG"
_DATA_DIR_VAR = f"{ENV_PREFIX}DATA_DIR"
_FOREIGN_PREFIXES = (f"{ENV_PREFIX}BENCH_",)


def _override_names() -> typing.Iterator[tuple[str, str, str, Any]]:
    """(variable, section, key, type) for every ``COGNITUDE_<SECTION>_<KEY>`` override."""
    for section, cls in _SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            yield f"{ENV_PREFIX}{section.upper()}_{f.name.upper()}", section, f.name, hints[f.name]


def _apply_env(raw: dict[str, Any], env: typing.Mapping[str, str]) -> None:
    """Fold ``COGNITUDE_<SECTION>_<KEY>`` overrides into the raw TOML table."""
    if _DATA_DIR_VAR in env:
        raw["data_dir"] = env[_DATA_DIR_VAR]
    for name, section, key, tp in _override_names():
        if name in env:
            where = f"environment variable {name}"
            tbl = raw.setdefault(section, {})
            if not isinstance(tbl, dict):
                raise ConfigError(f"[{section}]: expected a table")
            tbl[key] = _parse_env_value(env[name], tp, where)


def _check_unknown_env(cfg: Config, env: typing.Mapping[str, str]) -> None:
    """Refuse ``COGNITUDE_*`` variables that are neither an override nor a secret the config
    names (DESIGN §3a), suggesting the closest known name."""
    known = {_CONFIG_VAR, _DATA_DIR_VAR, *(n for n, *_ in _override_names())}
    known |= secret_env_names(cfg)
    unknown = sorted(name for name in env if name.startswith(ENV_PREFIX)
                     and name not in known and not name.startswith(_FOREIGN_PREFIXES))
    if not unknown:
        return
    problems = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        problems.append(f"environment variable {name}: unknown{hint}")
    raise ConfigError("; ".join(problems) + f". {ENV_PREFIX}* variables are key overrides "
                      f"({ENV_PREFIX}<SECTION>_<KEY>), {_CONFIG_VAR}, {_DATA_DIR_VAR}, or "
                      "secrets named by a *_env key of the config")


def _validate(cfg: Config) -> None:
    positive = _positive
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
    positive(cfg.postgres.command_timeout_s, "postgres.command_timeout_s")
    positive(cfg.postgres.key_pool_max, "postgres.key_pool_max")
    if not 0 <= cfg.postgres.pool_min <= cfg.postgres.pool_max:
        raise ConfigError("postgres.pool_min: must be between 0 and postgres.pool_max")
    positive(cfg.cache.ttl_s, "cache.ttl_s")
    positive(cfg.cache.max_ttl_s, "cache.max_ttl_s")
    positive(cfg.cache.cold_read_timeout_ms, "cache.cold_read_timeout_ms")
    positive(cfg.cache.cold_queue_max_bytes, "cache.cold_queue_max_bytes")
    rl = cfg.rate_limits
    positive(rl.requests_per_minute, "rate_limits.requests_per_minute")
    positive(rl.requests_per_hour, "rate_limits.requests_per_hour")
    positive(rl.requests_per_day, "rate_limits.requests_per_day")
    # A longer window allowing fewer requests than a shorter one makes the shorter limit a
    # lie (it can never be reached); refuse it as the management API does.
    if not rl.requests_per_minute <= rl.requests_per_hour <= rl.requests_per_day:
        raise ConfigError("rate_limits: requests_per_minute <= requests_per_hour <= "
                          f"requests_per_day must hold, got {rl.requests_per_minute}, "
                          f"{rl.requests_per_hour}, {rl.requests_per_day}")
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
    _validate_upstream(cfg.upstream)
    positive(cfg.auth.key_cache_ttl_s, "auth.key_cache_ttl_s")
    positive(cfg.auth.lookup_timeout_ms, "auth.lookup_timeout_ms")
    positive(cfg.auth.register_per_hour, "auth.register_per_hour")
    positive(cfg.auth.login_per_hour, "auth.login_per_hour")
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
    validate_routing(cfg.routing, _validate_providers(cfg))



def _positive(value: float, key: str) -> None:
    if value <= 0:
        raise ConfigError(f"{key}: must be > 0, got {value!r}")


def _validate_upstream(up: UpstreamConfig) -> None:
    _positive(up.connect_timeout_s, "upstream.connect_timeout_s")
    _positive(up.read_timeout_s, "upstream.read_timeout_s")
    _positive(up.total_timeout_s, "upstream.total_timeout_s")
    _positive(up.max_response_bytes, "upstream.max_response_bytes")
    _positive(up.pool_size, "upstream.pool_size")
    if not 1 <= up.max_attempts <= 10:
        raise ConfigError(f"upstream.max_attempts: must be 1..10, got {up.max_attempts}")
    if up.retry_after_max_s < 0:
        raise ConfigError("upstream.retry_after_max_s: must be >= 0")
    _positive(up.backoff_base_ms, "upstream.backoff_base_ms")
    if up.backoff_max_ms < up.backoff_base_ms:
        raise ConfigError("upstream.backoff_max_ms: must be >= upstream.backoff_base_ms")
    _positive(up.cooldown_s, "upstream.cooldown_s")
    if not 0 < up.cooldown_failure_rate <= 1:
        raise ConfigError("upstream.cooldown_failure_rate: must be in (0, 1], got "
                          f"{up.cooldown_failure_rate}")
    _positive(up.cooldown_min_calls, "upstream.cooldown_min_calls")


def _validate_providers(cfg: Config) -> set[str]:
    """The providers' kinds, URLs and model lists; the models served."""
    served: set[str] = set()
    for p in cfg.providers:
        where = f"providers.{p.name}"
        if p.kind not in _PROVIDER_KINDS:
            raise ConfigError(f"{where}.kind: expected one of {_PROVIDER_KINDS}, got {p.kind!r}")
        if not p.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.base_url: expected an http(s) URL, got {p.base_url!r}")
        if "/" in p.name:
            raise ConfigError(f"{where}: a provider name may not contain '/'")
        # A model under several providers is several deployments (tried in file order);
        # twice under one provider is a typo.
        twice = sorted({m for m in p.models if p.models.count(m) > 1})
        if twice:
            raise ConfigError(f"{where}.models: {twice[0]!r} is listed twice")
        served.update(p.models)
    return served


def parse(raw: dict[str, Any], source: str, env: typing.Mapping[str, str] | None = None) -> Config:
    """Build a validated Config from a TOML table; ``source`` names it in errors."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    env = os.environ if env is None else env
    try:
        _apply_env(raw, env)
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
            elif key == "routing":
                kwargs[key] = routing_table(value)
            elif key in _SECTIONS:
                kwargs[key] = _coerce(value, _SECTIONS[key], key)
            else:
                known = ", ".join(["data_dir", "providers", "prices", "routing", *_SECTIONS])
                raise ConfigError(f"{key}: unknown key (known: {known})")
        cfg = Config(**kwargs)
        _validate(cfg)
        _check_unknown_env(cfg, env)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return cfg


def _prices(value: Any) -> tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]:
    """The [prices] tables as they are; their fields are checked against the shipped catalog
    when it is loaded at start (``ledger.pricing.catalog_of``), naming model and field."""
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ConfigError('prices: expected tables [prices."<model>"]')
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
    named = path or os.environ.get(_CONFIG_VAR)
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
