"""Smart routing for an organization: ``GET|PUT /routing/config`` (its own policy),
``POST /routing/explain`` (a dry run), ``GET /routing/models`` (what it can be routed to)
and ``GET /routing/stats`` (what routing decided and saved, from the rollups).

Decisions:
- The org's policy goes on top of the operator's ``[routing]`` one (its rules first, its
  exclusions added): an org can steer its own traffic but not undo the operator's
  exclusions. A PUT replaces the whole policy; ``{}`` (or DELETE-like ``null`` fields)
  leaves only the operator's. A change publishes ``org:<id>``, so every replica re-reads it.
- Explain runs exactly what the hot path runs (classifier, rules, needs, choice) and prices
  the chosen model against the baseline for the prompt's estimated tokens (4 characters a
  token; completion tokens: ``max_tokens``, else a typical answer for the class).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cognitude.analytics.routing_stats import routing_stats
from cognitude.errors import InvalidRequest
from cognitude.hotpath.request import parse_doc
from cognitude.identity.invalidation import publish
from cognitude.management.analytics import parse_params
from cognitude.management.common import (
    db_errors,
    error_responses,
    json_body,
    json_response,
    pool,
    state,
)
from cognitude.management.guards import require_key
from cognitude.routing.router import NoModel, blended
from cognitude.routing.rules import SMART_MODELS, Policy, PolicyError, effective, parse_policy

# A typical answer's length by class, for explain's estimate when max_tokens is not given.
TYPICAL_COMPLETION = {"simple": 150, "medium": 500, "complex": 1200}

_SELECT = "SELECT policy FROM routing_configs WHERE org_id = $1"
_UPSERT = """
INSERT INTO routing_configs (org_id, policy) VALUES ($1, $2::jsonb)
ON CONFLICT (org_id) DO UPDATE SET policy = EXCLUDED.policy, updated_at = now()
"""
_DELETE = "DELETE FROM routing_configs WHERE org_id = $1"


def _served(request: Request) -> tuple[list[str], list[str]]:
    cfg = state(request).cfg
    return [m for p in cfg.providers for m in p.models], [p.name for p in cfg.providers]


def _answer(own: Policy | None, operator: Policy) -> dict[str, Any]:
    mine = own or Policy()
    return {"policy": mine.as_json(), "effective": mine.over(operator).as_json()}


async def get_routing_config(request: Request) -> Response:
    info = await require_key(request)
    st = state(request)
    with db_errors():
        raw = await pool(st).fetchval(_SELECT, info.org_id)
    models, providers = _served(request)
    own = parse_policy(orjson.loads(raw), models, providers) if raw is not None else None
    return json_response(_answer(own, st.routing_policy))


async def put_routing_config(request: Request) -> Response:
    info = await require_key(request)
    st = state(request)
    doc = await json_body(request)
    models, providers = _served(request)
    try:
        policy = parse_policy(doc, models, providers)
    except PolicyError as exc:
        param = str(exc).split(":", 1)[0]
        raise InvalidRequest(str(exc), param=param) from None
    with db_errors():
        if policy == Policy():
            await pool(st).execute(_DELETE, info.org_id)
        else:
            await pool(st).execute(_UPSERT, info.org_id, orjson.dumps(policy.as_json()).decode())
    await publish(st.redis, st.keys, f"org:{info.org_id}")
    return json_response(_answer(policy, st.routing_policy))


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _estimate(st: Any, model: str, prompt: int, completion: int) -> float | None:
    micros = st.accountant.catalog.cost_micros(model, prompt, completion)
    return None if micros is None else round(micros / 1_000_000, 6)


async def explain(request: Request) -> Response:
    """A dry run of a chat body: what a ``smart-*`` request would be routed to, and why
    (a body naming a fixed model is explained as ``smart``)."""
    info = await require_key(request)
    st = state(request)
    doc = parse_doc(orjson.dumps(await json_body(request)), "chat")
    model = doc["model"] if doc["model"] in SMART_MODELS else "smart"
    policy = effective(info.routing, st.routing_policy)
    try:
        d = st.router.decide(doc, model, info.credentials or (), policy)
    except NoModel:
        raise InvalidRequest("No model your organization can reach has what this request "
                             "needs.", param="model") from None
    c = d.classification
    limit = _count(doc.get("max_completion_tokens")) or _count(doc.get("max_tokens"))
    completion = limit or TYPICAL_COMPLETION[d.cls]
    prompt = max(0, d.needs.tokens - limit)
    baseline = st.cfg.routing.baseline_model or st.router.premium(policy)
    cost = _estimate(st, d.models[0], prompt, completion)
    base = _estimate(st, baseline, prompt, completion) if baseline else None
    return json_response({
        "mode": d.mode, "class": d.cls, "classified_as": c.cls, "defaulted": c.defaulted,
        "score": c.score, "signals": [{"name": n, "weight": w} for n, w in c.signals],
        "rule": d.rule, "needs": d.needs.as_json(), "model": d.models[0],
        "fallbacks": list(d.models[1:]), "route": d.route,
        "estimate": {"prompt_tokens": prompt, "completion_tokens": completion,
                     "cost_usd": cost, "baseline_model": baseline, "baseline_usd": base,
                     "saved_usd": round(base - cost, 6) if base is not None
                     and cost is not None else None}})


async def routing_models(request: Request) -> Response:
    info = await require_key(request)
    st = state(request)
    policy = effective(info.routing, st.routing_policy)
    models = st.router.reachable(info.credentials or (), policy)
    tiers = {tier: [{"id": p.model, "input_per_mtok": p.input_micros_per_mtok / 1_000_000,
                     "output_per_mtok": p.output_micros_per_mtok / 1_000_000,
                     "blended_per_mtok": blended(p) / 4 / 1_000_000,
                     "context_window": p.context_window, "latency_ms": p.latency_ms,
                     "capabilities": sorted(p.capabilities - {"chat"}),
                     "providers": [d.name for d in st.providers.by_model[p.model]]}
                    for p in ps]
             for tier, ps in st.router.by_tier(models).items()}
    return json_response({"smart_models": list(SMART_MODELS),
                          "default_mode": policy.default_mode or "cost", "tiers": tiers})


async def stats(request: Request) -> Response:
    info = await require_key(request)
    st = state(request)
    start, end, _ = parse_params(request)
    with db_errors():
        report = await routing_stats(pool(st), info.org_id, start=start, end=end,
                                     refresh=st.analytics.due(info.org_id))
    return json_response(report)


ROUTES: list[Route] = [
    Route("/routing/config", get_routing_config, methods=["GET"]),
    Route("/routing/config", put_routing_config, methods=["PUT"]),
    Route("/routing/explain", explain, methods=["POST"]),
    Route("/routing/models", routing_models, methods=["GET"]),
    Route("/routing/stats", stats, methods=["GET"]),
]


_POLICY = {"type": "object", "additionalProperties": False, "properties": {
    "default_mode": {"type": ["string", "null"], "enum": ["cost", "latency", "quality", None]},
    "rules": {"type": "array", "maxItems": 50, "items": {
        "type": "object", "additionalProperties": False, "required": ["match"],
        "properties": {
            "match": {"type": "object", "additionalProperties": False, "minProperties": 1,
                      "properties": {"contains": {"type": "string", "minLength": 1,
                                                  "maxLength": 200},
                                     "code": {"type": "boolean"},
                                     "class": {"enum": ["simple", "medium", "complex"]}}},
            "model": {"type": "string"},
            "class": {"enum": ["simple", "medium", "complex"]}}}},
    "exclude_models": {"type": "array", "items": {"type": "string"}},
    "exclude_providers": {"type": "array", "items": {"type": "string"}}}}
_OBJ = {"content": {"application/json": {"schema": {"type": "object"}}}}
_CHAT = {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["model", "messages"],
    "properties": {"model": {"type": "string"}, "messages": {"type": "array", "minItems": 1,
                                                             "items": {"type": "object"}}}}}}}
_RANGE = [{"name": n, "in": "query", "required": False,
           "schema": {"type": "string", "format": "date"}} for n in ("start", "end")]


def _op(summary: str, op_id: str, ok: str, errors: tuple[int, ...],
        **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "operationId": op_id, **extra,
            "responses": {"200": {"description": ok, **_OBJ}, **error_responses(*errors)}}


OPENAPI_PATHS: dict[str, Any] = {
    "/routing/config": {
        "get": _op("This organization's routing policy, and the effective one",
                   "getRoutingConfig", "The org's policy and the effective policy",
                   (401, 503)),
        "put": _op("Replace this organization's routing policy ({} clears it)",
                   "putRoutingConfig", "The new policy", (400, 401, 413, 503),
                   requestBody={"required": True,
                                "content": {"application/json": {"schema": _POLICY}}}),
    },
    "/routing/explain": {"post": _op(
        "Dry run: how a smart-* request would be routed, and why", "explainRouting",
        "The class, its signals, the chosen model, fallbacks and the estimated cost",
        (400, 401, 413), requestBody=_CHAT)},
    "/routing/models": {"get": _op("The models this organization can be routed to, by tier",
                                   "getRoutingModels", "Models by tier with prices", (401,))},
    "/routing/stats": {"get": _op("Smart routing decisions and savings, from the rollups",
                                  "getRoutingStats", "Decisions by class and model",
                                  (400, 401, 503), parameters=_RANGE)},
}
