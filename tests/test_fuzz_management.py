"""Schema-driven fuzzing of the whole management API through a running `cognitude serve`.

The schema is the server's own /openapi.json. Valid and invalid requests generated from it
must never produce a 5xx, and every error must be OpenAI-shaped JSON.
"""

from __future__ import annotations

import base64
import os
from typing import Any

import httpx
import hypothesis
import hypothesis.strategies as st
import jsonschema_rs
import schemathesis
from schemathesis.generation import GenerationMode

from cognitude.identity.apikeys import new_key
from cognitude.openapi import ERROR_SCHEMA

ADMIN_KEY = new_key()


def test_fuzz_openapi_never_500_and_always_json(proxy_factory, mock):
    p = proxy_factory(env={
        "COGNITUDE_ADMIN_KEY": ADMIN_KEY,
        "COGNITUDE_ENCRYPTION_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
    })
    with httpx.Client(base_url=p.url, timeout=10) as c:
        doc = c.get("/openapi.json").json()
        reg = c.post("/auth/register", json={"name": "fuzz", "email": "fuzz@example.com",
                                             "password": "correct horse"})
        assert reg.status_code == 201, reg.text
        org_key = reg.json()["api_key"]
        schema = schemathesis.openapi.from_dict(doc)
        error_ok = jsonschema_rs.validator_for(ERROR_SCHEMA)
        every = [op.ok() for op in schema.get_all_operations()]
        assert {o.path for o in every} >= {"/v1/chat/completions", "/v1/embeddings",
                                           "/v1/models", "/v1/models/{model_id}"}
        # The /v1 endpoints are OpenAI's and answer SSE too; this fuzz is the management API's.
        ops = [o for o in every if not o.path.startswith("/v1/")]
        assert {o.path for o in ops} >= {"/auth/register", "/auth/keys", "/providers/config",
                                         "/rate-limits/config", "/cache/config",
                                         "/admin/organizations", "/analytics/usage"}
        strategies = [op.as_strategy(generation_mode=mode) for op in ops
                      for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
        seen: set[tuple[str, str]] = set()

        @hypothesis.settings(max_examples=400, deadline=None, database=None,
                             suppress_health_check=list(hypothesis.HealthCheck))
        @hypothesis.given(case=st.one_of(strategies))
        def run(case: Any) -> None:
            kw = case.as_transport_kwargs(base_url=p.url)
            key = ADMIN_KEY if case.path.startswith(("/admin", "/rate-limits/reset")) else org_key
            headers = {**(kw.get("headers") or {}), "Authorization": f"Bearer {key}"}
            if "data" in kw:
                kw["content"] = kw.pop("data")
            r = c.request(kw["method"], kw["url"], headers=headers, **{
                k: v for k, v in kw.items() if k in ("json", "content", "params")})
            seen.add((case.method, case.path))
            assert r.status_code < 500, (case.method, case.path, kw, r.text)
            if case.path != "/metrics":
                assert r.headers["content-type"].startswith("application/json"), r.text
            if r.status_code >= 400:
                assert error_ok.is_valid(r.json()), r.text

        run()
    assert len(seen) >= 10  # the run reached most operations
