"""The hot route: ``POST /v1/chat/completions`` (and ``/v1/embeddings``) as raw ASGI.

Per request: resolve the key from the in-process cache (before reading the body: a bad key
never makes us buffer megabytes), read the body under the size cap, parse with orjson,
resolve the model and the credential it will go out with (an org that cannot use the
provider is refused before anything is counted), then ONE Redis round trip
(``Gate.check``: the sliding windows + cache GET). Denied → 429; hit → the stored bytes (or
SSE replay); miss → the upstream over the pooled aiohttp session, streamed through event by
event. The cache write-back happens after the response is complete.

Starlette is not used here: measured 2 µs for a raw ASGI callable vs 12 µs for a
Starlette ``Route`` (DESIGN §9).
"""

from __future__ import annotations

import asyncio
import logging
from time import monotonic, perf_counter
from typing import Any

import orjson
from redis.exceptions import OutOfMemoryError, RedisError

from cognitude.cache import cache_key
from cognitude.cache.policy import CachePolicy
from cognitude.errors import (
    AuthenticationError,
    CredentialUnreadable,
    MethodNotAllowed,
    OrganizationDisabled,
    PayloadTooLarge,
    PermissionDenied,
    ProxyError,
    RateLimited,
    ServiceUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from cognitude.gate.gate import REDIS_UNAVAILABLE, GateResult
from cognitude.hotpath import sse
from cognitude.hotpath.request import ClientGone, _parse, _parse_ttl, read_body
from cognitude.hotpath.respond import (
    JSON_CT,
    SSE_HEADERS,
    RequestIds,
    _limit_headers,
    _stream_error,
    _timing,
    send_error,
)
from cognitude.identity.apikeys import token_from_headers
from cognitude.identity.keycache import DISABLED_MESSAGE, KeyInfo
from cognitude.ledger.accounting import RequestLog, usage_of_counts
from cognitude.providers.upstream import (
    MAX_ERROR_BYTES,
    Provider,
    answer_usage,
    error_from_upstream,
    map_upstream_errors,
    read_capped,
)
from cognitude.state import AppState

log = logging.getLogger("cognitude.proxy")


_WINDOW_NAMES = ("minute", "hour", "day")


class ProxyRoute:
    """One OpenAI endpoint proxied through gate, cache and upstream.

    Every response starts where ``req.headers_sent`` is set right before the start message:
    from then on an error can no longer be a JSON response (a stream ends with an error
    event instead). The few coroutine layers are deliberate: each costs ~1,500
    instructions on every request (``bench/instructions.py``).
    """

    def __init__(self, state: AppState, endpoint: str, upstream_path: str,
                 streamable: bool) -> None:
        self.state = state
        self.endpoint = endpoint  # cache namespace: "chat" | "embeddings"
        self.upstream_path = upstream_path
        self.streamable = streamable
        cfg = state.cfg
        self.max_body = cfg.server.max_body_bytes
        # The [cache] defaults; an org's own settings (KeyInfo.cache) replace them.
        self.cache_policy = CachePolicy(cfg.cache.enabled, cfg.cache.ttl_s,
                                        cfg.cache.only_deterministic)
        self.max_ttl = cfg.cache.max_ttl_s
        self.count_hits = cfg.rate_limits.count_cache_hits
        self.fail_open = cfg.redis.fail_open
        self.max_response = cfg.upstream.max_response_bytes
        self.stall_s = cfg.upstream.read_timeout_s
        self.accountant = state.accountant
        self.request_id = RequestIds()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        req = RequestLog(self.request_id(), perf_counter(), self.endpoint)
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed(f"Method {scope['method']} not allowed; use POST.",
                                       headers=[(b"allow", b"POST")])
            await self._handle(scope, receive, send, req)
        except ClientGone:
            req.status = 499  # nginx's "client closed request": nothing was answered
            req.error_type = "client_disconnected"
        except ProxyError as exc:
            req.status = exc.status_code
            req.error_type = exc.instance_code or exc.type
            if not req.headers_sent:  # else it was written as an SSE error event already
                await send_error(send, exc, [(b"x-request-id", req.rid.encode())])
        except Exception:
            # Outermost boundary of the hot route: an unexpected bug must still answer in
            # OpenAI JSON (uvicorn's default 500 is plain text) and be logged with its trace.
            log.exception("unhandled error in %s", scope.get("path"))
            req.status = 500
            req.error_type = "internal_error"
            if not req.headers_sent:
                await send_error(send, ProxyError("Internal server error.", code="internal_error"),
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
        authorization = x_api_key = cache_control = ttl_header = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"x-api-key":
                x_api_key = value
            elif name == b"content-length":
                if value.isdigit() and int(value) > self.max_body:
                    raise PayloadTooLarge(f"Request body exceeds {self.max_body} bytes.")
            elif name == b"cache-control":
                cache_control = value.lower()
            elif name == b"x-cognitude-cache-ttl":
                ttl_header = value
        token = token_from_headers(authorization, x_api_key)
        if token is None:
            raise AuthenticationError(
                "Missing API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`.")
        # Before the body: a bad key never makes the proxy buffer megabytes.
        info = _authorized(await state.keys.resolve(token), req)
        body = await read_body(receive, self.max_body)
        req.doc = doc = _parse(body, self.endpoint)
        req.model = req.model_used = model = doc["model"]
        user = doc.get("user")
        if isinstance(user, str):
            req.end_user = user
        req.stream = stream = self.streamable and doc.get("stream") is True
        provider = state.providers.resolve(model)
        req.provider = provider.name
        target = self._target(info, provider)

        read_cache, write_cache, ttl = self._cache_policy(info, doc, cache_control, ttl_header)
        ckey = (cache_key.redis_key(info.org_id, self.endpoint, doc)
                if read_cache or write_cache else None)
        read_key = ckey if read_cache else None
        # The one round trip: limits + cache lookup (None: Redis unavailable, fail_open).
        g0 = perf_counter()
        try:
            gate: GateResult | None = await state.gate.check(
                info.org_id, info.limits, read_key, count_hits=self.count_hits,
                key_id=info.key_id, key_limits=info.key_limits,
                want_epoch=read_key is not None and state.cold is not None)
        except REDIS_UNAVAILABLE as exc:
            self._failed_open(exc)
            gate = None
            read_cache = write_cache = False
        except OutOfMemoryError:
            raise _redis_out_of_memory() from None
        else:
            if state.outage.active:
                state.outage.ended()
        req.gate_s = perf_counter() - g0
        limit_headers = _limit_headers(gate)
        if gate is not None and not gate.allowed:
            raise _rate_limited(gate, limit_headers)

        # Errors get these too; send_error adds X-Request-ID to every error itself.
        routing = [(b"x-cognitude-model", model.encode()),
                   (b"x-cognitude-provider", provider.name_header), *limit_headers]
        common = [(b"x-request-id", req.rid.encode()), *routing]
        if gate is not None and gate.cached is not None:
            stored = state.codec.decode(gate.cached)
            if stored is not None and await self._send_hit(send, req, stored, common):
                return
        if (read_key is not None and state.cold is not None and gate is not None
                and await self._serve_cold(send, req, read_key, info, gate, common)):
            return
        if read_cache:
            req.cache_status = b"MISS"
        if stream and self.endpoint == "chat" and provider.stream_usage:
            body, req.stripped_usage = _with_stream_usage(doc, body)
        data = await self._forward(send, receive, req, body, target, routing, common)
        if write_cache and data is not None:
            await self._write_back(ckey, info.org_id, data, ttl)

    def _target(self, info: KeyInfo, provider: Provider) -> _Target:
        """URL, headers and secret (to scrub) the request goes out with: the org's own
        credential for this provider when it stored one, else the config-level key (if the
        provider shares it). Decided before the gate, so a refusal counts nothing."""
        cred = info.credentials.get(provider.name) if info.credentials else None
        if cred is not None:
            return (cred.base_url or provider.base_url) + self.upstream_path, cred.headers, \
                cred.secret, provider.name
        if info.unreadable and provider.name in info.unreadable:
            raise CredentialUnreadable(
                f"Your organization's stored key for provider `{provider.name}` cannot be "
                "decrypted on this server; store it again with POST /providers/config.")
        if provider.shared:
            return (provider.base_url + self.upstream_path, provider.headers, provider.secret,
                    provider.name)
        raise PermissionDenied(
            f"Provider `{provider.name}` needs your organization's own key: store it "
            "with POST /providers/config.", code="provider_key_required")

    def _cache_policy(self, info: KeyInfo, doc: dict, cache_control: bytes | None,
                      ttl_header: bytes | None) -> tuple[bool, bool, int]:
        """(read, write, ttl): the org's settings (or the defaults), then the headers."""
        policy = info.cache or self.cache_policy
        read_cache = write_cache = policy.enabled
        ttl = policy.ttl_s
        if (read_cache and policy.only_deterministic and self.endpoint == "chat"
                and not cache_key.is_deterministic(doc)):
            read_cache = write_cache = False  # embeddings are deterministic by nature
        if cache_control is not None:
            if b"no-store" in cache_control:
                write_cache = False
            if b"no-cache" in cache_control:
                read_cache = False
        if ttl_header is not None:
            ttl = _parse_ttl(ttl_header, self.max_ttl)
            if ttl == 0:
                write_cache = False
        return read_cache, write_cache, ttl

    def _failed_open(self, exc: BaseException) -> None:
        """Redis is unavailable: go on without limits and cache (``redis.fail_open``), or 503."""
        if not self.fail_open:
            raise ServiceUnavailable("Rate limiter unavailable; try again shortly.") from None
        self.state.outage.served_open(exc)

    async def _serve_cold(self, send: Any, req: RequestLog, ckey: str, info: KeyInfo,
                          gate: GateResult, common: list[tuple[bytes, bytes]]) -> bool:
        """Redis missed: if this org has Postgres copies from before Redis lost its data
        (restart, failover, flush), read one, bounded by cache.cold_read_timeout_ms."""
        cold = self.state.cold
        if cold is None or not await cold.may_hold(info.org_id, gate.epoch):
            return False
        found = await cold.get(ckey)
        stored = self.state.codec.decode(found[0]) if found is not None else None
        if found is None or stored is None or not await self._send_hit(send, req, stored, common):
            return False
        await self._backfill(ckey, found[0], found[1])
        return True

    async def _send_hit(self, send: Any, req: RequestLog, stored: bytes,
                        common: list[tuple[bytes, bytes]]) -> bool:
        """Send a stored response; False (a miss) for one this version cannot serve."""
        if stored[:1] != b"{":
            return False  # not JSON: an entry written before 200s were checked
        req.cache_status = b"HIT"
        req.response = stored
        if req.stream:
            try:
                await self._send_replay(send, req, req.doc or {}, stored, common, 0.0)
            except ValueError:
                if req.headers_sent:
                    raise
                req.cache_status, req.response = b"MISS", None
                return False
            return True
        req.status = 200
        req.headers_sent = True
        await send({"type": "http.response.start", "status": 200, "headers": [
            JSON_CT, (b"content-length", str(len(stored)).encode()), (b"x-cognitude-cache", b"HIT"),
            *common, _timing(req.gate_s, 0.0, perf_counter() - req.t0)]})
        await send({"type": "http.response.body", "body": stored})
        return True

    async def _forward(self, send: Any, receive: Any, req: RequestLog, body: bytes,
                       target: _Target, routing: list[tuple[bytes, bytes]],
                       common: list[tuple[bytes, bytes]]) -> bytes | None:
        """The miss: the upstream exchange, cut at ``upstream.total_timeout_s`` (the sweep
        of ``cognitude.deadlines``). Returns the body to cache, if there is one."""
        url, headers, secret, name = target
        deadlines = self.state.deadlines
        task = asyncio.current_task()
        assert task is not None
        deadlines.inflight[task] = deadline = monotonic() + deadlines.total_s
        u0 = perf_counter()
        try:
            with map_upstream_errors(name):
                async with self.state.session.post(url, data=body, headers=headers,
                                                   allow_redirects=False) as resp:
                    if resp.status != 200:
                        err_body = await read_capped(resp, MAX_ERROR_BYTES, name)
                        req.upstream_s = perf_counter() - u0
                        err = error_from_upstream(name, secret, resp.status, err_body,
                                                  resp.headers.get("retry-after"))
                        err.headers.extend(routing)
                        raise err
                    if req.stream and _is_sse(resp.headers.get("Content-Type")):
                        # From here the relay checks the deadline itself: a cancellation
                        # could no longer end the stream with an error event.
                        deadlines.inflight.pop(task, None)
                        req.upstream_s = perf_counter() - u0
                        acc = await self._pipe_stream(send, receive, req, resp, common, name,
                                                      deadline)
                        return await self._stored(acc, req) if acc is not None and \
                            acc.cacheable else None
                    data = await read_capped(resp, self.max_response, name)
        except asyncio.CancelledError:
            if not deadlines.was_cut(task):
                raise
            raise UpstreamTimeout(f"Upstream provider `{name}` took longer than "
                                  "upstream.total_timeout_s.") from None
        finally:
            deadlines.inflight.pop(task, None)
        req.upstream_s = perf_counter() - u0
        req.usage = answer_usage(data, self.endpoint, name)
        if req.stream:
            # A 200 that is a whole completion where a stream was asked for (servers that
            # ignore `stream`): the client still gets the stream it asked for.
            await self._replay_upstream(send, req, data, common, name)
            return data
        req.status = 200
        req.headers_sent = True
        await send({"type": "http.response.start", "status": 200, "headers": [
            JSON_CT, (b"content-length", str(len(data)).encode()),
            (b"x-cognitude-cache", req.cache_status), *common,
            _timing(req.gate_s, req.upstream_s, perf_counter() - req.t0)]})
        await send({"type": "http.response.body", "body": data})
        return data

    async def _replay_upstream(self, send: Any, req: RequestLog, data: bytes,
                               common: list[tuple[bytes, bytes]], name: str) -> None:
        try:
            await self._send_replay(send, req, req.doc or {}, data, common, req.upstream_s)
        except ValueError:
            raise UpstreamError(f"Upstream provider `{name}` answered a stream request with "
                                "neither SSE nor a chat completion.",
                                code="upstream_bad_response") from None

    async def _send_replay(self, send: Any, req: RequestLog, doc: dict, completion: bytes,
                           common: list[tuple[bytes, bytes]], upstream_s: float) -> None:
        """A whole ``chat.completion`` sent as the SSE stream the client asked for, usage
        included when it asked for it. ValueError (nothing sent) for a body that is not one."""
        opts = doc.get("stream_options")
        include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
        events = sse.replay(completion, include_usage)
        req.status = 200
        req.headers_sent = True
        await send({"type": "http.response.start", "status": 200, "headers": [
            *SSE_HEADERS, (b"x-cognitude-cache", req.cache_status), *common,
            _timing(req.gate_s, upstream_s, perf_counter() - req.t0)]})
        await send({"type": "http.response.body", "body": b"".join(events)})

    async def _pipe_stream(self, send: Any, receive: Any, req: RequestLog, resp: Any,
                           common: list[tuple[bytes, bytes]], provider: str,
                           deadline: float) -> sse.StreamAccumulator | None:
        """Pass SSE through event by event; stop reading upstream if the client leaves."""
        req.acc = acc = sse.StreamAccumulator(strip_usage=req.stripped_usage,
                                              max_pending=self.max_response)
        req.status = 200
        req.headers_sent = True
        await send({"type": "http.response.start", "status": 200, "headers": [
            *SSE_HEADERS, (b"x-cognitude-cache", req.cache_status), *common,
            _timing(req.gate_s, req.upstream_s, perf_counter() - req.t0)]})
        # uvicorn drops sends to a gone client silently; the only signal is receive()
        # returning http.disconnect, so watch it while the stream runs.
        gone = asyncio.ensure_future(receive())
        try:
            try:
                with map_upstream_errors(provider):
                    await self._relay(send, resp, acc, gone, provider, deadline)
            except UpstreamError as exc:
                req.error_type = exc.instance_code or exc.type
                await _stream_error(send, exc)
                return None
            if gone.done():
                resp.close()  # aborts the upstream request: no tokens wasted
                req.status = 499
                req.error_type = "client_disconnected"
                return None
            await send({"type": "http.response.body", "body": b""})
            return acc
        finally:
            gone.cancel()

    async def _relay(self, send: Any, resp: Any, acc: sse.StreamAccumulator,
                     gone: asyncio.Future[Any], provider: str, deadline: float) -> None:
        """Forward whole events until the upstream ends, the client leaves, or the stream
        stops making progress: bytes but no complete event for ``read_timeout_s``, more than
        ``max_response_bytes`` of an unfinished event, or past ``total_timeout_s``."""
        last_event = perf_counter()
        deadline += last_event - monotonic()  # on the clock read below, once per chunk
        async for chunk in resp.content.iter_any():
            if gone.done():
                return
            out = acc.feed(chunk)
            now = perf_counter()
            if out:
                last_event = now
                await send({"type": "http.response.body", "body": out, "more_body": True})
            elif acc.overflow:  # only a chunk that ends no event can grow the unfinished one
                raise UpstreamError(f"Upstream provider `{provider}` sent more than "
                                    f"{self.max_response} bytes without ending an event.",
                                    code="upstream_too_large")
            elif now - last_event > self.stall_s:
                raise UpstreamTimeout(f"Upstream provider `{provider}` sent no complete event "
                                      f"for {self.stall_s:g} s.")
            if now > deadline:
                raise UpstreamTimeout(f"Upstream provider `{provider}` took longer than "
                                      "upstream.total_timeout_s.")

    async def _stored(self, acc: sse.StreamAccumulator, req: RequestLog) -> bytes:
        """The completion to cache for a finished stream, with usage even when the upstream
        sent none (counted off the event loop; the ledger row uses the same count)."""
        if acc.usage is None:
            await self.accountant.count_tokens(req)
            if req.counted is not None:
                acc.usage = usage_of_counts(*req.counted)
        return acc.completion()

    async def _write_back(self, key: str | None, org_id: str, data: bytes, ttl: int) -> None:
        """Store a response after it was sent (Redis now, the cold tier in the next batch);
        a failure only costs a future hit."""
        if key is None:
            return
        value = self.state.codec.encode(data)
        await self._backfill(key, value, ttl)
        if self.state.cold is not None:
            self.state.cold.put(key, org_id, value, ttl)

    async def _backfill(self, key: str, value: bytes, ttl: int) -> None:
        pipe = self.state.pipe
        if pipe is not None:
            # Not awaited: the reply would only cost a wake-up (an error reply is logged).
            pipe.set_nowait(key, value, ttl)
            return
        try:
            await self.state.redis.set(key, value, ex=ttl)
        except (RedisError, OSError) as exc:
            log.warning("cache write-back failed: %s", type(exc).__name__)


# (url, headers, secret to scrub, provider name) of the request that goes upstream.
_Target = tuple[str, dict[str, str], bytes, str]


def _redis_out_of_memory() -> ServiceUnavailable:
    # Not an outage: Redis answers, and refuses writes. Serving without limits would hide it
    # until someone reads a log; every request says so instead.
    return ServiceUnavailable(
        "The rate limiter's Redis is out of memory (maxmemory reached with nothing "
        "evictable); the operator must raise maxmemory or use maxmemory-policy volatile-lfu.",
        code="redis_out_of_memory")


def _is_sse(content_type: str | None) -> bool:
    # The raw header, not aiohttp's parsed ``content_type`` (which copies a dict per response).
    return content_type is not None and content_type[:17].lower() == "text/event-stream"


def _authorized(info: KeyInfo | None, req: RequestLog) -> KeyInfo:
    if info is None:
        raise AuthenticationError("Invalid API key.")
    if info.disabled:
        raise OrganizationDisabled(DISABLED_MESSAGE)
    req.org_id = info.org_id
    req.key_id = info.key_id
    return info


def _rate_limited(gate: GateResult, limit_headers: list[tuple[bytes, bytes]]) -> RateLimited:
    whose = "this API key" if gate.window > 3 else "your organization"
    span = _WINDOW_NAMES[(gate.window - 1) % 3]
    return RateLimited(
        f"Rate limit reached for {whose}: {gate.limit} requests per {span}. "
        f"Retry after {gate.retry_after_s} s.",
        headers=[(b"retry-after", str(gate.retry_after_s).encode()), *limit_headers],
    )


def _with_stream_usage(doc: dict, body: bytes) -> tuple[bytes, bool]:
    """The upstream body asking for usage on this stream, and whether the usage chunk must
    be stripped for the client (it did not ask). Every cached stream then carries its usage,
    so every later hit can bill and report it, in whatever shape that client asks."""
    opts = doc.get("stream_options")
    if opts is None:
        opts = {}
    elif not isinstance(opts, dict) or opts.get("include_usage") is True:
        return body, False  # asked already (or malformed: the upstream says what is wrong)
    return orjson.dumps({**doc, "stream_options": {**opts, "include_usage": True}}), True


