"""Deployments, retries, fallbacks and cooldowns (DESIGN §11), against two real mock
upstreams: the first provider of a model fails in a chosen way, and what the client, the
second provider and the ledger see is checked."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from openai import OpenAI

from cognitude.mock_upstream import MockUpstream
from tests.conftest import assert_openai_error, chat, free_port, usage_row

MODELS = '["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]'


@pytest.fixture(scope="module")
def second_server() -> Iterator[MockUpstream]:
    with MockUpstream() as m:
        yield m


@pytest.fixture
def second(second_server: MockUpstream) -> MockUpstream:
    second_server.reset()
    return second_server


def two_deployments(url: str, models: str = MODELS) -> str:
    """``provider_extra``: a provider ``b`` after ``mock``, serving the same models."""
    return f'\n[providers.b]\nbase_url = "{url}/v1"\napi_key_env = ""\nmodels = {models}\n'


def post(proxy: Any, org: Any, body: dict[str, Any], timeout: float = 30) -> httpx.Response:
    return httpx.post(proxy.url + "/v1/chat/completions", json=body, headers=org.headers,
                      timeout=timeout)


@pytest.mark.parametrize("mode", ["500", "timeout", "drop", "not_json"])
async def test_a_transient_failure_of_the_first_deployment_is_answered_by_the_second(
        proxy_factory, org_factory, mock, second, pg_dsn, mode):
    proxy = proxy_factory(provider_extra=two_deployments(second.url), max_attempts=3)
    org = await org_factory()
    mock.fail(mode)
    r = post(proxy, org, chat(f"first fails: {mode}"))
    assert r.status_code == 200, r.text
    assert r.headers["x-cognitude-provider"] == "b"
    assert r.headers["x-cognitude-attempts"] == "2"
    assert "x-cognitude-route" not in r.headers  # same model: no fallback
    assert mock.stats()["requests"] == 1 and second.stats()["requests"] == 1
    row = await usage_row(pg_dsn, r.headers["x-request-id"])
    assert (row["provider"], row["attempts"], row["status_code"]) == ("b", 2, 200)


async def test_a_refused_connection_moves_on_to_the_next_deployment(
        proxy_factory, org_factory, second, pg_dsn, mock):
    """mock (500), then a provider nothing listens for (connection refused), then b."""
    dead = free_port()
    mock.fail("500")
    extra = (f'\n[providers.dead]\nbase_url = "http://127.0.0.1:{dead}/v1"\napi_key_env = ""\n'
             f'models = {MODELS}\n' + two_deployments(second.url))
    proxy = proxy_factory(provider_extra=extra, max_attempts=3)
    org = await org_factory()
    r = post(proxy, org, chat("500, refused, then b"))
    assert r.status_code == 200, r.text
    assert (r.headers["x-cognitude-provider"], r.headers["x-cognitude-attempts"]) == ("b", "3")
    row = await usage_row(pg_dsn, r.headers["x-request-id"])
    assert (row["provider"], row["attempts"]) == ("b", 3)


async def test_connection_refused_on_the_first_deployment_is_one_clean_200_from_the_second(
        proxy_factory, org_factory, second, pg_dsn):
    dead = free_port()  # nothing listens there
    extra = (f'\n[providers.dead]\nbase_url = "http://127.0.0.1:{dead}/v1"\napi_key_env = ""\n'
             'models = ["gpt-4.1"]\n' + two_deployments(second.url, '["gpt-4.1"]'))
    proxy = proxy_factory(provider_extra=extra, max_attempts=3)
    org = await org_factory()
    r = post(proxy, org, chat("refused first", model="gpt-4.1"))
    assert r.status_code == 200, r.text
    assert (r.headers["x-cognitude-provider"], r.headers["x-cognitude-attempts"]) == ("b", "2")
    assert second.stats()["requests"] == 1


async def test_a_400_is_not_retried(proxy_factory, org_factory, mock, second):
    proxy = proxy_factory(provider_extra=two_deployments(second.url), max_attempts=3)
    org = await org_factory()
    mock.fail("400")
    r = post(proxy, org, chat("bad request"))
    assert_openai_error(r, 400, "invalid_request_error")
    assert "x-cognitude-attempts" not in r.headers  # one call: the header is left out
    assert second.stats()["requests"] == 0


async def test_the_budget_covers_retries_and_fallbacks_together(proxy_factory, org_factory,
                                                                mock, pg_dsn):
    proxy = proxy_factory(extra='[routing]\nfallbacks = { "gpt-4o" = ["gpt-4o-mini"] }\n',
                          max_attempts=3, upstream_extra="backoff_base_ms = 10")
    org = await org_factory()
    mock.fail("500", 10)
    r = post(proxy, org, chat("always 500", model="gpt-4o"))
    assert_openai_error(r, 502, "upstream_error")
    assert r.headers["x-cognitude-attempts"] == "3"
    # gpt-4o, its fallback, then gpt-4o again (the plan wraps around): three calls, no more.
    assert mock.stats()["by_model"] == {"gpt-4o": 2, "gpt-4o-mini": 1}
    row = await usage_row(pg_dsn, r.headers["x-request-id"])
    assert (row["attempts"], row["status_code"]) == (3, 502)


async def test_a_fallback_model_answers_and_is_billed_at_its_own_price(
        proxy_factory, org_factory, mock, pg_dsn):
    proxy = proxy_factory(extra='[routing]\nfallbacks = { "gpt-4o" = ["gpt-4o-mini"] }\n',
                          max_attempts=3)
    org = await org_factory()
    mock.fail("500")
    r = post(proxy, org, chat("fall back please", model="gpt-4o"))
    assert r.status_code == 200, r.text
    assert r.headers["x-cognitude-model"] == "gpt-4o-mini"
    assert r.headers["x-cognitude-route"] == "fallback:gpt-4o->gpt-4o-mini"
    assert r.json()["model"] == "gpt-4o-mini"
    assert mock.stats()["by_model"] == {"gpt-4o": 1, "gpt-4o-mini": 1}
    row = await usage_row(pg_dsn, r.headers["x-request-id"])
    assert (row["model_requested"], row["model_used"], row["route"]) == (
        "gpt-4o", "gpt-4o-mini", "fallback:gpt-4o->gpt-4o-mini")
    usage = r.json()["usage"]
    # gpt-4o-mini: $0.15 / $0.60 per M; the baseline is gpt-4o's $2.50 / $10.00.
    mini = (usage["prompt_tokens"] * 150_000 + usage["completion_tokens"] * 600_000
            + 500_000) // 1_000_000
    assert row["cost_micros"] == mini
    assert row["baseline_cost_micros"] > row["cost_micros"]


async def test_a_deployment_has_its_own_price(proxy_factory, org_factory, mock, second,
                                              pg_dsn):
    proxy = proxy_factory(provider_extra=two_deployments(second.url), max_attempts=3,
                          extra='[prices."b/gpt-4o-mini"]\ninput_per_mtok = 1000.0\n'
                                'output_per_mtok = 2000.0\n')
    org = await org_factory()
    first = post(proxy, org, chat("priced at mock"))
    mock.fail("500")
    other = post(proxy, org, chat("priced at b"))
    assert other.headers["x-cognitude-provider"] == "b"
    a = await usage_row(pg_dsn, first.headers["x-request-id"])
    b = await usage_row(pg_dsn, other.headers["x-request-id"])
    ua, ub = first.json()["usage"], other.json()["usage"]
    assert a["cost_micros"] == (ua["prompt_tokens"] * 150_000
                                + ua["completion_tokens"] * 600_000 + 500_000) // 1_000_000
    assert b["cost_micros"] == (ub["prompt_tokens"] * 1_000_000_000
                                + ub["completion_tokens"] * 2_000_000_000
                                + 500_000) // 1_000_000


async def test_retry_after_is_honoured_up_to_its_cap(proxy_factory, org_factory, mock):
    org = await org_factory()
    waits = proxy_factory(max_attempts=2)  # the mock's 429 says retry-after: 1
    mock.fail("429")
    t0 = time.monotonic()
    r = post(waits, org, chat("429 then fine"))
    assert r.status_code == 200 and r.headers["x-cognitude-attempts"] == "2"
    assert time.monotonic() - t0 >= 1.0
    impatient = proxy_factory(max_attempts=2, upstream_extra="retry_after_max_s = 0.5")
    mock.fail("429")
    t0 = time.monotonic()
    r = post(impatient, org, chat("429 passed on"))
    assert_openai_error(r, 429)
    assert r.headers["retry-after"] == "1" and "x-cognitude-attempts" not in r.headers
    assert time.monotonic() - t0 < 1.0


async def test_a_stream_that_fails_after_its_first_bytes_is_not_retried(
        proxy_factory, org_factory, mock, second):
    proxy = proxy_factory(provider_extra=two_deployments(second.url), max_attempts=3)
    org = await org_factory()
    mock.fail("drop")  # a stream: two events, then the connection is cut
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", headers=org.headers,
                      json=chat("cut me", stream=True), timeout=30) as r:
        raw = r.read()
    assert r.status_code == 200
    last = raw.rstrip().rsplit(b"\n\n", 1)[-1]
    assert orjson.loads(last[6:])["error"]["type"] == "upstream_error"
    assert second.stats()["requests"] == 0


async def test_a_stream_that_fails_before_its_first_byte_moves_on(
        proxy_factory, org_factory, mock, second):
    proxy = proxy_factory(provider_extra=two_deployments(second.url), max_attempts=3)
    org = await org_factory()
    mock.fail("500")
    with OpenAI(base_url=proxy.url + "/v1", api_key=org.key, max_retries=0) as client:
        chunks = list(client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "stream after 500"}],
            stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert second.stats()["requests"] == 1


async def test_a_failing_deployment_cools_down_on_every_replica(
        proxy_factory, org_factory, mock, second, redis_url):
    cool = 'cooldown_min_calls = 2\ncooldown_failure_rate = 0.5\ncooldown_s = 30.0'
    extra = two_deployments(second.url)
    one = proxy_factory(provider_extra=extra, max_attempts=3, upstream_extra=cool)
    other = proxy_factory(provider_extra=extra, max_attempts=3, upstream_extra=cool)
    org = await org_factory()
    mock.fail("500", 2)
    for i in range(2):
        r = post(one, org, chat(f"fails on mock {i}"))
        assert r.headers["x-cognitude-provider"] == "b"
    assert mock.stats()["requests"] == 2
    # Cooled down: the next request goes straight to b, on this replica ...
    r = post(one, org, chat("straight to b"))
    assert r.headers["x-cognitude-provider"] == "b" and "x-cognitude-attempts" not in r.headers
    # ... and, within about a second, on the other one (which saw no failure itself).
    deadline = time.monotonic() + 2.0
    while True:
        r = post(other, org, chat(f"replica two {time.monotonic()}"))
        if r.headers["x-cognitude-provider"] == "b" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert r.headers["x-cognitude-provider"] == "b" and "x-cognitude-attempts" not in r.headers
    assert mock.stats()["requests"] == 2
    metrics = httpx.get(one.url + "/metrics").text
    assert 'cognitude_deployment_cooled_down{deployment="mock/gpt-4o-mini"} 1' in metrics
    assert "cognitude_cooldowns_started_total 1" in metrics
    assert "cognitude_cooldowns_received_total 1" in httpx.get(other.url + "/metrics").text


async def test_a_models_only_deployment_is_tried_even_when_cooled(proxy_factory,
                                                                  org_factory, mock):
    proxy = proxy_factory(max_attempts=1,
                          upstream_extra="cooldown_min_calls = 1\ncooldown_failure_rate = 0.5")
    org = await org_factory()
    mock.fail("500")
    assert post(proxy, org, chat("fails, cools down")).status_code == 502
    assert "mock/gpt-4o-mini" in httpx.get(proxy.url + "/metrics").text
    r = post(proxy, org, chat("tried anyway"))
    assert r.status_code == 200 and mock.stats()["requests"] == 2


async def test_embeddings_pass_through_exactly_and_fall_back_to_the_same_model_only(
        proxy_factory, org_factory, mock, second):
    proxy = proxy_factory(
        provider_extra=two_deployments(second.url),
        extra='[routing]\nfallbacks = { "text-embedding-3-small" = ["gpt-4o-mini"] }\n',
        max_attempts=3)
    org = await org_factory()
    with OpenAI(base_url=proxy.url + "/v1", api_key=org.key, max_retries=0) as client:
        got = client.embeddings.create(model="text-embedding-3-small", input=["b", "a", "c"])
    assert [d.index for d in got.data] == [0, 1, 2]
    # The SDK asks for base64 by default: passed as it was, never changed or injected.
    sent = mock.stats()["last_request"]["body"]
    assert sent["encoding_format"] == "base64" and sent["input"] == ["b", "a", "c"]
    raw = orjson.dumps({"model": "text-embedding-3-small", "input": "x"})
    httpx.post(proxy.url + "/v1/embeddings", content=raw, timeout=10,
               headers={**org.headers, "Content-Type": "application/json"})
    assert "encoding_format" not in mock.stats()["last_request"]["body"]
    mock.fail("500")
    second.reset()
    r = httpx.post(proxy.url + "/v1/embeddings", timeout=10, headers=org.headers,
                   json={"model": "text-embedding-3-small", "input": "fallback?"})
    assert r.status_code == 200 and r.headers["x-cognitude-provider"] == "b"
    assert second.stats()["by_model"] == {"text-embedding-3-small": 1}  # never gpt-4o-mini


async def test_models_list_names_the_providers_behind_each_model(proxy_factory, org_factory,
                                                                 second):
    proxy = proxy_factory(provider_extra=two_deployments(second.url, '["gpt-4o-mini"]'))
    org = await org_factory()
    models = {m["id"]: m for m in httpx.get(proxy.url + "/v1/models",
                                            headers=org.headers).json()["data"]}
    assert models["gpt-4o-mini"]["providers"] == ["mock", "b"]
    assert models["gpt-4o-mini"]["owned_by"] == "mock"
    assert models["gpt-4o"]["providers"] == ["mock"]
