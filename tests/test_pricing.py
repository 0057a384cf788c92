"""Price catalog: exact integer micro-USD, unknown models logged once, validated overrides."""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest

from cognitude.ledger.pricing import TIERS, load_catalog


def test_shipped_catalog_has_the_common_models() -> None:
    cat = load_catalog()
    for model in ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-3.5-turbo", "gpt-4",
                  "gpt-4-turbo", "o3-mini", "text-embedding-3-small", "text-embedding-3-large",
                  "claude-3-5-sonnet", "claude-3-5-haiku", "claude-3-haiku", "claude-3-opus"):
        price = cat.get(model)
        assert price is not None, model
        assert price.tier in TIERS
        assert price.context_window > 0
        assert price.provider in ("openai", "anthropic")


def test_cost_is_exact_integer_micros() -> None:
    cat = load_catalog()
    # gpt-4o-mini: $0.15 / $0.60 per 1M → 1000 * 0.15 + 500 * 0.60 = 450 micro-USD exactly.
    assert cat.cost_micros("gpt-4o-mini", 1000, 500) == 450
    # gpt-4o: $2.50 / $10 per 1M → 1M prompt tokens is $2.50 = 2_500_000 micro-USD.
    assert cat.cost_micros("gpt-4o", 1_000_000, 0) == 2_500_000
    assert cat.cost_micros("gpt-4o", 1234, 567) == 8755  # 3085 + 5670
    assert cat.cost_micros("gpt-4.1-nano", 3, 0) == 0  # 0.3 µUSD rounds down
    # Huge counts stay exact (ints, no float): 10^12 tokens * $0.02/M = $20,000.
    assert cat.cost_micros("text-embedding-3-small", 10**12, 0) == 20_000 * 10**6
    # o3-mini $1.10 / $4.40: 0.1 + 0.2-style float error would show up here.
    assert cat.cost_micros("o3-mini", 333_333, 777_777) == 3_788_885  # 366666.3 + 3422218.8
    assert cat.cost_micros("claude-3-haiku", 7, 3) == 6  # 1.75 + 3.75 = 5.5 → half up → 6
    assert isinstance(cat.cost_micros("gpt-4o", 1, 1), int)


def test_rounding_is_half_up_once_at_the_end() -> None:
    cat = load_catalog({"m": {"provider": "p", "input_per_mtok": "0.5", "output_per_mtok": 0,
                              "context_window": 10, "tier": "economy"}})
    assert cat.cost_micros("m", 1, 0) == 1  # 0.5 → 1 (half up)
    assert cat.cost_micros("m", 2, 0) == 1
    assert cat.cost_micros("m", 3, 0) == 2  # 1.5 → 2
    # Per-side rounding would give round(0.25) + round(0.25) = 0; the exact sum 0.5 → 1.
    cat2 = load_catalog({"m": {"provider": "p", "input_per_mtok": "0.25",
                               "output_per_mtok": "0.25", "context_window": 10,
                               "tier": "economy"}})
    assert cat2.cost_micros("m", 1, 1) == 1


def test_dated_snapshots_resolve_to_base_model_unless_listed() -> None:
    cat = load_catalog()
    assert cat.cost_micros("gpt-4o-mini-2024-07-18", 1000, 500) == 450
    sonnet = cat.get("claude-3-5-sonnet-20241022")
    assert sonnet is not None and sonnet.model == "claude-3-5-sonnet"
    assert cat.get("claude-3-5-haiku-latest") == cat.get("claude-3-5-haiku")
    # A snapshot with its own price keeps it.
    assert cat.cost_micros("gpt-4o-2024-05-13", 1_000_000, 0) == 5_000_000


def test_unknown_model_is_none_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    cat = load_catalog()
    with caplog.at_level(logging.WARNING, logger="cognitude.pricing"):
        for _ in range(1000):
            assert cat.cost_micros("no-such-model", 10, 10) is None
        assert cat.cost_micros("another-unknown", 1, 1) is None
    lines = [r.getMessage() for r in caplog.records if r.name == "cognitude.pricing"]
    assert len(lines) == 2, lines
    assert "no-such-model" in lines[0] and "another-unknown" in lines[1]
    assert "no-such-model" not in cat


