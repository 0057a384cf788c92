"""Configuration: ``config.toml`` → frozen, typed dataclasses, in one place.

The file is read once at start (``COGNITUDE_CONFIG`` or ``--config`` picks it). Unknown keys,
wrong types and bad values are refused with a message naming the file and the key. Single
keys may be overridden by ``COGNITUDE_<SECTION>_<KEY>`` environment variables (e.g.
``COGNITUDE_REDIS_URL``, ``COGNITUDE_SERVER_PORT``, ``COGNITUDE_DATA_DIR``); any other
``COGNITUDE_*`` variable is refused as a typo unless a ``*_env`` key names it. Secrets never
live in the file: it names environment variables (``api_key_env``, ``key_env``) and this
package (``config.secrets``) is the only place that reads them.
"""

from __future__ import annotations

from cognitude.config.loader import _SECTIONS, load, parse
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
    RoutingConfig,
    ServerConfig,
    StaticKey,
    UpstreamConfig,
    UsageConfig,
)
from cognitude.config.secrets import (
    Secrets,
    ensure_dev_encryption_key,
    export_env,
    read_secrets,
    secret_env_names,
    sha256_hex,
    startup_warnings,
)

__all__ = [
    "DEFAULT_CONFIG_PATH", "ENV_PREFIX", "_SECTIONS",
    "AlertsConfig", "AuthConfig", "BudgetsConfig", "CacheConfig", "Config", "ConfigError",
    "MaintenanceConfig", "PostgresConfig", "ProviderConfig", "RateLimitConfig", "RedisConfig",
    "RoutingConfig", "Secrets", "ServerConfig", "StaticKey", "UpstreamConfig", "UsageConfig",
    "ensure_dev_encryption_key", "export_env", "load", "parse", "read_secrets",
    "secret_env_names", "sha256_hex", "startup_warnings",
]
