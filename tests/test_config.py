"""config.toml → typed, frozen config; bad files are refused naming the file and the key."""

from __future__ import annotations

import base64
import dataclasses
import os
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
    ({"providers": {"a": {"base_url": "http://a", "models": ["m", "n", "m"]}}},
     "providers.a.models: 'm' is listed twice"),
    ({"providers": {"a": {"base_url": "http://a", "models": ["m"]}},
      "routing": {"fallbacks": {"m": ["x"]}}},
     "routing.fallbacks.'m': fallback 'x' is not served by any provider"),
    ({"providers": {"a": {"base_url": "http://a", "models": ["m"]}},
      "routing": {"fallbacks": {"m": "m2"}}}, "routing.fallbacks.'m': expected a non-empty"),
    ({"providers": {"a": {"base_url": "http://a", "models": ["m"]}},
      "routing": {"fallbacks": {"m": ["m"]}}}, "a model cannot be its own fallback"),
    ({"providers": {"a": {"base_url": "http://a", "models": ["m"]}},
      "routing": {"aliases": {"m": "m"}}}, "routing.aliases.'m': 'm' is a model served"),
    ({"routing": {"fallback": {}}}, "f.toml: routing.fallback: unknown key"),
    ({"upstream": {"max_attempts": 0}}, "f.toml: upstream.max_attempts: must be 1..10"),
    ({"upstream": {"cooldown_failure_rate": 1.5}}, "upstream.cooldown_failure_rate"),
    ({"auth": {"static_keys": [{"org": "x"}]}}, "auth.static_keys[0]: set exactly one"),
    ({"auth": {"static_keys": [{"org": "x", "key_sha256": "abc"}]}},
     "auth.static_keys[0].key_sha256"),
])
def test_bad_values_name_file_and_key(raw, message):
    with pytest.raises(ConfigError) as info:
        config.parse(raw, "f.toml", env={})
    assert message in str(info.value)


def test_a_model_under_several_providers_is_several_deployments_in_file_order():
    cfg = config.parse({"providers": {"a": {"base_url": "http://a", "models": ["m"]},
                                      "b": {"base_url": "http://b", "models": ["m", "n"]}},
                        "routing": {"fallbacks": {"m": ["n"]}, "aliases": {"fast": "n"}}},
                       "f.toml", env={})
    assert [p.name for p in cfg.providers if "m" in p.models] == ["a", "b"]
    assert cfg.routing.fallbacks_of("m") == ("n",)
    assert cfg.routing.fallbacks_of("n") == ()
    assert dict(cfg.routing.aliases) == {"fast": "n"}


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
        config.read_secrets(cfg, env={"P_KEY": "sk-1"})


def test_unknown_cognitude_variable_is_refused_naming_the_closest_known_one():
    with pytest.raises(ConfigError) as info:
        config.parse({}, "f.toml", env={"COGNITUDE_SERVR_PORT": "9001", "PATH": "/bin"})
    msg = str(info.value)
    assert "f.toml: environment variable COGNITUDE_SERVR_PORT: unknown" in msg
    assert "did you mean COGNITUDE_SERVER_PORT?" in msg
    with pytest.raises(ConfigError, match="COGNITUDE_ADMN_KEY: unknown .*COGNITUDE_ADMIN_KEY"):
        config.parse({}, "f.toml", env={"COGNITUDE_ADMN_KEY": "x"})


def test_overrides_and_secrets_named_by_the_config_are_known():
    """Every override, the two top-level variables, the variables the CLI exports for its
    workers, the bench tools' own, and whatever a *_env key names: none is refused."""
    raw = {"providers": {"p": {"base_url": "http://x", "api_key_env": "COGNITUDE_P_KEY"}},
           "auth": {"static_keys": [{"org": "acme", "key_env": "COGNITUDE_ACME_KEY"}],
                    "admin_key_env": "COGNITUDE_OPERATOR", "encryption_key_env": "COGNITUDE_AES"},
           "alerts": {"smtp_password_env": "COGNITUDE_SMTP_PASSWORD"}}
    env = {name: "x" for name in ("COGNITUDE_P_KEY", "COGNITUDE_ACME_KEY", "COGNITUDE_OPERATOR",
                                  "COGNITUDE_AES", "COGNITUDE_SMTP_PASSWORD",
                                  "COGNITUDE_BENCH_HOST", "COGNITUDE_CONFIG")}
    env |= {"COGNITUDE_DATA_DIR": "/tmp/d", "COGNITUDE_REDIS_URL": "redis://h:1/0",
            "COGNITUDE_POSTGRES_DSN": "postgresql://h/db", "COGNITUDE_SERVER_HOST": "0.0.0.0",
            "COGNITUDE_SERVER_ACCESS_LOG": "true"}
    cfg = config.parse(raw, "x", env=env)
    assert cfg.server.access_log is True and cfg.postgres.dsn == "postgresql://h/db"
    assert config.secret_env_names(cfg) == {
        "COGNITUDE_P_KEY", "COGNITUDE_ACME_KEY", "COGNITUDE_OPERATOR", "COGNITUDE_AES",
        "COGNITUDE_SMTP_PASSWORD"}
    # The default names stop being known when the config names other variables.
    with pytest.raises(ConfigError, match="COGNITUDE_ADMIN_KEY: unknown"):
        config.parse(raw, "x", env={"COGNITUDE_ADMIN_KEY": "x"})
    # Every key of every section has its override, scalar or not (a table-valued key is
    # refused by _apply_env with its own message, not as unknown).
    for section, cls in config._SECTIONS.items():
        for f in dataclasses.fields(cls):
            name = f"COGNITUDE_{section.upper()}_{f.name.upper()}"
            with pytest.raises(ConfigError) as info:
                config.parse({}, "x", env={name: "not-a-value", "COGNITUDE_NOPE": ""})
            assert f"{name}: unknown" not in str(info.value)


