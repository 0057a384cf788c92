"""The raw ASGI dispatcher: routing, auth, injected failures, and the ``/_mock/`` control plane.

Every API request is counted first (tests assert "upstream called exactly N times"), then
delayed by the configured latency, then: unknown path 404, wrong method 405, bad key 401 --
none of which consume a queued failure -- then the next queued failure, if any, and only
then the dialect's handler.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from . import anthropic_api, openai_api
from .asgi import Receive, Scope, Send, drop, read_body, send_events, send_json, wait_disconnect
from .protocol import Reply, Response, error
from .state import MockState

# Longer than any sane proxy timeout; the stall still ends early on disconnect or shutdown.
TIMEOUT_STALL_S = 60.0

_STREAM_PATHS = frozenset({"/v1/chat/completions", "/v1/messages"})
_API_PATHS = {
    "/v1/chat/completions": "POST",
    "/v1/embeddings": "POST",
    "/v1/messages": "POST",
    "/v1/models": "GET",
}
_MODEL_PREFIX = "/v1/models/"

# The failure modes that answer at once; "timeout" stalls and "drop" cuts the connection.
_INJECTED = {
    "429": error(
        429,
        "Rate limit reached for requests (mock).",
        None,
        "rate_limit_exceeded",
        kind="requests",
        headers=((b"retry-after", b"1"),),
    ),
    "500": error(
        500,
        "The server had an error while processing your request. Sorry about that!",
        kind="server_error",
    ),
    "400": error(400, "Invalid 'messages': injected failure (mock).", "messages", "invalid_value"),
}
_BAD_JSON = error(
    400,
    "We could not parse the JSON body of your request. The API expects a JSON payload.",
)


def _refusal(
    method: str, path: str, model_id: str | None, headers: dict[str, str], key: str | None
) -> Reply | None:
    """404 / 405 / 401, checked before any injected failure is consumed."""
    expected = "GET" if model_id else _API_PATHS.get(path)
    if expected is None:
        return error(404, f"Invalid URL ({method} {path})")
    if method != expected:
        return error(405, f"Method not allowed ({method} {path})")
    if key is not None and key not in (
        headers.get("authorization", "").removeprefix("Bearer "),
        headers.get("x-api-key"),
    ):
        return error(401, "Incorrect API key provided.", None, "invalid_api_key")
    return None


def _handle(path: str, model_id: str | None, req: Any, n: int, stream: bool) -> Response:
    if path == "/v1/chat/completions":
        return openai_api.chat(req, n, stream)
    if path == "/v1/messages":
        return anthropic_api.messages(req, n, stream)
    if path == "/v1/embeddings":
        return openai_api.embeddings(req)
    if model_id is not None:
        return openai_api.model(model_id)
    return openai_api.models()


class MockApp:
    """The raw ASGI callable; ``state`` is exposed for in-process control (MockUpstream)."""

    def __init__(self, state: MockState) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            body = await read_body(receive)
            if path.startswith("/_mock/"):
                await self._control(scope["method"], path, body, send)
            else:
                await self._api(scope, path, body, receive, send)
        elif scope["type"] == "lifespan":  # only when a host server runs lifespan
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})

    async def _control(self, method: str, path: str, body: bytes, send: Send) -> None:
        st = self.state
        try:
            req = orjson.loads(body) if body else {}
            if path == "/_mock/stats" and method == "GET":
                return await send_json(send, 200, st.stats())
            if path == "/_mock/reset" and method == "POST":
                st.reset()
                return await send_json(send, 200, {"ok": True})
            if path == "/_mock/fail" and method == "POST":
                st.fail(req.get("mode", ""), req.get("count", 1))
                return await send_json(
                    send, 200, {"ok": True, "pending": st.stats()["pending_failures"]}
                )
            if path == "/_mock/config" and method in ("GET", "POST"):
                cfg = st.configure(
                    latency_ms=req.get("latency_ms"), chunk_delay_ms=req.get("chunk_delay_ms")
                )
                return await send_json(send, 200, cfg)
        except (ValueError, AttributeError) as exc:  # orjson.JSONDecodeError is a ValueError
            return await send_json(send, *error(400, str(exc)))
        await send_json(send, *error(404, f"Unknown control path ({method} {path})"))

    async def _api(
        self, scope: Scope, path: str, body: bytes, receive: Receive, send: Send
    ) -> None:
        st = self.state
        method: str = scope["method"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            req: Any = orjson.loads(body) if body else None
            bad_json = False
        except orjson.JSONDecodeError:
            req, bad_json = None, True
        n = st.record(path, headers, req)

        if st.latency_s > 0:
            await asyncio.sleep(st.latency_s)

        model_id = path[len(_MODEL_PREFIX) :] if path.startswith(_MODEL_PREFIX) else None
        stream = isinstance(req, dict) and req.get("stream") is True and path in _STREAM_PATHS
        drop_after: int | None = None
        result: Response | None = _refusal(method, path, model_id, headers, st.require_key)
        if result is None:
            failure = st.next_failure()
            if failure is not None:
                result = _INJECTED.get(failure)
            if failure == "timeout" and not await self._stall(receive):
                return  # the client gave up; nobody to answer
            if failure == "drop":
                if not stream:
                    return await drop(receive)
                drop_after = 2  # after the first two events
        if result is None:
            result = _BAD_JSON if bad_json else _handle(path, model_id, req, n, stream)

        if isinstance(result, tuple):  # a Reply
            if result[0] >= 400 and path == "/v1/messages":
                result = anthropic_api.as_anthropic(result)
            await send_json(send, *result)
        else:
            await send_events(result, drop_after, st, receive, send)

    async def _stall(self, receive: Receive) -> bool:
        """Sleep up to TIMEOUT_STALL_S; False if the client disconnected meanwhile.

        Polls for server shutdown so a stalled request never holds up stop()/Ctrl-C, and
        watches for disconnect so stalled tasks don't pile up after the client times out.
        """
        watcher = asyncio.ensure_future(wait_disconnect(receive))
        try:
            deadline = time.monotonic() + TIMEOUT_STALL_S
            while time.monotonic() < deadline and not self.state.stopping():
                if watcher.done():
                    return False
                await asyncio.sleep(0.05)
            return True
        finally:
            watcher.cancel()


def build_app(*, latency_ms: float = 0.0, require_key: str | None = None) -> MockApp:
    """The raw ASGI callable (a ``MockApp``; its ``.state`` is the in-process control)."""
    return MockApp(MockState(latency_ms, require_key))
