"""Model price catalog: what a request cost, in integer micro-USD.

Prices come from the packaged ``prices.toml`` (public list prices, USD per million tokens),
optionally overridden per model from config. They are stored as integers: micro-USD per
million tokens (``$0.15/M`` → ``150_000``). A request's exact cost in micro-USD is then

    (prompt_tokens * input + completion_tokens * output) / 1_000_000

computed with Python ints (no float at any point) and rounded half up once, at the end:
``(numerator + 500_000) // 1_000_000``. Rounding per side or per token would drift; floats
would not be exact for prices such as 0.15. Prices with more than 6 decimal places are
rejected instead of being silently rounded.

Unknown models cost ``None`` (recorded as NULL, never guessed) and are logged once per name.

A deployment may have its own price: an override named ``"<provider>/<model>"`` patches the
model's entry for requests that provider answered (``cost_micros(..., provider=)``), so
the cost of a request is the price of the deployment that answered it.

``max_output_tokens`` (optional, default ``DEFAULT_MAX_OUTPUT``) is the model's output
limit: what a request to a provider that requires ``max_tokens`` (Anthropic) asks for when
the client did not say. ``capabilities`` and ``latency_ms`` are what smart routing reads
(one catalog serves billing and routing, DESIGN §11).
"""

from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from importlib import resources
from typing import Any

from cognitude.config import Config, ConfigError

log = logging.getLogger("cognitude.pricing")

TIERS = ("economy", "standard", "premium")
FIELDS = ("provider", "input_per_mtok", "output_per_mtok", "context_window", "tier")
OPTIONAL_FIELDS = ("max_output_tokens", "capabilities", "latency_ms")
DEFAULT_MAX_OUTPUT = 4096
CAPABILITIES = ("chat", "embeddings", "tools", "vision", "json")
DEFAULT_LATENCY_MS = 1000
PRICE_SCALE = 1_000_000  # micro-USD per USD
_HALF = PRICE_SCALE // 2
# Dated snapshots and aliases price like their base model unless listed themselves:
# gpt-4o-mini-2024-07-18, claude-3-5-sonnet-20241022, claude-3-5-sonnet-latest.
_SNAPSHOT_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|latest)$")
# Bounds on the per-name memo and the "already logged" set: model names arrive from
# upstream responses, so a misbehaving provider must not grow them without limit.
_MAX_MEMO = 10_000


@dataclass(frozen=True, slots=True)
class ModelPrice:
    model: str
    provider: str
    input_micros_per_mtok: int  # micro-USD per 1M input tokens
    output_micros_per_mtok: int  # micro-USD per 1M output tokens
    context_window: int
    tier: str
    max_output_tokens: int = DEFAULT_MAX_OUTPUT
    capabilities: frozenset[str] = frozenset({"chat"})
    latency_ms: int = DEFAULT_LATENCY_MS

    def cost_micros(self, prompt_tokens: int, completion_tokens: int) -> int:
        numerator = (prompt_tokens * self.input_micros_per_mtok
                     + completion_tokens * self.output_micros_per_mtok)
        return (numerator + _HALF) // PRICE_SCALE


class PriceCatalog:
    """Validated, immutable prices plus a small memo of name → price resolutions."""

    __slots__ = ("_prices", "_memo", "_logged_unknown", "_deployments")

    def __init__(self, prices: Mapping[str, ModelPrice]) -> None:
        self._prices = dict(prices)
        self._memo: dict[str, ModelPrice | None] = {}
        self._logged_unknown: set[str] = set()
        # Deployment prices ("<provider>/<model>"): only looked for when there are any.
        self._deployments = any("/" in name for name in self._prices)

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and self.get(model) is not None

    def __len__(self) -> int:
        return len(self._prices)

    def models(self) -> tuple[str, ...]:
        return tuple(sorted(self._prices))

    def get(self, model: str) -> ModelPrice | None:
        """The price of ``model`` (exact name, else its undated base name), or None."""
        try:
            return self._memo[model]
        except KeyError:
            pass
        price = self._prices.get(model)
        if price is None:
            base = _SNAPSHOT_SUFFIX.sub("", model)
            price = self._prices.get(base) if base != model else None
        if len(self._memo) >= _MAX_MEMO:
            self._memo.clear()  # rare; a cleared entry costs one regex
        self._memo[model] = price
        return price

    def max_output(self, model: str) -> int:
        price = self.get(model)
        return price.max_output_tokens if price is not None else DEFAULT_MAX_OUTPUT

    def cost_micros(self, model: str, prompt_tokens: int, completion_tokens: int,
                    provider: str | None = None) -> int | None:
        """Exact integer micro-USD for the tokens, or None for a model without a price;
        ``provider``: the deployment that answered, when it has a price of its own."""
        price = None
        if self._deployments and provider is not None:
            price = self._prices.get(f"{provider}/{model}")
        if price is None:
            price = self.get(model)
        if price is None:
            self._log_unknown(model)
            return None
        return price.cost_micros(prompt_tokens, completion_tokens)

    def _log_unknown(self, model: str) -> None:
        if model in self._logged_unknown:
            return
        if len(self._logged_unknown) >= _MAX_MEMO:
            return  # already said plenty; don't let the set grow without bound
        self._logged_unknown.add(model)
        log.warning("no price for model %r: its usage is recorded with cost NULL"
                    " (add it to the price overrides in config.toml)", model)


