"""Choosing a model for a ``smart-*`` request: the class's tier, the mode's order, the
request's needs, among the models the organization can reach.

- **Tier** by class (DESIGN §11): simple → economy, medium → standard, complex → premium;
  ``quality`` sends medium to premium too. A tier with no usable model gives way to the
  next tier up (under-routing is the costly error), then down.
- **Order** within the tier: ``cost`` cheapest first (a blended price, 3 input tokens to 1
  output token, the shape of typical chat traffic), ``latency`` fastest first (the
  catalog's ``latency_ms``), ``quality`` the most expensive first (the catalog's proxy for
  capability).
- **Needs first**: a request with tools, images or a JSON response format only goes to a
  model whose catalog entry has that capability, and only to one whose context window holds
  the prompt (estimated at 4 characters a token) plus its ``max_tokens``.
- **Reach**: a model counts when one of its deployments is a provider the organization may
  use (shared, or its own key stored) and not excluded by the policy.

The chosen model comes first, then up to ``FALLBACKS`` others of its tier in the same order
(the plan's same-tier fallbacks).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cognitude.ledger.pricing import TIERS, ModelPrice, PriceCatalog
from cognitude.providers.upstream import Providers
from cognitude.routing.classifier import Classification, classify
from cognitude.routing.rules import SMART_MODELS, Policy, Rule, latest_user_text

FALLBACKS = 2
TIER_OF = {
    "cost": {"simple": "economy", "medium": "standard", "complex": "premium"},
    "latency": {"simple": "economy", "medium": "standard", "complex": "premium"},
    "quality": {"simple": "economy", "medium": "premium", "complex": "premium"},
}
_CHARS_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class Needs:
    """What a request needs of the model that answers it."""

    capabilities: frozenset[str]  # "tools", "vision", "json"
    tokens: int  # prompt (estimated) + max_tokens

    def as_json(self) -> dict[str, Any]:
        return {"capabilities": sorted(self.capabilities), "tokens": self.tokens}


def needs_of(doc: dict[str, Any]) -> Needs:
    caps = set()
    if doc.get("tools") or doc.get("functions"):
        caps.add("tools")
    fmt = doc.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        caps.add("json")
    chars = 0
    for m in doc.get("messages") or ():
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    continue
                if part.get("type") == "image_url":
                    caps.add("vision")
                text = part.get("text")
                if isinstance(text, str):
                    chars += len(text)
    limit = doc.get("max_completion_tokens") or doc.get("max_tokens")
    out = limit if isinstance(limit, int) and not isinstance(limit, bool) else 0
    return Needs(frozenset(caps), chars // _CHARS_PER_TOKEN + out)


def blended(price: ModelPrice) -> int:
    """Micro-USD per 4M tokens at 3 input : 1 output."""
    return 3 * price.input_micros_per_mtok + price.output_micros_per_mtok


_ORDER = {
    "cost": lambda p: (blended(p), p.latency_ms, p.model),
    "latency": lambda p: (p.latency_ms, blended(p), p.model),
    "quality": lambda p: (-blended(p), p.latency_ms, p.model),
}


class NoModel(Exception):
    """No model the organization can reach has what the request needs."""


@dataclass(frozen=True, slots=True)
class Decision:
    """Everything a smart request's route was decided from (``POST /routing/explain``)."""

    mode: str
    classification: Classification
    cls: str  # the classifier's, unless a rule pinned another
    rule: int | None  # the index of the rule that matched
    needs: Needs
    models: tuple[str, ...]  # chosen first, then same-tier fallbacks

    @property
    def route(self) -> str:
        return f"smart-{self.mode}:{self.cls}"


class Router:
    """The chat models this proxy serves, with their catalog entries; built at start."""

    __slots__ = ("_providers", "_models", "default_class")

    def __init__(self, providers: Providers, catalog: PriceCatalog,
                 default_class: str = "medium") -> None:
        self._providers = providers
        self.default_class = default_class
        self._models: list[ModelPrice] = []
        for model in providers.by_model:
            price = catalog.get(model)
            if price is not None and "chat" in price.capabilities:
                self._models.append(price if price.model == model else _renamed(price, model))

    def reachable(self, own: Iterable[str], policy: Policy) -> list[ModelPrice]:
        """The chat models this organization may be routed to."""
        own = frozenset(own)
        out = []
        for price in self._models:
            if price.model in policy.exclude_models:
                continue
            if any(p.name not in policy.exclude_providers and self._providers.reachable(p, own)
                   for p in self._providers.by_model[price.model]):
                out.append(price)
        return out

    def choose(self, mode: str, cls: str, needs: Needs, models: list[ModelPrice]
               ) -> tuple[str, ...]:
        """The chosen model, then its same-tier fallbacks; NoModel when none fits."""
        fit = [p for p in models if needs.capabilities <= p.capabilities
               and needs.tokens <= p.context_window]
        if not fit:
            raise NoModel
        target = TIERS.index(TIER_OF[mode][cls])
        order = [*range(target, len(TIERS)), *range(target - 1, -1, -1)]
        for tier in (TIERS[i] for i in order):
            ranked = sorted((p for p in fit if p.tier == tier), key=_ORDER[mode])
            if ranked:
                return tuple(p.model for p in ranked[:1 + FALLBACKS])
        raise NoModel  # unreachable: every price has one of TIERS

    def decide(self, doc: dict[str, Any], model: str, own: Iterable[str],
               policy: Policy) -> Decision:
        """The route of a ``smart-*`` request (``model`` one of ``SMART_MODELS``)."""
        mode = SMART_MODELS[model] or policy.default_mode or "cost"
        found = classify(doc, self.default_class)
        cls, index, pinned = found.cls, None, None
        if policy.rules:
            index, rule = _first_match(policy.rules, doc, found)
            if rule is not None:
                cls, pinned = rule.cls or cls, rule.model
        needs = needs_of(doc)
        models = (pinned,) if pinned else self.choose(
            mode, cls, needs, self.reachable(own, policy))
        return Decision(mode, found, cls, index, needs, models)

    def premium(self, policy: Policy) -> str | None:
        """What smart-quality picks for a complex prompt with no special needs, every
        provider reachable: the model a smart request's saving is measured against."""
        every = [p.name for p in self._providers.all]
        try:
            return self.choose("quality", "complex", Needs(frozenset(), 0),
                               self.reachable(every, policy))[0]
        except NoModel:
            return None

    def by_tier(self, models: list[ModelPrice]) -> dict[str, list[ModelPrice]]:
        return {t: sorted((p for p in models if p.tier == t), key=_ORDER["cost"])
                for t in TIERS}


def _first_match(rules: tuple[Rule, ...], doc: dict[str, Any],
                 found: Classification) -> tuple[int | None, Rule | None]:
    text = latest_user_text(doc).lower()
    has_code = any(name.startswith("code") for name, _ in found.signals)
    for i, rule in enumerate(rules):
        if rule.matches(text, found.cls, has_code):
            return i, rule
    return None, None


def _renamed(price: ModelPrice, model: str) -> ModelPrice:
    """A dated snapshot priced by its base entry, under its own name."""
    return ModelPrice(model, price.provider, price.input_micros_per_mtok,
                      price.output_micros_per_mtok, price.context_window, price.tier,
                      price.max_output_tokens, price.capabilities, price.latency_ms)
