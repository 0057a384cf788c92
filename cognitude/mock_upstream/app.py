"""The raw ASGI dispatcher: parsing, counting, auth, injected failures, the control plane.

Every API request is counted first (tests assert "upstream called exactly N times"), then
delayed by the configured latency, then: unknown path 404, wrong method 405, bad key 401,
a bad ``anthropic-version`` 400 -- none of which consume a queued failure -- then the next
queued failure, if any (``failures``), and only then the path's handler (``routes``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from cognitude.mock_upstream import failures
from cognitude.mock_upstream.asgi import Receive, Scope, Send, read_body, send_json
from cognitude.mock_upstream.protocol import error
from cognitude.mock_upstream.routes import Call, handle, refusal, respond
from cognitude.mock_upstream.state import CONFIG_KEYS, MockState


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
                unknown = sorted(set(req) - set(CONFIG_KEYS))
                if unknown:  # a typo would otherwise silently leave the default in place
                    raise ValueError(f"unknown config keys {unknown}; known: {list(CONFIG_KEYS)}")
                return await send_json(send, 200, st.configure(**req))
        except (ValueError, AttributeError, TypeError) as exc:
            # orjson.JSONDecodeError is a ValueError; a non-object body is an AttributeError
            # (.get) or TypeError (set / ** of a list).
            return await send_json(send, *error(400, str(exc)))
        await send_json(send, *error(404, f"Unknown control path ({method} {path})"))

    async def _api(
        self, scope: Scope, path: str, body: bytes, receive: Receive, send: Send
    ) -> None:
        st = self.state
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            req: Any = orjson.loads(body) if body else None
            bad_json = False
        except orjson.JSONDecodeError:
            req, bad_json = None, True
        call = Call(scope["method"], path, headers, req, bad_json, st.record(path, headers, req))

        if st.latency_s > 0:
            await asyncio.sleep(st.latency_s)

        refused = refusal(call, st)
        if refused is not None:
            return await respond(call, refused, st, send)
        failure = st.next_failure()
        if failure is not None:
            return await failures.inject(failure, call, st, receive, send)
        await respond(call, handle(call), st, send)


def build_app(
    *,
    latency_ms: float = 0.0,
    require_key: str | None = None,
    require_anthropic_version: bool = True,
) -> MockApp:
    """The raw ASGI callable (a ``MockApp``; its ``.state`` is the in-process control).

    ``require_anthropic_version``: refuse ``/v1/messages`` without the header, as the real
    API does (off by default only for callers that predate the strict Anthropic side).
    """
    return MockApp(MockState(latency_ms, require_key, require_anthropic_version))
