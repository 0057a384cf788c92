"""Secrets: read once, from the environment variables the config names, and nowhere else.

The config file never holds a secret; it names variables (``api_key_env``, ``key_env``,
``admin_key_env``, ``encryption_key_env``). Values are hashed or kept in memory and never
logged.
"""

from __future__ import annotations

import base64
import hashlib
import os
import typing
from dataclasses import dataclass
from pathlib import Path

from .schema import ENV_PREFIX, Config, ConfigError, StaticKey


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
