"""The service endpoints: ``GET /health`` (alive), ``GET /ready`` (Redis and Postgres answer
in time), and the OpenAI model list an org can reach (``GET /v1/models``, ``/v1/models/{id}``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import asyncpg
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cognitude import db
from cognitude.errors import ServiceUnavailable
from cognitude.identity.keycache import KeyInfo
from cognitude.management.common import error_response, json_response, state
from cognitude.management.guards import require_key
from cognitude.routing.rules import SMART_MODELS


async def health(request: Request) -> Response:
    return json_response({"status": "ok"})


# Each dependency gets this long to answer /ready: an orchestrator's probe must get an
# answer (not a hung connection) when Redis or Postgres is slow, and a slow one is not ready.
READY_TIMEOUT_S = 1.0


async def _probe(name: str, check: Awaitable[Any], problems: list[str]) -> None:
    try:
        await asyncio.wait_for(check, READY_TIMEOUT_S)
    except TimeoutError:
        problems.append(f"{name}: no answer within {READY_TIMEOUT_S:g} s")
    except (RedisError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        problems.append(f"{name}: {type(exc).__name__}")


async def ready(request: Request) -> Response:
    """Ready when Redis and Postgres both answer in time; 503 naming the one that does not."""
    st = state(request)
    problems: list[str] = []
    checks = [_probe("redis", st.redis.ping(), problems)]
    if st.pg is not None:
        checks.append(_probe("postgres", db.bounded(
            st.pg, READY_TIMEOUT_S, lambda conn: conn.fetchval("SELECT 1")), problems))
    await asyncio.gather(*checks)
    if problems:
        err = ServiceUnavailable("Not ready: " + "; ".join(sorted(problems)))
        return error_response(err)
    return json_response({"status": "ready"})


def _own_providers(info: KeyInfo) -> set[str]:
    return {*info.credentials, *info.unreadable}


async def models(request: Request) -> Response:
    """``GET /v1/models``: the models this org can reach (shared providers, and those it
    stored its own key for), and the ``smart-*`` names smart routing answers."""
    info = await require_key(request)
    body = state(request).providers.model_list(_own_providers(info), SMART_MODELS)
    return Response(body, media_type="application/json")


async def model(request: Request) -> Response:
    """``GET /v1/models/{id}`` (the SDK's ``models.retrieve``)."""
    info = await require_key(request)
    body = state(request).providers.model(request.path_params["model_id"],
                                           _own_providers(info), SMART_MODELS)
    return Response(body, media_type="application/json")


ROUTES: list[Route] = [
    Route("/health", health, methods=["GET"]),
    Route("/ready", ready, methods=["GET"]),
    Route("/v1/models", models, methods=["GET"]),
    Route("/v1/models/{model_id:path}", model, methods=["GET"]),
]
