"""The dispatch stage: a cache miss goes upstream, as the plan's attempts say, through each
attempt's provider adapter, and the answer goes to the client as it arrives.

Attempts (DESIGN §11): at most ``upstream.max_attempts`` calls per request, retries and
fallbacks together, in the plan's order, passing over cooled-down deployments while another
remains (``providers.cooldowns``) and wrapping around to call a deployment again when the
plan is shorter than the budget. Only a transient failure moves on (connect error, timeout,
408/429/5xx/529, a 200 that is not the endpoint's answer), and never once the response has
started: a stream that fails later ends with an SSE error event instead. Calling a
deployment again waits its Retry-After when that is at most ``upstream.retry_after_max_s``
(longer: the error goes to the client with the header), else a full-jitter backoff; moving
to another deployment waits for nothing. The proxy's own upstream client never retries, so
a fallback never multiplies with an SDK's retries.

Bounds on what an upstream can make the proxy do: redirects are never followed, a body is
read up to ``upstream.max_response_bytes``, a 200 must be the endpoint's JSON (the adapter
checks), the whole exchange - every attempt together - is cut at
``upstream.total_timeout_s`` (the sweep of ``providers.deadlines``), and a stream that
makes no progress - nothing, or bytes that never complete an event, for
``upstream.read_timeout_s`` - ends with an SSE error event.
"""

from __future__ import annotations

import asyncio
import random
from time import monotonic, perf_counter
from typing import Any

from cognitude.config import Config
from cognitude.errors import UpstreamError, UpstreamHTTPError, UpstreamTimeout
from cognitude.hotpath import respond, sse
from cognitude.hotpath.plan import Attempt, RoutePlan
from cognitude.hotpath.request import Inbound
from cognitude.hotpath.respond import Headers
from cognitude.ledger.accounting import RequestLog
from cognitude.providers.adapter import StreamTranslator
from cognitude.providers.upstream import MAX_ERROR_BYTES, map_upstream_errors, read_capped
from cognitude.state import AppState

# What dispatch hands the after stage: the body to cache, a finished stream to fold into
# one, or None (nothing cacheable: an error event, a client gone).
Outcome = bytes | sse.StreamAccumulator | None

_ATTEMPT_HEADERS = tuple(b"%d" % n for n in range(11))  # X-Cognitude-Attempts values


