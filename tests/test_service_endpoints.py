"""/health, /ready and /v1/models."""

from __future__ import annotations

from tests.conftest import assert_openai_error


async def test_health_and_ready(client):
    r = await client.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = await client.get("/ready")
    assert r.status_code == 200 and r.json() == {"status": "ready"}


async def test_models_needs_a_key(client, org_factory):
    assert_openai_error(await client.get("/v1/models"), 401)
    org = await org_factory()
    r = await client.get("/v1/models", headers=org.headers)
    assert r.status_code == 200
    doc = r.json()
    assert doc["object"] == "list"
    served = {m["id"]: m["owned_by"] for m in doc["data"]}
    # The served models, and the smart-* names the proxy answers for itself.
    assert served == {"gpt-4o-mini": "mock", "gpt-4o": "mock", "text-embedding-3-small": "mock",
                      "smart": "cognitude", "smart-cost": "cognitude",
                      "smart-latency": "cognitude", "smart-quality": "cognitude"}


async def test_metrics_counts_requests_and_ledger_rows(client, org_factory, mock):
    import asyncio
    import re

    org = await org_factory()

    def value(text: str, name: str) -> float:
        m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    before = (await client.get("/metrics")).text
    for i in range(3):
        await client.post("/v1/chat/completions", json={
            "model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"m{i}"}]},
            headers=org.headers)
    await asyncio.sleep(0.6)  # one usage flush interval and then some
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    series = 'cognitude_requests_total{endpoint="chat",status="200",cache="MISS"}'
    assert value(r.text, series) - value(before, series) == 3
    assert value(r.text, "cognitude_usage_rows_written_total") - value(
        before, "cognitude_usage_rows_written_total") >= 3
    assert "# TYPE cognitude_usage_queue_depth gauge" in r.text
    # A new key: looked up in Postgres once for its three requests (then cached).
    assert value(r.text, "cognitude_key_lookups_total") - value(
        before, "cognitude_key_lookups_total") == 1