def test_a_shared_provider_without_its_key_is_refused():
    raw = {"providers": {"p": {"base_url": "http://x", "api_key_env": "P_KEY"},
                         "free": {"base_url": "http://y", "api_key_env": ""}}}
    cfg = config.parse(raw, "f.toml", env={})
    for env in ({}, {"P_KEY": ""}):
        with pytest.raises(ConfigError) as info:
            config.read_secrets(cfg, env=env)
        assert "f.toml: providers.p.api_key_env: environment variable P_KEY is not set" in str(
            info.value)
    s = config.read_secrets(cfg, env={"P_KEY": "sk-1"})
    assert s.provider_keys == {"p": "sk-1", "free": ""}
    # api_key_env = "" (the bundled mock needs no key) is not worth a word.
    assert not [w for w in config.startup_warnings(cfg, s) if "providers." in w]


def test_a_provider_whose_orgs_bring_their_own_key_only_warns():
    raw = {"providers": {"p": {"base_url": "http://x", "api_key_env": "P_KEY",
                               "shared_key": False}}}
    cfg = config.parse(raw, "f.toml", env={})
    s = config.read_secrets(cfg, env={})
    assert s.provider_keys == {"p": ""}
    (warning,) = [w for w in config.startup_warnings(cfg, s) if "providers." in w]
    assert "providers.p.api_key_env: environment variable P_KEY is not set" in warning
    s = config.read_secrets(cfg, env={"P_KEY": "sk-1"})
    assert not [w for w in config.startup_warnings(cfg, s) if "providers." in w]


def test_encryption_key_missing_warns_and_invalid_is_refused():
    cfg = config.parse({"auth": {"encryption_key_env": "AES_KEY"}}, "f.toml", env={})
    (warning,) = config.startup_warnings(cfg, config.read_secrets(cfg, env={}))
    assert "environment variable AES_KEY is not set" in warning and "503" in warning
    good = base64.urlsafe_b64encode(os.urandom(32)).decode()
    assert config.startup_warnings(cfg, config.read_secrets(cfg, env={"AES_KEY": good})) == []
    for bad in ("short", base64.urlsafe_b64encode(os.urandom(16)).decode()):
        with pytest.raises(ConfigError, match="f.toml: auth.encryption_key_env: AES_KEY must"):
            config.read_secrets(cfg, env={"AES_KEY": bad})


@pytest.mark.parametrize("redis,postgres,created", [
    ("embedded", "embedded", True),
    ("embedded", "postgresql://h/db", False),  # the key would not sit next to the data
    ("redis://h:1/0", "postgresql://h/db", False),
])
def test_dev_encryption_key_only_next_to_an_embedded_postgres(
        tmp_path, monkeypatch, redis, postgres, created):
    # setenv first: it records the variable's absence, so the key the function exports is
    # removed again after the test (delenv alone records nothing for an unset variable).
    monkeypatch.setenv("COGNITUDE_ENCRYPTION_KEY", "")
    monkeypatch.delenv("COGNITUDE_ENCRYPTION_KEY")
    cfg = config.parse({"redis": {"url": redis}, "postgres": {"dsn": postgres}}, "x", env={})
    path = tmp_path / "encryption_key"
    config.ensure_dev_encryption_key(cfg, path)
    assert path.exists() is created
    assert ("COGNITUDE_ENCRYPTION_KEY" in os.environ) is created
    if created:
        assert path.stat().st_mode & 0o777 == 0o600
        assert len(config.read_secrets(cfg).encryption_key or b"") == 32


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


def test_a_bad_price_override_stops_the_start_naming_it(proxy_factory):
    """[prices] entries are checked against the shipped catalog when it loads, before the
    proxy serves (the config package itself knows no catalog: it is below the ledger)."""
    with pytest.raises(RuntimeError) as info:
        proxy_factory('[prices."my-finetune"]\ninput_per_mtok = 0.3\n')
    msg = str(info.value)
    assert "exited with 2" in msg and "Traceback" not in msg
    assert "config.toml: prices:" in msg and "my-finetune" in msg