class Dispatcher:
    """Runs one endpoint's plans upstream; one per route, built at start."""

    __slots__ = ("_state", "_endpoint", "_max_response", "_stall_s", "_budget",
                 "_retry_after_max", "_backoff_base", "_backoff_max", "_cooldowns", "counts")

    def __init__(self, state: AppState, cfg: Config, endpoint: str) -> None:
        up = cfg.upstream
        self._state = state
        self._endpoint = endpoint
        self._max_response = up.max_response_bytes
        self._stall_s = up.read_timeout_s
        self._budget = up.max_attempts
        self._retry_after_max = up.retry_after_max_s
        self._backoff_base = up.backoff_base_ms / 1000
        self._backoff_max = up.backoff_max_ms / 1000
        self._cooldowns = state.cooldowns
        # For /metrics: upstream calls, calls after the first (retries and fallbacks),
        # answers from a fallback model, deployments passed over while cooled down; one
        # dict for both routes.
        self.counts = state.upstream_counts
        for name in ("calls", "retries", "fallbacks", "skipped"):
            self.counts.setdefault(name, 0)

    async def run(self, plan: RoutePlan, inbound: Inbound, req: RequestLog, send: Any,
                  receive: Any, common: Headers) -> Outcome:
        attempts = plan.attempts
        if len(attempts) > 1:
            attempts = self._order(attempts)
        deadlines = self._state.deadlines
        task = asyncio.current_task()
        assert task is not None
        deadlines.inflight[task] = monotonic() + deadlines.total_s
        started = perf_counter()  # upstream_s counts every attempt
        counts = self.counts
        n = 0
        try:
            while True:
                attempt = attempts[n % len(attempts)]
                n += 1
                req.provider, req.model_used, req.route = attempt.provider, attempt.model, \
                    attempt.route
                req.attempts = n
                counts["calls"] += 1
                # Who answered, for the client: X-Cognitude-Model/-Provider/-Route, and
                # X-Cognitude-Attempts when it took more than one (each response header
                # costs ~3,000 instructions in uvicorn's checks).
                headers = [*common, *attempt.says]
                if n > 1:
                    headers.append((b"x-cognitude-attempts", _ATTEMPT_HEADERS[n]))
                try:
                    outcome = await self._call(attempt, inbound, req, send, receive, headers,
                                               started)
                except UpstreamError as exc:
                    exc.headers.extend(headers[1:])  # send_error adds X-Request-ID itself
                    if not self._again(attempt, exc, n, len(attempts), req):
                        raise
                    await self._pause(attempts, n, exc)
                    continue
                self._cooldowns.succeeded(attempt.deployment)
                return outcome
        except asyncio.CancelledError:
            if not deadlines.was_cut(task):
                raise
            raise UpstreamTimeout(f"Upstream provider `{req.provider}` took longer than "
                                  "upstream.total_timeout_s.") from None
        finally:
            deadlines.inflight.pop(task, None)

    def _order(self, attempts: tuple[Attempt, ...]) -> tuple[Attempt, ...]:
        """The plan's attempts minus the cooled-down ones - unless that leaves none."""
        cooled = self._cooldowns.cooled
        ready = tuple(a for a in attempts if not cooled(a.deployment))
        self.counts["skipped"] += len(attempts) - len(ready)
        return ready or attempts

    def _again(self, attempt: Attempt, exc: UpstreamError, n: int, planned: int,
               req: RequestLog) -> bool:
        """Note the failure for cooldowns; whether another attempt may follow (``n`` calls
        made of a plan of ``planned`` deployments)."""
        status = exc.status_code
        if exc.retryable:
            self._cooldowns.failed(attempt.deployment)
        elif attempt.shared and status in (401, 403) and isinstance(exc, UpstreamHTTPError):
            self._cooldowns.failed(attempt.deployment, refused_key=True)
        if req.headers_sent or not exc.retryable or n >= self._budget:
            return False
        wait = exc.retry_after_s
        if wait is not None and wait > self._retry_after_max and n >= planned:
            # The next call would go to a deployment that asked for longer than a request
            # is held: the client gets the error, with its Retry-After.
            return False
        self.counts["retries"] += 1
        return True

    async def _pause(self, attempts: tuple[Attempt, ...], n: int, exc: UpstreamError) -> None:
        """Before the next call: nothing for another deployment; for one called before, its
        Retry-After, else full-jitter backoff (n calls made so far)."""
        if n < len(attempts):
            return
        wait = exc.retry_after_s
        if wait is None:
            rounds = n // len(attempts)  # how many times the whole list was run
            wait = random.uniform(0, min(self._backoff_max,
                                         self._backoff_base * 2 ** (rounds - 1)))
        await asyncio.sleep(wait)

    async def _call(self, attempt: Attempt, inbound: Inbound, req: RequestLog, send: Any,
                    receive: Any, common: Headers, started: float) -> Outcome:
        body, req.stripped_usage = attempt.adapter.upstream_body(
            inbound.doc, inbound.body, model=attempt.model,
            chat_stream=inbound.stream and self._endpoint == "chat",
            stream_usage=attempt.stream_usage, max_output=attempt.max_output)
        u0 = started
        with map_upstream_errors(attempt.provider):
            async with self._state.session.post(attempt.url, data=body,
                                                headers=attempt.headers,
                                                allow_redirects=False) as resp:
                if resp.status != 200:
                    raise await self._refused(attempt, resp, req, u0)
                if req.stream and _is_sse(resp.headers.get("Content-Type")):
                    # From here the relay checks the deadline itself: a cancellation
                    # could no longer end the stream with an error event.
                    deadline = self._state.deadlines.release()
                    req.upstream_s = perf_counter() - u0
                    return await self._pipe_stream(send, receive, req, resp, common,
                                                   attempt, deadline)
                data = await read_capped(resp, self._max_response, attempt.provider)
        req.upstream_s = perf_counter() - u0
        data, req.usage = attempt.adapter.answer(data, self._endpoint, attempt.provider)
        if attempt.route is not None and attempt.route.startswith("fallback:"):
            self.counts["fallbacks"] += 1
        if req.stream:
            await _replay_upstream(send, req, data, common, attempt.provider)
        else:
            await respond.send_json(send, req, data, common, req.upstream_s)
        return data

    async def _refused(self, attempt: Attempt, resp: Any, req: RequestLog,
                       u0: float) -> UpstreamError:
        err_body = await read_capped(resp, MAX_ERROR_BYTES, attempt.provider)
        req.upstream_s = perf_counter() - u0
        return attempt.adapter.error(attempt.provider, attempt.secret, resp.status, err_body,
                                     resp.headers.get("retry-after"))

    async def _pipe_stream(self, send: Any, receive: Any, req: RequestLog, resp: Any,
                           common: Headers, attempt: Attempt,
                           deadline: float) -> sse.StreamAccumulator | None:
        """Pass SSE through event by event (translated, for a provider whose events are not
        OpenAI's); stop reading upstream if the client leaves."""
        provider = attempt.provider
        translator = attempt.adapter.stream(provider)
        req.acc = acc = sse.StreamAccumulator(strip_usage=req.stripped_usage,
                                              max_pending=self._max_response)
        if attempt.route is not None and attempt.route.startswith("fallback:"):
            self.counts["fallbacks"] += 1
        await respond.start_sse(send, req, common, req.upstream_s)
        # uvicorn drops sends to a gone client silently; the only signal is receive()
        # returning http.disconnect, so watch it while the stream runs.
        gone = asyncio.ensure_future(receive())
        try:
            try:
                with map_upstream_errors(provider):
                    await self._relay(send, resp, acc, translator, gone, provider, deadline)
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
                     translator: StreamTranslator | None, gone: asyncio.Future[Any],
                     provider: str, deadline: float) -> None:
        """Forward whole events until the upstream ends, the client leaves, or the stream
        stops making progress: bytes but no complete event for ``read_timeout_s``, more than
        ``max_response_bytes`` of an unfinished event, or past ``total_timeout_s``."""
        last_event = perf_counter()
        deadline += last_event - monotonic()  # on the clock read below, once per chunk
        async for chunk in resp.content.iter_any():
            if gone.done():
                return
            out = acc.feed(chunk if translator is None else translator.feed(chunk))
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
