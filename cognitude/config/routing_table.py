"""``[routing]``: fallbacks, aliases and the smart-routing keys, parsed and checked.

Its tables have model names for keys, which the generic schema coercion of ``loader`` has
no type for; the rules themselves (``[[routing.rules]]``) are checked by
``cognitude.routing.rules`` when the policy is built at start, naming the rule.
"""

from __future__ import annotations

from typing import Any

from cognitude.config.schema import ConfigError, RoutingConfig


def validate_routing(routing: RoutingConfig, served: set[str]) -> None:
    if routing.default_mode not in ("cost", "latency", "quality"):
        raise ConfigError("routing.default_mode: expected \"cost\", \"latency\" or "
                          f"\"quality\", got {routing.default_mode!r}")
    if routing.default_class not in ("simple", "medium", "complex"):
        raise ConfigError("routing.default_class: expected \"simple\", \"medium\" or "
                          f"\"complex\", got {routing.default_class!r}")
    if routing.baseline_model and routing.baseline_model not in served:
        raise ConfigError(f"routing.baseline_model: {routing.baseline_model!r} is not served "
                          "by any provider")
    for model, targets in routing.fallbacks:
        where = f"routing.fallbacks.{model!r}"
        if model not in served:
            raise ConfigError(f"{where}: no provider serves {model!r} (its fallbacks would "
                              "never be used)")
        for t in targets:
            if t not in served:
                raise ConfigError(f"{where}: fallback {t!r} is not served by any provider")
            if t == model:
                raise ConfigError(f"{where}: a model cannot be its own fallback")
    for alias, model in routing.aliases:
        where = f"routing.aliases.{alias!r}"
        if alias in served:
            raise ConfigError(f"{where}: {alias!r} is a model served by a provider; an alias "
                              "may not hide it")
        if model not in served:
            raise ConfigError(f"{where}: {model!r} is not served by any provider")


def routing_table(value: Any) -> RoutingConfig:
    """``[routing]``: tables of model names, which the generic schema coercion has no type
    for (a TOML table with arbitrary keys)."""
    if not isinstance(value, dict):
        raise ConfigError("routing: expected a table")
    tbl = value
    known = ("aliases", "baseline_model", "classify_all", "default_class", "default_mode",
             "exclude_models", "exclude_providers", "fallbacks", "rules")
    unknown = sorted(set(tbl) - set(known))
    if unknown:
        raise ConfigError(f"routing.{unknown[0]}: unknown key (known: {', '.join(known)})")
    fallbacks = []
    for model, targets in _name_table(tbl.get("fallbacks", {}), "routing.fallbacks"):
        if (not isinstance(targets, list) or not targets
                or not all(isinstance(t, str) and t for t in targets)):
            raise ConfigError(f"routing.fallbacks.{model!r}: expected a non-empty array of "
                              f"model names, got {targets!r}")
        fallbacks.append((model, tuple(targets)))
    aliases = []
    for alias, model in _name_table(tbl.get("aliases", {}), "routing.aliases"):
        if not isinstance(model, str) or not model:
            raise ConfigError(f"routing.aliases.{alias!r}: expected a model name, got {model!r}")
        aliases.append((alias, model))
    plain: dict[str, Any] = {}
    for key in ("default_mode", "default_class", "baseline_model"):
        if key in tbl:
            if not isinstance(tbl[key], str):
                raise ConfigError(f"routing.{key}: expected string, got {tbl[key]!r}")
            plain[key] = tbl[key]
    for key in ("exclude_models", "exclude_providers"):
        if key in tbl:
            names = tbl[key]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ConfigError(f"routing.{key}: expected an array of names, got {names!r}")
            plain[key] = tuple(names)
    if "classify_all" in tbl:
        if not isinstance(tbl["classify_all"], bool):
            raise ConfigError("routing.classify_all: expected boolean (true/false), got "
                              f"{tbl['classify_all']!r}")
        plain["classify_all"] = tbl["classify_all"]
    rules = tbl.get("rules", [])
    if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
        raise ConfigError("routing.rules: expected an array of tables [[routing.rules]]")
    return RoutingConfig(tuple(fallbacks), tuple(aliases), **plain,
                         rules=tuple(tuple(r.items()) for r in rules))


def _name_table(value: Any, where: str) -> list[tuple[str, Any]]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table of model names")
    return list(value.items())
