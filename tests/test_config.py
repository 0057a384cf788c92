"""config.toml → typed, frozen config; bad files are refused naming the file and the key."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from cognitude import config
from cognitude.config import ConfigError

REPO = Path(__file__).resolve().parent.parent


def test_shipped_config_equals_the_defaults():
    """Every key in the shipped config.toml carries the code's default (except providers)."""
    raw = tomllib.loads((REPO / "config.toml").read_text())
    shipped = config.parse(raw, "config.toml", env={})
    defaults = config.parse({}, "<defaults>", env={})
    for f in dataclasses.fields(config.Config):
        if f.name in ("providers", "source"):
            continue
        assert getattr(shipped, f.name) == getattr(defaults, f.name), f.name
    # ... and documents every key of every section.
    for section, cls in config._SECTIONS.items():
        for f in dataclasses.fields(cls):
            if f.name == "static_keys":
                continue
            assert f.name in raw[section], f"config.toml lacks [{section}] {f.name}"
    assert shipped.providers[0].name == "mock"


def test_config_is_frozen():
    cfg = config.parse({}, "x", env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.server.port = 1  # type: ignore[misc]


@pytest.mark.parametrize("raw,message", [
    ({"server": {"prot": 1}}, "f.toml: server.prot: unknown key"),
    ({"server": {"port": "80"}}, "f.toml: server.port: expected integer"),
    ({"server": {"port": 70000}}, "f.toml: server.port: must be 0..65535"),
    ({"cache": {"enabled": "yes"}}, "f.toml: cache.enabled: expected boolean"),
    ({"cache": {"ttl_s": 0}}, "f.toml: cache.ttl_s: must be > 0"),
    ({"rate_limits": {"requests_per_minute": -5}}, "rate_limits.requests_per_minute"),
    ({"redis": {"url": "http://x"}}, "f.toml: redis.url: expected"),
    ({"postgres": {"dsn": "mysql://x"}}, "f.toml: postgres.dsn"),
    ({"nonsense": 1}, "f.toml: nonsense: unknown key"),
    ({"server": 5}, "f.toml: server: expected a table"),
    ({"providers": {"a": {"base_url": "ftp://x"}}}, "providers.a.base_url"),
    ({"providers": {"a": {"base_url": "http://x", "kind": "cohere"}}}, "providers.a.kind"),
    ({"providers": {"a": {"base_url": "http://x", "modles": []}}}, "providers.a.modles"),
    ({"providers": {"a": {"base_url": "http://a", "models": ["m"]},
                    "b": {"base_url": "http://b", "models": ["m"]}}},
     "providers.b.models: 'm' is already served by providers.a"),
    ({"auth": {"static_keys": [{"org": "x"}]}}, "auth.static_keys[0]: set exactly one"),
    ({"auth": {"static_keys": [{"org": "x", "key_sha256": "abc"}]}},
     "auth.static_keys[0].key_sha256"),
])
def test_bad_values_name_file_and_key(raw, message):
    with pytest.raises(ConfigError) as info:
        config.parse(raw, "f.toml", env={})
    assert message in str(info.value)


def test_env_overrides_single_keys():
    cfg = config.parse({}, "x", env={"COGNITUDE_REDIS_URL": "redis://h:1/0",
                                     "COGNITUDE_SERVER_PORT": "9001",
                                     "COGNITUDE_CACHE_ENABLED": "false",
                                     "COGNITUDE_DATA_DIR": "/tmp/d"})
    assert cfg.redis.url == "redis://h:1/0" and not cfg.embedded_redis
    assert cfg.server.port == 9001 and cfg.cache.enabled is False and cfg.data_dir == "/tmp/d"
    with pytest.raises(ConfigError, match="COGNITUDE_SERVER_PORT: expected integer"):
        config.parse({}, "x", env={"COGNITUDE_SERVER_PORT": "eighty"})


def test_secrets_come_from_named_env_vars_only():
    raw = {"providers": {"p": {"base_url": "http://x", "api_key_env": "P_KEY"}},
           "auth": {"static_keys": [{"org": "acme", "key_env": "ACME_KEY"}],
                    "admin_key_env": "ADMIN"}}
    cfg = config.parse(raw, "x", env={})
    s = config.read_secrets(cfg, env={"P_KEY": "sk-1", "ACME_KEY": "cog-abc", "ADMIN": "adm"})
    assert s.provider_keys == {"p": "sk-1"}
    assert list(s.static_key_hashes) == [config.sha256_hex("cog-abc")]
    assert s.admin_key_hash == config.sha256_hex("adm")
    with pytest.raises(ConfigError, match="ACME_KEY is not set"):
        config.read_secrets(cfg, env={})


def test_load_reports_toml_syntax_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nport = 1\n")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        config.load(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        config.load(tmp_path / "missing.toml")


def test_serve_refuses_a_bad_config_with_exit_2(tmp_path):
    bad = tmp_path / "config.toml"
    bad.write_text("[cache]\nttl_s = \"a day\"\n")
    p = subprocess.run([sys.executable, "-m", "cognitude.cli", "serve", "--config", str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert f"{bad}: cache.ttl_s: expected integer" in p.stderr
    assert "Traceback" not in p.stderr
