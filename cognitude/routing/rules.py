"""Routing policy: the operator's ``[routing]`` choices and an organization's own on top.

A policy says what ``model = "smart"`` means (``default_mode``), which models and providers
are never used, and rules checked in order against a smart request, the first match
deciding: ``{"match": {...}, "model": M}`` pins the model, ``{"match": {...}, "class": C}``
pins the class (the mode then picks the model). A match is any of ``contains`` (a substring
of the latest user turn, case-insensitive), ``code`` (``true``: the classifier saw code) and
``class`` (the classifier's class); several keys must all hold.

An organization's policy (``PUT /routing/config``) goes first: its rules before the
operator's, its exclusions added to the operator's, its default mode instead of the
operator's. Both are parsed here, so the file and the API refuse the same mistakes with
the same words.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cognitude.config import Config, ConfigError

MODES = ("cost", "latency", "quality")
CLASSES = ("simple", "medium", "complex")
# The model names clients send, and the mode each stands for (None: the policy's default).
SMART_MODELS: dict[str, str | None] = {
    "smart": None, "smart-cost": "cost", "smart-latency": "latency", "smart-quality": "quality"}
MAX_RULES = 50
MAX_CONTAINS = 200


@dataclass(frozen=True, slots=True)
class Rule:
    contains: str | None = None  # lower-cased
    code: bool | None = None
    when_class: str | None = None
    model: str | None = None  # what a match pins: a model ...
    cls: str | None = None  # ... or a class

    def matches(self, text_lower: str, cls: str, has_code: bool) -> bool:
        return ((self.contains is None or self.contains in text_lower)
                and (self.code is None or self.code == has_code)
                and (self.when_class is None or self.when_class == cls))

    def as_json(self) -> dict[str, Any]:
        match: dict[str, Any] = {}
        if self.contains is not None:
            match["contains"] = self.contains
        if self.code is not None:
            match["code"] = self.code
        if self.when_class is not None:
            match["class"] = self.when_class
        pin = {"model": self.model} if self.model is not None else {"class": self.cls}
        return {"match": match, **pin}


@dataclass(frozen=True, slots=True)
class Policy:
    default_mode: str | None = None  # None: the next policy's (the operator's: "cost")
    rules: tuple[Rule, ...] = ()
    exclude_models: frozenset[str] = frozenset()
    exclude_providers: frozenset[str] = frozenset()

    def over(self, base: Policy) -> Policy:
        """This (an organization's) policy on top of ``base`` (the operator's)."""
        return Policy(self.default_mode or base.default_mode, self.rules + base.rules,
                      self.exclude_models | base.exclude_models,
                      self.exclude_providers | base.exclude_providers)

    def as_json(self) -> dict[str, Any]:
        return {"default_mode": self.default_mode,
                "rules": [r.as_json() for r in self.rules],
                "exclude_models": sorted(self.exclude_models),
                "exclude_providers": sorted(self.exclude_providers)}


def operator_policy(cfg: Config) -> Policy:
    """The ``[routing]`` policy of the config file; ``ConfigError`` naming the file and the
    rule (``serve`` checks it before it starts)."""
    r = cfg.routing
    raw = {"default_mode": r.default_mode, "rules": [dict(rule) for rule in r.rules],
           "exclude_models": list(r.exclude_models),
           "exclude_providers": list(r.exclude_providers)}
    try:
        return parse_policy(raw, (m for p in cfg.providers for m in p.models),
                            (p.name for p in cfg.providers))
    except PolicyError as exc:
        raise ConfigError(f"{cfg.source}: routing.{exc}") from None


def latest_user_text(doc: Mapping[str, Any], limit: int = 20_000) -> str:
    """The text of the last user message (its first ``limit`` characters), for ``contains``."""
    messages = doc.get("messages")
    if not isinstance(messages, list):
        return ""
    for m in reversed(messages):
        if isinstance(m, Mapping) and m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, str):
                return content[:limit]
            if isinstance(content, list):
                return " ".join(p["text"] for p in content if isinstance(p, Mapping)
                                and isinstance(p.get("text"), str))[:limit]
            return ""
    return ""


def effective(org: Policy | None, operator: Policy) -> Policy:
    """The policy a request of an organization runs under: its own on top of the operator's."""
    return org.over(operator) if org is not None else operator


class PolicyError(ValueError):
    """A policy that cannot be used; the message names the field (``rules[2].match``)."""


def parse_policy(raw: Mapping[str, Any], models: Iterable[str],
                 providers: Iterable[str]) -> Policy:
    """A policy from its JSON / TOML shape; ``models`` and ``providers``: the names that
    exist (a rule pinning a model nobody serves is refused, not silently ignored)."""
    known = {"default_mode", "rules", "exclude_models", "exclude_providers"}
    for key in raw:
        if key not in known:
            raise PolicyError(f"{key}: unknown field (known: {', '.join(sorted(known))})")
    mode = raw.get("default_mode")
    if mode is not None and mode not in MODES:
        raise PolicyError(f"default_mode: expected one of {', '.join(MODES)}, got {mode!r}")
    models, providers = frozenset(models), frozenset(providers)
    rules = raw.get("rules") or []
    if not isinstance(rules, list) or len(rules) > MAX_RULES:
        raise PolicyError(f"rules: expected an array of at most {MAX_RULES} rules")
    return Policy(mode, tuple(_rule(r, f"rules[{i}]", models) for i, r in enumerate(rules)),
                  _names(raw.get("exclude_models"), "exclude_models", models),
                  _names(raw.get("exclude_providers"), "exclude_providers", providers))


def _names(value: Any, where: str, known: frozenset[str]) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{where}: expected an array of names")
    unknown = sorted(set(value) - known)
    if unknown:
        raise PolicyError(f"{where}: {unknown[0]!r} is not served here")
    return frozenset(value)


def _rule(raw: Any, where: str, models: frozenset[str]) -> Rule:
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{where}: expected an object with match and model or class")
    unknown = sorted(set(raw) - {"match", "model", "class"})
    if unknown:
        raise PolicyError(f"{where}.{unknown[0]}: unknown field (known: class, match, model)")
    model, cls = raw.get("model"), raw.get("class")
    if (model is None) == (cls is None):
        raise PolicyError(f"{where}: give exactly one of model and class")
    if model is not None and model not in models:
        raise PolicyError(f"{where}.model: {model!r} is not served here")
    if cls is not None and cls not in CLASSES:
        raise PolicyError(f"{where}.class: expected one of {', '.join(CLASSES)}, got {cls!r}")
    match = raw.get("match")
    if not isinstance(match, Mapping) or not match:
        raise PolicyError(f"{where}.match: expected an object with contains, code or class")
    unknown = sorted(set(match) - {"contains", "code", "class"})
    if unknown:
        raise PolicyError(f"{where}.match.{unknown[0]}: unknown field "
                          "(known: class, code, contains)")
    contains, code, when = match.get("contains"), match.get("code"), match.get("class")
    if contains is not None and (not isinstance(contains, str) or not contains
                                 or len(contains) > MAX_CONTAINS):
        raise PolicyError(f"{where}.match.contains: expected a string of 1..{MAX_CONTAINS} "
                          "characters")
    if code is not None and not isinstance(code, bool):
        raise PolicyError(f"{where}.match.code: expected true or false")
    if when is not None and when not in CLASSES:
        raise PolicyError(f"{where}.match.class: expected one of {', '.join(CLASSES)}")
    return Rule(contains.lower() if contains else None, code, when, model, cls)