def test_overrides_patch_and_add() -> None:
    cat = load_catalog({
        "gpt-4o": {"input_per_mtok": 1.25},  # partial: patches the shipped entry
        "my-local-llm": {"provider": "vllm", "input_per_mtok": 0, "output_per_mtok": 0.000001,
                         "context_window": 32768, "tier": "standard"},
    })
    gpt4o = cat.get("gpt-4o")
    assert gpt4o is not None
    assert gpt4o.input_micros_per_mtok == 1_250_000  # float 1.25 converted exactly
    assert gpt4o.output_micros_per_mtok == 10_000_000  # untouched
    assert cat.cost_micros("my-local-llm", 0, 2_000_000) == 2
    # 0.15 as a float from config.toml is exactly 150_000, not 149_999.
    assert load_catalog({"x": {"provider": "p", "input_per_mtok": 0.15, "output_per_mtok": 0.6,
                               "context_window": 1, "tier": "economy"}}).cost_micros(
        "x", 1_000_000, 1_000_000) == 750_000
    assert Decimal("0.15") * 10**6 == 150_000


@pytest.mark.parametrize(("entry", "field"), [
    ({"input_per_mtok": -1}, "input_per_mtok"),
    ({"output_per_mtok": "lots"}, "output_per_mtok"),
    ({"output_per_mtok": float("nan")}, "output_per_mtok"),
    ({"input_per_mtok": 0.0000001}, "input_per_mtok"),  # finer than 1 µUSD per 1M tokens
    ({"input_per_mtok": True}, "input_per_mtok"),
    ({"tier": "gold"}, "tier"),
    ({"context_window": 0}, "context_window"),
    ({"context_window": 1.5}, "context_window"),
    ({"provider": ""}, "provider"),
    ({"colour": "blue"}, "colour"),
])
def test_bad_override_names_model_and_field(entry: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError) as info:
        load_catalog({"gpt-4o": entry})
    assert "'gpt-4o'" in str(info.value) and repr(field) in str(info.value), info.value


def test_new_model_missing_field_is_named() -> None:
    with pytest.raises(ValueError, match=r"'brand-new'.*'output_per_mtok'.*missing"):
        load_catalog({"brand-new": {"provider": "p", "input_per_mtok": 1,
                                    "context_window": 1000, "tier": "premium"}})
    with pytest.raises(ValueError, match="'weird'"):
        load_catalog({"weird": "not a table"})  # type: ignore[dict-item]


def test_a_deployment_price_patches_its_model_for_that_provider_only() -> None:
    catalog = load_catalog({"azure/gpt-4o": {"input_per_mtok": 5.0}})
    assert catalog.cost_micros("gpt-4o", 1_000_000, 0, "azure") == 5_000_000
    assert catalog.cost_micros("gpt-4o", 1_000_000, 0, "openai") == 2_500_000
    assert catalog.cost_micros("gpt-4o", 1_000_000, 0) == 2_500_000
    # The rest of the entry is the model's own.
    assert catalog.cost_micros("gpt-4o", 0, 1_000_000, "azure") == 10_000_000
    with pytest.raises(ValueError, match="'nowhere/unknown-model'"):
        load_catalog({"nowhere/unknown-model": {"input_per_mtok": 1.0}})


def test_max_output_tokens_is_the_models_output_limit() -> None:
    catalog = load_catalog({"my-model": {"provider": "x", "input_per_mtok": 1,
                                         "output_per_mtok": 1, "context_window": 1000,
                                         "tier": "economy", "max_output_tokens": 512}})
    assert catalog.max_output("claude-sonnet-4") == 64000
    assert catalog.max_output("claude-sonnet-4-20250514") == 64000  # a dated snapshot
    assert catalog.max_output("my-model") == 512
    assert catalog.max_output("gpt-4o") == 4096  # not listed: the default
    assert catalog.max_output("no-such-model") == 4096
    with pytest.raises(ValueError, match="max_output_tokens"):
        load_catalog({"gpt-4o": {"max_output_tokens": 0}})
