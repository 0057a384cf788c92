"""What an org can reach, and how it is told when it cannot: an unreadable stored key is a
503 for that org (never the operator's shared key), a refusal counts nothing against the
limits, a disabled org's key is told so, and /v1/models lists what the org can reach."""

from __future__ import annotations

import base64
import os

import httpx
from openai import AsyncOpenAI, NotFoundError

from tests.conftest import assert_openai_error, chat, sql

ENC = {"COGNITUDE_ENCRYPTION_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode()}
OTHER_ENC = {"COGNITUDE_ENCRYPTION_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode()}


async def test_an_unreadable_own_key_is_a_503_never_the_shared_key(proxy_factory, org_factory,
                                                                    mock, pg_dsn):
    org = await org_factory()
    own = "sk-own-" + os.urandom(8).hex()
    first = proxy_factory(env=ENC)
    async with httpx.AsyncClient(base_url=first.url, timeout=10) as c:
        r = await c.post("/providers/config", json={"provider": "mock", "api_key": own},
                         headers=org.headers)
        assert r.status_code == 201, r.text
    # The operator restarts with another encryption key: the stored key no longer decrypts.
    rotated = proxy_factory(env=OTHER_ENC)
    async with httpx.AsyncClient(base_url=rotated.url, timeout=10) as c:
        before = mock.stats()["requests"]
        r = await c.post("/v1/chat/completions", json=chat("rotated"), headers=org.headers)
        err = assert_openai_error(r, 503, code="provider_credential_unreadable")
        assert "`mock`" in err["message"] and "/providers/config" in err["message"]
        assert "x-ratelimit-limit" not in r.headers  # refused before the gate counted it
        assert mock.stats()["requests"] == before  # nothing went out with the shared key
        # Storing it again under the current key ends it.
        r = await c.post("/providers/config", json={"provider": "mock", "api_key": own},
                         headers=org.headers)
        assert r.status_code == 201
        r = await c.post("/v1/chat/completions", json=chat("restored"), headers=org.headers)
        assert r.status_code == 200, r.text
        assert mock.stats()["last_request"]["headers"]["authorization"] == f"Bearer {own}"
    assert own not in rotated.log()
    # A row altered in the database is refused the same way.
    await sql(pg_dsn, "UPDATE provider_credentials SET ciphertext = $1 WHERE org_id = $2",
              os.urandom(60), org.org_id)
    altered = proxy_factory(env=OTHER_ENC)
    async with httpx.AsyncClient(base_url=altered.url, timeout=10) as c:
        r = await c.post("/v1/chat/completions", json=chat("altered"), headers=org.headers)
        assert_openai_error(r, 503, code="provider_credential_unreadable")


async def test_a_request_refused_for_want_of_a_key_counts_nothing(proxy_factory, org_factory,
                                                                  mock):
    p = proxy_factory(env=ENC, provider_extra='shared_key = false\n'
                      '[providers.open]\nbase_url = "' + mock.url + '/v1"\n'
                      'models = ["gpt-4"]\n')
    org = await org_factory(rpm=2, rph=100, rpd=1000)
    async with httpx.AsyncClient(base_url=p.url, timeout=10) as c:
        for i in range(3):
            r = await c.post("/v1/chat/completions", json=chat(f"refused {i}"),
                             headers=org.headers)
            assert_openai_error(r, 403, code="provider_key_required")
        for i in range(2):  # the org's two requests a minute are all still there
            r = await c.post("/v1/chat/completions", json=chat(f"ok {i}", model="gpt-4"),
                             headers=org.headers)
            assert r.status_code == 200, r.text
        r = await c.post("/v1/chat/completions", json=chat("third", model="gpt-4"),
                         headers=org.headers)
        assert r.status_code == 429


async def test_a_disabled_orgs_key_is_told_so(proxy_factory, org_factory, pg_dsn, mock):
    p = proxy_factory("[auth]\nkey_cache_ttl_s = 0.2\n")
    org = await org_factory()
    await sql(pg_dsn, "UPDATE organizations SET disabled = true WHERE id = $1", org.org_id)
    async with httpx.AsyncClient(base_url=p.url, timeout=10) as c:
        r = await c.post("/v1/chat/completions", json=chat("disabled"), headers=org.headers)
        err = assert_openai_error(r, 403, code="organization_disabled")
        assert "disabled" in err["message"]
        assert_openai_error(await c.get("/v1/models", headers=org.headers), 403,
                            code="organization_disabled")
        r = await c.post("/v1/chat/completions", json=chat("x"),
                         headers={"Authorization": "Bearer cog-unknown"})
        assert_openai_error(r, 401, code="invalid_api_key")
    assert mock.stats()["requests"] == 0


async def test_models_lists_and_retrieves_what_the_org_can_reach(proxy_factory, org_factory,
                                                                 mock):
    p = proxy_factory(env=ENC, provider_extra='[providers.byok]\nbase_url = "' + mock.url
                      + '/v1"\nshared_key = false\nmodels = ["gpt-4", "org/fine-tune:v1"]\n')
    org = await org_factory()
    sdk = AsyncOpenAI(base_url=f"{p.url}/v1", api_key=org.key, max_retries=0)
    try:
        listed = {m.id async for m in sdk.models.list()} - {
            "smart", "smart-cost", "smart-latency", "smart-quality"}  # the proxy's own
        assert listed == {"gpt-4o-mini", "gpt-4o", "text-embedding-3-small"}
        got = await sdk.models.retrieve("gpt-4o")
        assert (got.id, got.owned_by) == ("gpt-4o", "mock")
        for unreachable in ("gpt-4", "no-such-model"):
            try:
                await sdk.models.retrieve(unreachable)
            except NotFoundError as exc:
                assert exc.body["code"] == "model_not_found"  # type: ignore[index]
            else:
                raise AssertionError(f"{unreachable} retrieved")
        async with httpx.AsyncClient(base_url=p.url, timeout=10) as c:
            r = await c.post("/providers/config", json={"provider": "byok",
                                                        "api_key": "sk-byok-123456"},
                             headers=org.headers)
            assert r.status_code == 201, r.text
        listed = {m.id async for m in sdk.models.list()}
        assert {"gpt-4", "org/fine-tune:v1"} <= listed
        assert (await sdk.models.retrieve("org/fine-tune:v1")).owned_by == "byok"
    finally:
        await sdk.close()
