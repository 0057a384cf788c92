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
    assert {m["id"] for m in doc["data"]} == {"gpt-4o-mini", "gpt-4o", "text-embedding-3-small"}
    assert all(m["owned_by"] == "mock" for m in doc["data"])
