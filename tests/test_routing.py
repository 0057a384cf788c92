"""Smart routing through the proxy: the official SDK asks for ``smart-cost`` and gets a
cheap model for a trivial prompt, a premium one for a hard prompt, a capable one for a
request that needs tools; the ledger records every chat request's class; an organization's
rules and the management endpoints (config, explain, models, stats) do what they say."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.conftest import assert_openai_error, usage_row

TRIVIAL = "What's 2+2?"
HARD = ("Prove that there are infinitely many primes of the form 4k+3, then design a "
        "distributed algorithm that verifies the first billion of them across 100 machines, "
        "with a careful analysis of its communication complexity and failure modes.")
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object",
                                          "properties": {"city": {"type": "string"}}}}}
# A second provider on the same mock: a standard-tier model, and an economy model that the
# catalog says can do nothing but chat (no tools), cheaper than gpt-4o-mini.
MORE = """
[providers.more]
base_url = "{url}/v1"
api_key_env = ""
models = ["gpt-4.1-mini", "plain-cheap"]

[prices."plain-cheap"]
provider = "more"
input_per_mtok = 0.01
output_per_mtok = 0.02
context_window = 16000
tier = "economy"
capabilities = ["chat"]
"""


@pytest.fixture
def proxy(proxy_factory, mock):
    return proxy_factory(provider_extra=MORE.format(url=mock.url))


@pytest.fixture
async def org(org_factory):
    return await org_factory()


@pytest.fixture
def sdk(proxy, org):
    with OpenAI(base_url=proxy.url + "/v1", api_key=org.key, max_retries=0) as client:
        yield client


def ask(sdk: OpenAI, content: str, model: str = "smart-cost", **extra: Any) -> Any:
    return sdk.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}], **extra)


def test_smart_cost_sends_a_trivial_prompt_cheaper_than_a_hard_one(sdk, mock):
    easy = ask(sdk, TRIVIAL)
    hard = ask(sdk, HARD)
    assert easy.headers["x-cognitude-route"] == "smart-cost:simple"
    assert hard.headers["x-cognitude-route"] == "smart-cost:complex"
    assert easy.headers["x-cognitude-model"] == "plain-cheap"  # the cheapest economy model
    assert hard.headers["x-cognitude-model"] == "gpt-4o"  # the only premium one
    assert hard.parse().model == "gpt-4o"
    # The provider was asked for the chosen model, not for "smart-cost".
    assert mock.stats()["by_model"] == {"plain-cheap": 1, "gpt-4o": 1}


def test_a_request_that_needs_tools_lands_on_a_model_that_has_them(sdk):
    plain = ask(sdk, "Hello there!")
    tools = ask(sdk, "Hello there!", tools=[WEATHER])
    assert plain.headers["x-cognitude-model"] == "plain-cheap"
    assert tools.headers["x-cognitude-model"] == "gpt-4o-mini"  # economy, and has tools
    image = sdk.chat.completions.with_raw_response.create(model="smart-cost", messages=[
        {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                     {"type": "image_url",
                                      "image_url": {"url": "https://example.com/x.png"}}]}])
    assert image.headers["x-cognitude-model"] in ("gpt-4o-mini", "gpt-4.1-mini", "gpt-4o")


def test_smart_quality_and_latency_choose_by_their_order(sdk):
    assert ask(sdk, "Explain, in a few paragraphs, how a hash map handles collisions and "
               "what its amortised complexity is.", model="smart-quality").headers[
        "x-cognitude-model"] == "gpt-4o"  # medium goes one tier up for quality
    fast = ask(sdk, TRIVIAL, model="smart-latency")
    assert fast.headers["x-cognitude-route"] == "smart-latency:simple"


async def test_the_ledger_records_every_chat_requests_class_and_the_smart_baseline(
        sdk, pg_dsn):
    fixed = ask(sdk, HARD, model="gpt-4o-mini")
    smart = ask(sdk, TRIVIAL)
    row_fixed = await usage_row(pg_dsn, fixed.headers["x-request-id"])
    row_smart = await usage_row(pg_dsn, smart.headers["x-request-id"])
    assert row_fixed["complexity"] == "complex" and row_fixed["route"] is None
    assert (row_smart["complexity"], row_smart["route"]) == ("simple", "smart-cost:simple")
    assert (row_smart["model_requested"], row_smart["model_used"]) == ("smart-cost",
                                                                       "plain-cheap")
    # Priced at the premium model smart routing saves against (gpt-4o), not at smart-cost.
    usage = smart.parse().usage
    gpt4o = (usage.prompt_tokens * 2_500_000 + usage.completion_tokens * 10_000_000
             + 500_000) // 1_000_000
    assert row_smart["baseline_cost_micros"] == gpt4o > row_smart["cost_micros"]


async def test_org_rules_pin_a_model_or_a_class_and_exclusions_hold(proxy, org, sdk):
    async with httpx.AsyncClient(base_url=proxy.url, headers={
            "Authorization": f"Bearer {org.key}"}, timeout=10) as c:
        r = await c.put("/routing/config", json={
            "default_mode": "quality",
            "rules": [{"match": {"contains": "invoice"}, "model": "gpt-4.1-mini"},
                      {"match": {"class": "simple"}, "class": "medium"}],
            "exclude_models": ["gpt-4o"]})
        assert r.status_code == 200, r.text
        assert r.json()["effective"]["exclude_models"] == ["gpt-4o"]
        bad = await c.put("/routing/config", json={"rules": [{"match": {"contains": "x"},
                                                              "model": "nope"}]})
        assert_openai_error(bad, 400)
        assert "rules[0].model" in bad.json()["error"]["message"]
    await asyncio.sleep(0.5)  # the key cache re-reads the org after the published change
    assert ask(sdk, "Read this invoice total: $5").headers["x-cognitude-model"] == "gpt-4.1-mini"
    pinned = ask(sdk, TRIVIAL, model="smart")  # default mode: quality; simple → medium
    assert pinned.headers["x-cognitude-route"] == "smart-quality:medium"
    assert ask(sdk, HARD).headers["x-cognitude-model"] != "gpt-4o"  # excluded


async def test_explain_models_and_stats(proxy, org, sdk):
    headers = {"Authorization": f"Bearer {org.key}"}
    async with httpx.AsyncClient(base_url=proxy.url, headers=headers, timeout=10) as c:
        r = await c.post("/routing/explain", json={
            "model": "smart-cost", "messages": [{"role": "user", "content": HARD}]})
        assert r.status_code == 200, r.text
        e = r.json()
        assert (e["class"], e["model"], e["route"]) == ("complex", "gpt-4o",
                                                        "smart-cost:complex")
        assert e["signals"] and all({"name", "weight"} == set(s) for s in e["signals"])
        assert e["estimate"]["baseline_model"] == "gpt-4o"
        easy = (await c.post("/routing/explain", json={
            "model": "gpt-4o", "messages": [{"role": "user", "content": TRIVIAL}]})).json()
        assert easy["model"] == "plain-cheap" and easy["estimate"]["saved_usd"] > 0
        tiers = (await c.get("/routing/models")).json()["tiers"]
        assert [m["id"] for m in tiers["economy"]] == ["plain-cheap", "gpt-4o-mini"]
        assert [m["id"] for m in tiers["premium"]] == ["gpt-4o"]
        assert "tools" in tiers["economy"][1]["capabilities"]
        for _ in range(3):
            ask(sdk, TRIVIAL)
        ask(sdk, HARD)
        for _ in range(40):  # the ledger writes within 200 ms; a GET refreshes every 2 s
            s = (await c.get("/routing/stats")).json()
            if s["smart_requests"] == 4:
                break
            await asyncio.sleep(0.25)
        assert s["smart_requests"] == 4
        simple = [d for d in s["decisions"] if d["class"] == "simple"]
        assert simple and simple[0]["model"] == "plain-cheap" and simple[0]["requests"] == 3
        assert s["saved_usd"] > 0
        assert s["by_class"]["simple"]["smart_requests"] == 3


def test_models_list_offers_the_smart_names(sdk):
    ids = [m.id for m in sdk.models.list()]
    assert {"smart", "smart-cost", "smart-latency", "smart-quality"} <= set(ids)
    assert sdk.models.retrieve("smart-cost").owned_by == "cognitude"


def test_smart_routing_on_embeddings_is_a_404(proxy, org):
    r = httpx.post(proxy.url + "/v1/embeddings", headers={"Authorization": f"Bearer {org.key}"},
                   json={"model": "smart-cost", "input": "x"}, timeout=10)
    assert_openai_error(r, 404, code="model_not_found")


async def test_classify_all_false_leaves_fixed_model_requests_unclassified(
        proxy_factory, mock, org_factory, pg_dsn):
    proxy = proxy_factory(provider_extra=MORE.format(url=mock.url),
                          extra="[routing]\nclassify_all = false\n")
    org = await org_factory()
    with OpenAI(base_url=proxy.url + "/v1", api_key=org.key, max_retries=0) as sdk:
        fixed = ask(sdk, HARD, model="gpt-4o-mini")
        smart = ask(sdk, HARD)
    assert (await usage_row(pg_dsn, fixed.headers["x-request-id"]))["complexity"] is None
    assert (await usage_row(pg_dsn, smart.headers["x-request-id"]))["complexity"] == "complex"


async def test_a_refused_request_is_not_classified_and_a_hit_is(sdk, pg_dsn, proxy, org):
    first = ask(sdk, "Summarise the plot of Hamlet in three sentences.", model="gpt-4o")
    hit = ask(sdk, "Summarise the plot of Hamlet in three sentences.", model="gpt-4o")
    assert hit.headers["x-cognitude-cache"] == "HIT"
    a = await usage_row(pg_dsn, first.headers["x-request-id"])
    b = await usage_row(pg_dsn, hit.headers["x-request-id"])
    assert a["complexity"] == b["complexity"] is not None
    bad = httpx.post(proxy.url + "/v1/chat/completions", headers={
        "Authorization": f"Bearer {org.key}"}, json={"model": "no-such-model", "messages": [
            {"role": "user", "content": "Prove the Riemann hypothesis."}]}, timeout=10)
    assert bad.status_code == 404  # refused before any model saw it
    refused = await usage_row(pg_dsn, bad.headers["x-request-id"])
    assert refused["status_code"] == 404 and refused["complexity"] is None


async def test_stats_refuse_dates_at_the_calendars_edge(proxy, org):
    r = httpx.get(proxy.url + "/routing/stats", params={"end": "9999-12-31"},
                  headers={"Authorization": f"Bearer {org.key}"}, timeout=10)
    assert_openai_error(r, 400)
    assert r.json()["error"]["param"] == "end"
