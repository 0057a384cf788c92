"""The dispatch stage: a cache miss goes upstream, as the plan's attempts say, through the
attempt's provider adapter, and its answer goes to the client as it arrives.

Bounds on what an upstream can make the proxy do: redirects are never followed, a body is
read up to ``upstream.max_response_bytes``, a 200 must be the endpoint's JSON (the adapter
checks), the whole exchange is cut at ``upstream.total_timeout_s`` (the sweep of
``providers.deadlines``), and a stream that makes no progress - nothing, or bytes that never
complete an event, for ``upstream.read_timeout_s`` - ends with an SSE error event.

Today a plan has one attempt; retries and fallbacks will run the next attempt only while
nothing has been sent to the client yet.
"""

from __future__ import annotations

import asyncio
from time import monotonic, perf_counter
from typing import Any

from cognitude.config import Config
from cognitude.errors import UpstreamError, UpstreamTimeout
from cognitude.hotpath import respond, sse
from cognitude.hotpath.plan import Attempt, RoutePlan
from cognitude.hotpath.request import Inbound
from cognitude.hotpath.respond import Headers
from cognitude.ledger.accounting import RequestLog
from cognitude.providers.upstream import MAX_ERROR_BYTES, map_upstream_errors, read_capped
from cognitude.state import AppState

# What dispatch hands the after stage: the body to cache, a finished stream to fold into
# one, or None (nothing cacheable: an error event, a client gone).
Outcome = bytes | sse.StreamAccumulator | None


class Dispatcher:
    """Runs one endpoint's plans upstream; one per route, built at start."""

    __slots__ = ("_state", "_endpoint", "_max_response", "_stall_s")

    def __init__(self, state: AppState, cfg: Config, endpoint: str) -> None:
        self._state = state
        self._endpoint = endpoint
        self._max_response = cfg.upstream.max_response_bytes
        self._stall_s = cfg.upstream.read_timeout_s

    async def run(self, plan: RoutePlan, inbound: Inbound, req: RequestLog, send: Any,
                  receive: Any, routing: Headers, common: Headers) -> Outcome:
        attempt = plan.attempts[0]
        body, req.stripped_usage = attempt.adapter.upstream_body(
            inbound.doc, inbound.body, chat_stream=inbound.stream and self._endpoint == "chat",
            stream_usage=attempt.stream_usage)
        deadlines = self._state.deadlines
        task = asyncio.current_task()
        assert task is not None
        deadlines.inflight[task] = deadline = monotonic() + deadlines.total_s
        u0 = perf_counter()
        try:
            with map_upstream_errors(attempt.provider):
                async with self._state.session.post(attempt.url, data=body,
                                                    headers=attempt.headers,
                                                    allow_redirects=False) as resp:
                    if resp.status != 200:
                        raise await self._refused(attempt, resp, req, u0, routing)
                    if req.stream and _is_sse(resp.headers.get("Content-Type")):
                        # From here the relay checks the deadline itself: a cancellation
                        # could no longer end the stream with an error event.
                        deadlines.inflight.pop(task, None)
                        req.upstream_s = perf_counter() - u0
                        return await self._pipe_stream(send, receive, req, resp, common,
                                                       attempt.provider, deadline)
                    data = await read_capped(resp, self._max_response, attempt.provider)
        except asyncio.CancelledError:
            if not deadlines.was_cut(task):
                raise
            raise UpstreamTimeout(f"Upstream provider `{attempt.provider}` took longer than "
                                  "upstream.total_timeout_s.") from None
        finally:
            deadlines.inflight.pop(task, None)
        req.upstream_s = perf_counter() - u0
        req.usage = attempt.adapter.answer_usage(data, self._endpoint, attempt.provider)
        if req.stream:
            await _replay_upstream(send, req, data, common, attempt.provider)
        else:
            await respond.send_json(send, req, data, common, req.upstream_s)
        return data

    async def _refused(self, attempt: Attempt, resp: Any, req: RequestLog, u0: float,
                       routing: Headers) -> UpstreamError:
        err_body = await read_capped(resp, MAX_ERROR_BYTES, attempt.provider)
        req.upstream_s = perf_counter() - u0
        err = attempt.adapter.error(attempt.provider, attempt.secret, resp.status, err_body,
                                    resp.headers.get("retry-after"))
        err.headers.extend(routing)
        return err

    async def _pipe_stream(self, send: Any, receive: Any, req: RequestLog, resp: Any,
                           common: Headers, provider: str,
                           deadline: float) -> sse.StreamAccumulator | None:
        """Pass SSE through event by event; stop reading upstream if the client leaves."""
        req.acc = acc = sse.StreamAccumulator(strip_usage=req.stripped_usage,
                                              max_pending=self._max_response)
        await respond.start_sse(send, req, common, req.upstream_s)
        # uvicorn drops sends to a gone client silently; the only signal is receive()
        # returning http.disconnect, so watch it while the stream runs.
        gone = asyncio.ensure_future(receive())
        try:
            try:
                with map_upstream_errors(provider):
                    await self._relay(send, resp, acc, gone, provider, deadline)
            except UpstreamError as exc:
                req.error_type = exc.instance_code or exc.type
                await respond.stream_error(send, exc)
                return None
            if gone.done():
                resp.close()  # aborts the upstream request: no tokens wasted
                req.status = 499
                req.error_type = "client_disconnected"
                return None
            await send({"type": "http.response.body", "body": b""})
            return acc if acc.cacheable else None
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
                                    f"{self._max_response} bytes without ending an event.",
                                    code="upstream_too_large")
            elif now - last_event > self._stall_s:
                raise UpstreamTimeout(f"Upstream provider `{provider}` sent no complete event "
                                      f"for {self._stall_s:g} s.")
            if now > deadline:
                raise UpstreamTimeout(f"Upstream provider `{provider}` took longer than "
                                      "upstream.total_timeout_s.")


async def _replay_upstream(send: Any, req: RequestLog, data: bytes, common: Headers,
                           provider: str) -> None:
    """A 200 that is a whole completion where a stream was asked for (servers that ignore
    ``stream``): the client still gets the stream it asked for."""
    try:
        await respond.send_replay(send, req, data, common, req.upstream_s)
    except ValueError:
        raise UpstreamError(f"Upstream provider `{provider}` answered a stream request with "
                            "neither SSE nor a chat completion.",
                            code="upstream_bad_response") from None


def _is_sse(content_type: str | None) -> bool:
    # The raw header, not aiohttp's parsed ``content_type`` (which copies a dict per response).
    return content_type is not None and content_type[:17].lower() == "text/event-stream"
