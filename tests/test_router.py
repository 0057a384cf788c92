"""The router's choice, without servers: tiers by class and mode, the order within a tier,
needs before price, reach and exclusions, and the policy rules."""

from __future__ import annotations

import re

import pytest

from cognitude import config
from cognitude.config import ConfigError
from cognitude.ledger.pricing import load_catalog
from cognitude.providers.upstream import Providers
from cognitude.routing.router import Needs, NoModel, Router, needs_of
from cognitude.routing.rules import Policy, PolicyError, operator_policy, parse_policy

MODELS = ["gpt-4o-mini", "gpt-4.1-nano", "gpt-4.1-mini", "o4-mini", "gpt-4o", "o3",
          "claude-3-5-haiku", "text-embedding-3-small"]
NONE = Needs(frozenset(), 0)


def router(**routing: object) -> tuple[Router, Providers, config.Config]:
    cfg = config.parse({"providers": {
        "open": {"base_url": "http://o", "models": MODELS[:6] + MODELS[7:]},
        "own": {"base_url": "http://a", "models": ["claude-3-5-haiku", "gpt-4o"],
                "shared_key": False}},
        "routing": routing}, "t.toml", env={})
    secrets = config.Secrets({}, {}, "", None)
    providers = Providers(cfg, secrets)
    return Router(providers, load_catalog()), providers, cfg


def test_the_class_picks_the_tier_and_the_mode_the_order():
    r, _, _ = router()
    models = r.reachable((), Policy())
    assert r.choose("cost", "simple", NONE, models) == ("gpt-4.1-nano", "gpt-4o-mini")
    assert r.choose("cost", "medium", NONE, models) == ("gpt-4.1-mini", "o4-mini")
    assert r.choose("cost", "complex", NONE, models) == ("o3", "gpt-4o")  # o3 is cheaper
    assert r.choose("latency", "complex", NONE, models)[0] == "gpt-4o"  # 800 ms vs 5000
    assert r.choose("quality", "medium", NONE, models)[0] == "gpt-4o"  # one tier up
    assert r.choose("quality", "simple", NONE, models)[0] == "gpt-4o-mini"


def test_needs_come_before_price():
    r, _, _ = router()
    models = r.reachable((), Policy())
    json = Needs(frozenset({"json"}), 0)
    assert "o3" in r.choose("cost", "complex", json, models)
    tools = needs_of({"messages": [{"role": "user", "content": "hi"}], "tools": [{}]})
    assert tools.capabilities == {"tools"}
    big = Needs(frozenset(), 500_000)  # only the 1M-token gpt-4.1 family holds it
    assert r.choose("cost", "simple", big, models) == ("gpt-4.1-nano",)
    with pytest.raises(NoModel):
        r.choose("cost", "simple", Needs(frozenset(), 5_000_000), models)


def test_an_empty_tier_gives_way_upward_first():
    r, _, _ = router()
    no_standard = [p for p in r.reachable((), Policy()) if p.tier != "standard"]
    assert r.choose("cost", "medium", NONE, no_standard)[0] in ("o3", "gpt-4o")


def test_reach_follows_keys_and_exclusions():
    r, _, _ = router()
    names = {p.model for p in r.reachable((), Policy())}
    assert "claude-3-5-haiku" not in names  # only behind a provider that needs the org's key
    assert "text-embedding-3-small" not in names  # not a chat model
    assert "claude-3-5-haiku" in {p.model for p in r.reachable(("own",), Policy())}
    no_o3 = Policy(exclude_models=frozenset({"o3"}))
    assert "o3" not in {p.model for p in r.reachable((), no_o3)}
    only_open_excluded = Policy(exclude_providers=frozenset({"open"}))
    assert {p.model for p in r.reachable(("own",), only_open_excluded)} == {
        "claude-3-5-haiku", "gpt-4o"}


def test_needs_of_reads_images_json_and_size():
    n = needs_of({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "x" * 400}, {"type": "image_url", "image_url": {"url": "u"}}]}],
        "response_format": {"type": "json_schema"}, "max_tokens": 50})
    assert n.capabilities == {"vision", "json"} and n.tokens == 100 + 50


def test_policies_parse_strictly_and_stack():
    served, provs = MODELS, ["open", "own"]
    p = parse_policy({"default_mode": "latency", "rules": [
        {"match": {"contains": "Invoice", "code": False}, "model": "gpt-4o"},
        {"match": {"class": "simple"}, "class": "medium"}]}, served, provs)
    assert p.rules[0].matches("an invoice here", "simple", False)
    assert not p.rules[0].matches("an invoice here", "simple", True)
    assert p.rules[1].matches("anything", "simple", False)
    base = Policy("cost", (), frozenset({"o3"}), frozenset())
    mine = p.over(base)
    assert mine.default_mode == "latency" and mine.exclude_models == {"o3"}
    assert Policy().over(base).default_mode == "cost"
    for raw, where in [({"rules": [{"match": {}, "model": "gpt-4o"}]}, "rules[0].match"),
                       ({"rules": [{"match": {"contains": "x"}}]}, "rules[0]"),
                       ({"rules": [{"match": {"contains": "x"}, "class": "huge"}]},
                        "rules[0].class"),
                       ({"exclude_providers": ["nowhere"]}, "exclude_providers"),
                       ({"default_mode": "fast"}, "default_mode"),
                       ({"mode": "cost"}, "mode")]:
        with pytest.raises(PolicyError, match="^" + re.escape(where)):
            parse_policy(raw, served, provs)


def test_a_bad_config_rule_stops_the_start_naming_it():
    _, _, cfg = router(rules=[{"match": {"contains": "x"}, "model": "gpt-5-ultra"}])
    with pytest.raises(ConfigError, match=r"t.toml: routing.rules\[0\].model"):
        operator_policy(cfg)
