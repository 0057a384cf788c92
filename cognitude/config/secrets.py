"""Secrets: read once, from the environment variables the config names, and nowhere else.

The config file never holds a secret; it names variables (``api_key_env``, ``key_env``,
``admin_key_env``, ``encryption_key_env``, ``smtp_password_env``). Values are hashed or kept
in memory and never logged.

A missing secret is refused at start when the proxy could not do its job without it (a
static key, a shared provider key: requests would go upstream keyless and the upstream's
401 would read as the user's Cognitude key being wrong); it is only warned about when the
proxy still works, minus one feature (``startup_warnings``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import typing
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

from cognitude.config.schema import ENV_PREFIX, Config, ConfigError, StaticKey


@dataclass(frozen=True, slots=True)
class Secrets:
    """Values read from the environment variables the config names. Never logged."""

    provider_keys: dict[str, str]  # provider name → key ("" when the env var is unset)
    static_key_hashes: dict[str, StaticKey]  # sha256 hex → declaration
    admin_key_hash: str  # sha256 hex of the operator key, "" when unset
    encryption_key: bytes | None = None  # 32 bytes for AES-256-GCM, None when unset


def export_env(overrides: dict[str, str]) -> None:
    """Set ``COGNITUDE_<NAME>`` variables for this process and the workers it starts.

    The embedded launcher uses this to hand the child servers' real URLs to uvicorn's app
    factory, which may run in other processes (``server.workers`` > 1).
    """
    for name, value in overrides.items():
        os.environ[f"{ENV_PREFIX}{name}"] = value


def ensure_dev_encryption_key(cfg: Config, path: Path) -> None:
    """Embedded PostgreSQL (development) only: when ``auth.encryption_key_env`` is unset, use
    a persistent key kept (mode 0600) at ``path`` so provider credentials stored through the
    API survive restarts. The key then sits next to the data it protects, which is fine for
    a development database and nothing else: with a real Postgres the operator sets the
    key (and without it the proxy starts, warns, and refuses to store credentials)."""
    name = cfg.auth.encryption_key_env
    if not cfg.embedded_postgres or not name or os.environ.get(name):
        return
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(base64.urlsafe_b64encode(os.urandom(32)).decode() + "\n")
    os.environ[name] = path.read_text().strip()


def secret_env_names(cfg: Config) -> set[str]:
    """Every variable named by a ``*_env`` key of the config, wherever the key sits
    (sections, ``providers.*``, ``auth.static_keys[*]``): secrets, never unknown variables."""
    names: set[str] = set()

    def walk(obj: Any) -> None:
        if isinstance(obj, tuple):
            for item in obj:
                walk(item)
        elif is_dataclass(obj):
            for f in fields(obj):
                value = getattr(obj, f.name)
                if f.name.endswith("_env") and isinstance(value, str):
                    if value:
                        names.add(value)
                else:
                    walk(value)

    walk(cfg)
    return names


def sha256_hex(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def read_secrets(cfg: Config, env: typing.Mapping[str, str] | None = None) -> Secrets:
    """Read every secret the config names from the environment, once, at start."""
    env = os.environ if env is None else env
    provider_keys: dict[str, str] = {}
    for p in cfg.providers:
        # api_key_env = "" declares a provider that needs no key (the bundled mock).
        value = env.get(p.api_key_env, "") if p.api_key_env else ""
        if p.api_key_env and not value and p.shared_key:
            raise ConfigError(
                f"{cfg.source}: providers.{p.name}.api_key_env: environment variable "
                f"{p.api_key_env} is not set (or empty), so requests would reach {p.name} "
                f"without a key; set it, or set providers.{p.name}.shared_key = false to "
                "make every organization store its own key (POST /providers/config)")
        provider_keys[p.name] = value
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


def startup_warnings(cfg: Config, secrets: Secrets) -> list[str]:
    """Secrets whose absence costs a feature but not the start, one message each. ``serve``
    logs them once (not the lifespan, which runs again in every worker)."""
    out = []
    for p in cfg.providers:
        if p.api_key_env and not p.shared_key and not secrets.provider_keys.get(p.name):
            out.append(
                f"providers.{p.name}.api_key_env: environment variable {p.api_key_env} is not "
                f"set; shared_key = false, so only organizations that stored their own key "
                f"(POST /providers/config) can use {p.name}")
    if secrets.encryption_key is None:
        name = cfg.auth.encryption_key_env
        var = f"environment variable {name} is not set" if name else "it is empty"
        out.append(
            f"auth.encryption_key_env: {var}; organizations cannot store provider keys "
            "(POST /providers/config answers 503) until it holds a 32-byte urlsafe-base64 "
            "key")
    return out