def catalog_of(cfg: Config) -> PriceCatalog:
    """The catalog the config asks for; a bad ``[prices]`` entry is a ConfigError naming the
    file, the model and the field (``serve`` checks it before it starts)."""
    try:
        return load_catalog(cfg.price_overrides())
    except ValueError as exc:
        raise ConfigError(f"{cfg.source}: prices: {exc}") from None


def load_catalog(overrides: Mapping[str, Mapping[str, Any]] | None = None) -> PriceCatalog:
    """The packaged catalog with ``overrides`` applied (a partial entry patches a shipped model;
    a new model needs every field). Raises ValueError naming the model and field at fault."""
    text = resources.files("cognitude.ledger").joinpath("prices.toml").read_text(encoding="utf-8")
    # parse_float=Decimal: "0.15" must stay exactly 0.15, not the nearest binary float.
    raw = tomllib.loads(text, parse_float=Decimal).get("models", {})
    entries: dict[str, dict[str, Any]] = {name: dict(e) for name, e in raw.items()}
    deployments = {}
    for name, patch in (overrides or {}).items():
        if not isinstance(patch, Mapping):
            raise ValueError(f"price for model {name!r}: expected a table of fields")
        if name not in entries and "/" in name:
            deployments[name] = patch  # patches its model's entry, once every model is in
            continue
        entries[name] = {**entries.get(name, {}), **patch}
    for name, patch in deployments.items():
        model = name.split("/", 1)[1]
        entries[name] = {**entries.get(model, {}), **patch}
    return PriceCatalog({name: _parse_entry(name, e) for name, e in entries.items()})


def _bad(model: str, field: str, why: str) -> ValueError:
    return ValueError(f"price for model {model!r}: field {field!r} {why}")


def _parse_entry(model: str, entry: Mapping[str, Any]) -> ModelPrice:
    def bad(field: str, why: str) -> ValueError:
        return _bad(model, field, why)

    for key in entry:
        if key not in FIELDS and key not in OPTIONAL_FIELDS:
            raise bad(key, f"is unknown (expected one of {', '.join(FIELDS + OPTIONAL_FIELDS)})")
    for key in FIELDS:
        if key not in entry:
            raise bad(key, "is missing")
    provider = entry["provider"]
    if not isinstance(provider, str) or not provider:
        raise bad("provider", "must be a non-empty string")
    tier = entry["tier"]
    if tier not in TIERS:
        raise bad("tier", f"must be one of {', '.join(TIERS)}, got {tier!r}")
    window = entry["context_window"]
    if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
        raise bad("context_window", f"must be a positive integer, got {window!r}")
    max_output = entry.get("max_output_tokens", DEFAULT_MAX_OUTPUT)
    if isinstance(max_output, bool) or not isinstance(max_output, int) or max_output <= 0:
        raise bad("max_output_tokens", f"must be a positive integer, got {max_output!r}")
    latency = entry.get("latency_ms", DEFAULT_LATENCY_MS)
    if isinstance(latency, bool) or not isinstance(latency, int) or latency <= 0:
        raise bad("latency_ms", f"must be a positive integer, got {latency!r}")
    caps = entry.get("capabilities", ["chat"])
    if not isinstance(caps, list | tuple) or any(c not in CAPABILITIES for c in caps):
        raise bad("capabilities", f"must be a list of {', '.join(CAPABILITIES)}; got {caps!r}")
    return ModelPrice(
        model=model,
        provider=provider,
        input_micros_per_mtok=_to_micros(entry, model, "input_per_mtok"),
        output_micros_per_mtok=_to_micros(entry, model, "output_per_mtok"),
        context_window=window,
        tier=tier,
        max_output_tokens=max_output,
        capabilities=frozenset(caps),
        latency_ms=latency,
    )


def _to_micros(entry: Mapping[str, Any], model: str, field: str) -> int:
    """USD (per million tokens) → integer micro-USD, exactly, or ValueError with the reason."""
    value = entry[field]
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        raise _bad(model, field, f"must be a number, got {value!r}")
    try:
        # str() first: a float from config.toml (0.15) becomes Decimal("0.15"), its shortest
        # repr, not its binary expansion 0.1499999999999999944488848768742172978818416595...
        usd = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:
        raise _bad(model, field, f"must be a number, got {value!r}") from None
    if not usd.is_finite() or usd < 0:
        raise _bad(model, field, f"must be a finite number >= 0, got {value!r}")
    micros = usd * PRICE_SCALE
    if micros != micros.to_integral_value():
        raise _bad(model, field, f"has more than 6 decimal places: {value!r}")
    return int(micros)
