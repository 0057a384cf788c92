"""The hot route: ``POST /v1/chat/completions`` (and ``/v1/embeddings``) as raw ASGI.

A request goes through the stages in order, each handing the next a small value:

    request   Head (the key, cache directives), then Inbound (body, doc)   request.py
    plan      RoutePlan: the deployments to try, in order, and the keys    plan.py
    admit     Admission: ONE EVALSHA - limits, cache lookup, epoch          admit.py
    respond   a hit: the stored bytes (JSON, or replayed as SSE)           respond.py
    dispatch  a miss: the attempts upstream, answered as they arrive       dispatch.py
    after     the cache write-back                                         after.py

This module is the ASGI boundary: every error becomes an OpenAI JSON response (or, once a
stream has started, an SSE error event), and every authenticated request leaves exactly one
usage record, in ``finally``, however it ended.

Starlette is not used here: measured 2 µs for a raw ASGI callable vs 12 µs for a
Starlette ``Route`` (DESIGN §9).
"""

from __future__ import annotations

import logging
from time import perf_counter
from typing import Any

from cognitude.cache import cache_key
from cognitude.cache.policy import CachePolicy, decide
from cognitude.errors import AuthenticationError, MethodNotAllowed, OrganizationDisabled, ProxyError
from cognitude.hotpath import after, request, respond
from cognitude.hotpath.admit import admit, cold_copy
from cognitude.hotpath.dispatch import Dispatcher
from cognitude.hotpath.plan import Attempt, Planner
from cognitude.identity.keycache import DISABLED_MESSAGE, KeyInfo
from cognitude.ledger.accounting import RequestLog
from cognitude.state import AppState

log = logging.getLogger("cognitude.proxy")


class ProxyRoute:
    """One OpenAI endpoint proxied through the stages; built once per endpoint at start."""

    def __init__(self, state: AppState, endpoint: str, streamable: bool) -> None:
        self.state = state
        self.endpoint = endpoint  # cache namespace: "chat" | "embeddings"
        self.streamable = streamable
        cfg = state.cfg
        self.max_body = cfg.server.max_body_bytes
        # The [cache] defaults; an org's own settings (KeyInfo.cache) replace them.
        self.cache_policy = CachePolicy(cfg.cache.enabled, cfg.cache.ttl_s,
                                        cfg.cache.only_deterministic)
        self.max_ttl = cfg.cache.max_ttl_s
        self.count_hits = cfg.rate_limits.count_cache_hits
        self.fail_open = cfg.redis.fail_open
        catalog = state.accountant.catalog
        self.planner = Planner(state.providers, endpoint, dict(cfg.routing.fallbacks),
                               {m: catalog.max_output(m) for m in state.providers.by_model},
                               state.router, state.routing_policy, cfg.routing.baseline_model)
        self.dispatcher = Dispatcher(state, cfg, endpoint)
        self.accountant = state.accountant
        self.request_id = respond.RequestIds()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        req = RequestLog(self.request_id(), perf_counter(), self.endpoint)
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed(f"Method {scope['method']} not allowed; use POST.",
                                       headers=[(b"allow", b"POST")])
            await self._handle(scope, receive, send, req)
        except request.ClientGone:
            req.status = 499  # nginx's "client closed request": nothing was answered
            req.error_type = "client_disconnected"
        except ProxyError as exc:
            req.status = exc.status_code
            req.error_type = exc.instance_code or exc.type
            if not req.headers_sent:  # else it was written as an SSE error event already
                await respond.send_error(send, exc, [(b"x-request-id", req.rid.encode())])
        except Exception:
            # Outermost boundary of the hot route: an unexpected bug must still answer in
            # OpenAI JSON (uvicorn's default 500 is plain text) and be logged with its trace.
            log.exception("unhandled error in %s", scope.get("path"))
            req.status = 500
            req.error_type = "internal_error"
            if not req.headers_sent:
                await respond.send_error(
                    send, ProxyError("Internal server error.", code="internal_error"),
                    [(b"x-request-id", req.rid.encode())])
        finally:
            if req.acc is not None and req.acc.usage is None and req.counted is None:
                await self._count(req)  # a stream without usage; returns after finish()
            else:
                self.accountant.finish(req)

    async def _count(self, req: RequestLog) -> None:
        try:
            await self.accountant.count_tokens(req)
        finally:
            # Recorded either way; cancelled (shutting down), finish() counts inline.
            self.accountant.finish(req)

    async def _handle(self, scope: dict, receive: Any, send: Any, req: RequestLog) -> None:
        state = self.state
        head = request.read_head(scope["headers"], self.max_body)
        if head.token is None:
            raise AuthenticationError(
                "Missing API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`.")
        # Before the body: a bad key never makes the proxy buffer megabytes.
        info = _authorized(await state.keys.resolve(head.token), req)
        inbound = request.inbound(await request.read_body(receive, self.max_body),
                                  self.endpoint, self.streamable, req)
        plan = self.planner.plan(info, inbound.model, inbound.doc)
        first = plan.attempts[0]
        req.provider, req.model_used = first.provider, first.model
        req.route = plan.route
        req.complexity, req.baseline = plan.complexity, plan.baseline

        ttl = request.parse_ttl(head.ttl, self.max_ttl) if head.ttl is not None else None
        read, write, ttl = decide(info.cache or self.cache_policy, inbound.doc, self.endpoint,
                                  head.cache_control, ttl)
        key = req.cache_key = cache_key.redis_key(info.org_id, self.endpoint, inbound.doc) \
            if read or write else None
        read_key = key if read else None
        adm = await admit(state, info, read_key, req, count_hits=self.count_hits,
                          fail_open=self.fail_open)
        limits = respond.limit_headers(adm)
        if adm is not None and not adm.allowed:
            raise respond.rate_limited(adm, limits)

        common = [(b"x-request-id", req.rid.encode()), *limits]
        if adm is not None and read_key is not None:
            if adm.cached is not None:
                stored = state.codec.decode(adm.cached)
                if stored is not None and await respond.send_hit(
                        send, req, stored, _hit_headers(common, inbound.model, first)):
                    return
            elif (found := await cold_copy(state, info, read_key, adm)) is not None:
                stored = state.codec.decode(found[0])
                if stored is not None and await respond.send_hit(
                        send, req, stored, _hit_headers(common, inbound.model, first)):
                    await after.backfill(state, read_key, found[0], found[1])
                    return
            req.cache_status = b"MISS"
        outcome = await self.dispatcher.run(plan, inbound, req, send, receive, common)
        if write and adm is not None and key is not None:
            await after.write_back(state, key, info.org_id, outcome, ttl, req)


def _hit_headers(common: respond.Headers, model: str, first: Attempt) -> respond.Headers:
    """A hit names the model as asked and the deployment a miss would have tried first."""
    return [*common, (b"x-cognitude-model", model.encode()), first.says[1]]


def _authorized(info: KeyInfo | None, req: RequestLog) -> KeyInfo:
    if info is None:
        raise AuthenticationError("Invalid API key.")
    if info.disabled:
        raise OrganizationDisabled(DISABLED_MESSAGE)
    req.org_id = info.org_id
    req.key_id = info.key_id
    return info
