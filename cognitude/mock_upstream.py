"""The bundled fake LLM upstream: OpenAI (and minimal Anthropic) wire format over real HTTP.

Tests, demos and benchmarks all use this one fake. Benchmarks compare "direct to mock" with
"through the proxy", so the mock's own cost must be tiny: it is a raw ASGI callable (no
routing framework, no middleware), serialises with orjson and runs under uvicorn with
uvloop + httptools and no access log.

Determinism (so tests can check what the proxy forwarded):

* chat reply = ``"mock reply to: " + <last user message text>[:200]``;
* token counts are whitespace-split words (min 1): prompt tokens over every message's text,
  completion tokens over the reply. ``max_tokens`` / ``max_completion_tokens`` truncate the
  reply to that many words and then ``finish_reason`` is ``"length"``, as the real API does;
* embeddings are unit vectors derived from a SHAKE-256 hash of each input (8 floats unless
  ``dimensions`` is given).

Control plane (tests only), under ``/_mock/``: ``GET stats``, ``POST reset``, ``POST fail``
(``{"mode": "429"|"500"|"400"|"timeout"|"drop", "count": n}``, queued FIFO) and
``GET|POST config`` (``{"latency_ms", "chunk_delay_ms"}``).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import http.client
import math
import re
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-3.5-turbo", "gpt-4", "claude-3-5-sonnet", "claude-3-haiku")
FAIL_MODES = frozenset({"429", "500", "400", "timeout", "drop"})
MAX_ECHO_CHARS = 200
EMBED_DIM = 8
# Longer than any sane proxy timeout; the stall still ends early on disconnect or shutdown.
TIMEOUT_STALL_S = 60.0
_MODELS_CREATED = 1_700_000_000  # fixed so /v1/models is byte-for-byte stable
_WORD = re.compile(r"\S+\s*")  # one "token" plus its trailing whitespace: pieces re-join exactly

_CT_JSON = (b"content-type", b"application/json")
_CT_SSE = (b"content-type", b"text/event-stream; charset=utf-8")
_NO_CACHE = (b"cache-control", b"no-cache")
_STREAM_PATHS = frozenset({"/v1/chat/completions", "/v1/messages"})
_API_PATHS = {
    "/v1/chat/completions": "POST",
    "/v1/embeddings": "POST",
    "/v1/messages": "POST",
    "/v1/models": "GET",
}


class _DroppedConnection(Exception):
    """Raised only when the server gives us no transport to close (not uvicorn)."""


def _err(
    status: int, message: str, kind: str, param: str | None = None, code: str | None = None
) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _anthropic_err(status: int, payload: dict[str, Any]) -> dict[str, Any]:
    # Anthropic clients parse {"type": "error", "error": {"type", "message"}}; map OpenAI's
    # classification onto Anthropic's names so both dialects look like their real API.
    kinds = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        405: "invalid_request_error",
        429: "rate_limit_error",
        500: "api_error",
    }
    return {
        "type": "error",
        "error": {"type": kinds.get(status, "api_error"), "message": payload["error"]["message"]},
    }


def _text_of(content: Any) -> str:
    """Message content is either a string or a list of parts; only text parts count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def _words(text: str) -> int:
    return len(text.split())


def _prompt_tokens(messages: list[Any], system: Any = None) -> int:
    total = _words(_text_of(system)) if system is not None else 0
    for m in messages:
        if isinstance(m, dict):
            total += _words(_text_of(m.get("content")))
    return max(total, 1)


def _reply(messages: list[Any], limit: int | None) -> tuple[str, int, bool]:
    """(content, completion_tokens, truncated) for the last user message."""
    last = next(
        (m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None
    )
    content = "mock reply to: " + _text_of(last.get("content") if last else "")[:MAX_ECHO_CHARS]
    pieces = _WORD.findall(content)
    if limit is not None and len(pieces) > limit:
        return "".join(pieces[:limit]).rstrip(), limit, True
    return content, len(pieces), False


def _bad_limit(req: dict[str, Any], *names: str) -> tuple[int, dict[str, Any]] | None:
    for name in names:
        value = req.get(name)
        # bool is an int subclass; the real API rejects it, so do we.
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            return _err(
                400,
                f"Invalid '{name}': expected an integer >= 1, got {value!r}.",
                "invalid_request_error",
                name,
                "integer_below_min_value",
            )
    return None


def _validate_messages(req: Any) -> tuple[int, dict[str, Any]] | None:
    if not isinstance(req, dict):
        return _err(
            400,
            "We could not parse the JSON body of your request. The API expects a JSON object.",
            "invalid_request_error",
        )
    if not isinstance(req.get("model"), str) or not req["model"]:
        return _err(
            400,
            "you must provide a model parameter",
            "invalid_request_error",
            "model",
            "missing_required_parameter",
        )
    if "messages" not in req:
        return _err(
            400,
            "Missing required parameter: 'messages'.",
            "invalid_request_error",
            "messages",
            "missing_required_parameter",
        )
    msgs = req["messages"]
    if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
        return _err(
            400,
            "Invalid 'messages': expected a non-empty array of message objects.",
            "invalid_request_error",
            "messages",
            "invalid_value",
        )
    return None


def _embedding(item: Any, dim: int) -> list[float]:
    raw = hashlib.shake_256(orjson.dumps(item)).digest(4 * dim)
    vec = [x / 2_147_483_648.0 - 1.0 for x in struct.unpack(f"<{dim}I", raw)]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            break
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body", False):
            break
    return b"".join(chunks)


async def _send_json(
    send: Send, status: int, payload: Any, extra: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    body = orjson.dumps(payload)
    headers = [_CT_JSON, (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _drop(receive: Receive) -> None:
    """Kill the connection without a clean end of response.

    ASGI has no "abort" message. Under uvicorn (httptools and h11 alike) ``receive`` is a
    bound method of the request cycle, which holds the asyncio transport. ``close()`` flushes
    what was already written (headers, the chunks the client should see) and then sends FIN
    without the terminating zero-length chunk, so the client sees an incomplete chunked body
    (or, before any response, "server disconnected without sending a response").
    """
    transport = getattr(getattr(receive, "__self__", None), "transport", None)
    if transport is None:
        # Other servers: an exception makes them close the connection (noisier logs).
        raise _DroppedConnection("mock upstream: injected connection drop")
    transport.close()
    # Return only once uvicorn has seen connection_lost: it then treats the cycle as
    # disconnected instead of logging "returned without completing response" or writing a
    # 500 onto the dead socket.
    try:
        await asyncio.wait_for(_wait_disconnect(receive), 5.0)
    except TimeoutError:
        pass


class _State:
    """Counters, injected failures and run-time config. Mutated from the server's event loop
    and from test threads (MockUpstream), hence the lock; every critical section is tiny."""

    def __init__(self, latency_ms: float, require_key: str | None) -> None:
        self.lock = threading.Lock()
        self.latency_s = latency_ms / 1000.0
        self.chunk_delay_s = 0.0
        self.require_key = require_key
        self.failures: deque[str] = deque()
        self.seq = 0  # never reset, so response ids stay unique across resets
        self.server: uvicorn.Server | None = None  # set by serve()/MockUpstream for shutdown
        self._zero()

    def _zero(self) -> None:
        self.requests = 0
        self.by_path: dict[str, int] = {}
        self.by_model: dict[str, int] = {}
        self.last_request: dict[str, Any] | None = None

    def record(self, path: str, headers: dict[str, str], body: Any) -> int:
        model = body.get("model") if isinstance(body, dict) else None
        with self.lock:
            self.seq += 1
            self.requests += 1
            self.by_path[path] = self.by_path.get(path, 0) + 1
            if isinstance(model, str):
                self.by_model[model] = self.by_model.get(model, 0) + 1
            self.last_request = {"path": path, "headers": headers, "body": body}
            return self.seq

    def next_failure(self) -> str | None:
        with self.lock:
            return self.failures.popleft() if self.failures else None

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(
                {
                    "requests": self.requests,
                    "by_path": self.by_path,
                    "by_model": self.by_model,
                    "last_request": self.last_request,
                    "pending_failures": list(self.failures),
                }
            )

    def reset(self) -> None:
        with self.lock:
            self._zero()
            self.failures.clear()

    def fail(self, mode: str, count: int = 1) -> None:
        mode = str(mode)
        if mode not in FAIL_MODES or not isinstance(count, int) or count < 0:
            raise ValueError(f"bad failure injection: mode={mode!r} count={count!r}")
        with self.lock:
            self.failures.extend([mode] * count)

    def configure(
        self, *, latency_ms: float | None = None, chunk_delay_ms: float | None = None
    ) -> dict[str, float]:
        for v in (latency_ms, chunk_delay_ms):
            if v is not None and (not isinstance(v, int | float) or isinstance(v, bool) or v < 0):
                raise ValueError(f"delays must be numbers >= 0, got {v!r}")
        with self.lock:
            if latency_ms is not None:
                self.latency_s = latency_ms / 1000.0
            if chunk_delay_ms is not None:
                self.chunk_delay_s = chunk_delay_ms / 1000.0
            return {
                "latency_ms": self.latency_s * 1000.0,
                "chunk_delay_ms": self.chunk_delay_s * 1000.0,
            }

    def stopping(self) -> bool:
        return self.server is not None and self.server.should_exit


class MockApp:
    """The raw ASGI callable; ``state`` is exposed for in-process control (MockUpstream)."""

    def __init__(self, state: _State) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            body = await _read_body(receive)
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
                return await _send_json(send, 200, st.stats())
            if path == "/_mock/reset" and method == "POST":
                st.reset()
                return await _send_json(send, 200, {"ok": True})
            if path == "/_mock/fail" and method == "POST":
                st.fail(req.get("mode", ""), req.get("count", 1))
                return await _send_json(
                    send, 200, {"ok": True, "pending": st.stats()["pending_failures"]}
                )
            if path == "/_mock/config" and method in ("GET", "POST"):
                cfg = st.configure(
                    latency_ms=req.get("latency_ms"), chunk_delay_ms=req.get("chunk_delay_ms")
                )
                return await _send_json(send, 200, cfg)
        except (ValueError, AttributeError) as exc:  # orjson.JSONDecodeError is a ValueError
            return await _send_json(send, 400, _err(400, str(exc), "invalid_request_error")[1])
        await _send_json(
            send,
            404,
            _err(404, f"Unknown control path ({method} {path})", "invalid_request_error")[1],
        )

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
        # Counted before anything can fail: tests assert "upstream called exactly N times".
        n = st.record(path, headers, req)
        anthropic = path == "/v1/messages"

        async def reply(
            status: int, payload: dict[str, Any], extra: tuple[tuple[bytes, bytes], ...] = ()
        ) -> None:
            await _send_json(
                send,
                status,
                _anthropic_err(status, payload) if anthropic and status >= 400 else payload,
                extra,
            )

        if st.latency_s > 0:
            await asyncio.sleep(st.latency_s)

        model_id = path[len("/v1/models/") :] if path.startswith("/v1/models/") else None
        expected = "GET" if model_id else _API_PATHS.get(path)
        if expected is None:
            return await reply(
                *_err(404, f"Invalid URL ({method} {path})", "invalid_request_error")
            )
        if method != expected:
            return await reply(
                *_err(405, f"Method not allowed ({method} {path})", "invalid_request_error")
            )
        if st.require_key is not None and st.require_key not in (
            headers.get("authorization", "").removeprefix("Bearer "),
            headers.get("x-api-key"),
        ):
            return await reply(
                *_err(
                    401,
                    "Incorrect API key provided.",
                    "invalid_request_error",
                    None,
                    "invalid_api_key",
                )
            )

        stream = isinstance(req, dict) and req.get("stream") is True and path in _STREAM_PATHS
        drop_after: int | None = None
        failure = st.next_failure()
        if failure == "429":
            return await reply(
                *_err(
                    429,
                    "Rate limit reached for requests (mock).",
                    "requests",
                    None,
                    "rate_limit_exceeded",
                ),
                ((b"retry-after", b"1"),),
            )
        if failure == "500":
            return await reply(
                *_err(
                    500,
                    "The server had an error while processing your request. Sorry about that!",
                    "server_error",
                )
            )
        if failure == "400":
            return await reply(
                *_err(
                    400,
                    "Invalid 'messages': injected failure (mock).",
                    "invalid_request_error",
                    "messages",
                    "invalid_value",
                )
            )
        if failure == "timeout" and not await self._stall(receive):
            return  # the client gave up; nobody to answer
        if failure == "drop":
            if not stream:
                return await _drop(receive)
            drop_after = 2

        if bad_json:
            return await reply(
                *_err(
                    400,
                    "We could not parse the JSON body of your request. "
                    "The API expects a JSON payload.",
                    "invalid_request_error",
                )
            )
        if path == "/v1/chat/completions":
            await self._chat(req, n, stream, drop_after, reply, receive, send)
        elif path == "/v1/messages":
            await self._messages(req, n, stream, drop_after, reply, receive, send)
        elif path == "/v1/embeddings":
            await self._embeddings(req, reply)
        elif model_id is not None:
            if model_id in MODELS:
                await reply(200, _model_obj(model_id))
            else:
                await reply(
                    *_err(
                        404,
                        f"The model '{model_id}' does not exist",
                        "invalid_request_error",
                        "model",
                        "model_not_found",
                    )
                )
        else:
            await reply(200, {"object": "list", "data": [_model_obj(m) for m in MODELS]})

    async def _stall(self, receive: Receive) -> bool:
        """Sleep up to TIMEOUT_STALL_S; False if the client disconnected meanwhile.

        Polls for server shutdown so a stalled request never holds up stop()/Ctrl-C, and
        watches for disconnect so stalled tasks don't pile up after the client times out.
        """
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            deadline = time.monotonic() + TIMEOUT_STALL_S
            while time.monotonic() < deadline and not self.state.stopping():
                if watcher.done():
                    return False
                await asyncio.sleep(0.05)
            return True
        finally:
            watcher.cancel()

    async def _stream(
        self, events: list[bytes], drop_after: int | None, receive: Receive, send: Send
    ) -> None:
        """Send SSE events, each as its own ASGI body message so they hit the wire separately."""
        await send({"type": "http.response.start", "status": 200, "headers": [_CT_SSE, _NO_CACHE]})
        last = len(events) - 1
        for i, event in enumerate(events):
            if drop_after is not None and i == drop_after:
                return await _drop(receive)
            if i and self.state.chunk_delay_s > 0:
                await asyncio.sleep(self.state.chunk_delay_s)
            await send({"type": "http.response.body", "body": event, "more_body": i < last})

    async def _chat(
        self,
        req: Any,
        n: int,
        stream: bool,
        drop_after: int | None,
        reply: Callable[..., Awaitable[None]],
        receive: Receive,
        send: Send,
    ) -> None:
        error = _validate_messages(req) or _bad_limit(req, "max_tokens", "max_completion_tokens")
        if error:
            return await reply(*error)
        limit = req.get("max_completion_tokens") or req.get("max_tokens")
        content, completion, truncated = _reply(req["messages"], limit)
        prompt = _prompt_tokens(req["messages"])
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        finish = "length" if truncated else "stop"
        # "object" is overridden per shape; listing it here keeps the real API's key order.
        base = {
            "id": f"chatcmpl-mock-{n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req["model"],
            "system_fingerprint": "fp_mock",
        }
        if not stream:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": finish,
            }
            return await reply(
                200, {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
            )

        opts = req.get("stream_options")
        include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
        # The real API puts "usage": null on every chunk once include_usage is on.
        tail = {"usage": None} if include_usage else {}

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            c = {
                **base,
                "object": "chat.completion.chunk",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                ],
                **tail,
            }
            return b"data: " + orjson.dumps(c) + b"\n\n"

        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": piece}) for piece in _WORD.findall(content)]
        events.append(chunk({}, finish))
        if include_usage:
            events.append(
                b"data: "
                + orjson.dumps(
                    {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
                )
                + b"\n\n"
            )
        events.append(b"data: [DONE]\n\n")
        await self._stream(events, drop_after, receive, send)

    async def _messages(
        self,
        req: Any,
        n: int,
        stream: bool,
        drop_after: int | None,
        reply: Callable[..., Awaitable[None]],
        receive: Receive,
        send: Send,
    ) -> None:
        error = _validate_messages(req)
        if error is None and req.get("max_tokens") is None:
            # Unlike OpenAI, Anthropic's API requires max_tokens.
            error = _err(
                400,
                "max_tokens: Field required",
                "invalid_request_error",
                "max_tokens",
                "missing_required_parameter",
            )
        error = error or _bad_limit(req, "max_tokens")
        if error:
            return await reply(*error)
        content, output, truncated = _reply(req["messages"], req["max_tokens"])
        usage = {
            "input_tokens": _prompt_tokens(req["messages"], req.get("system")),
            "output_tokens": output,
        }
        stop_reason = "max_tokens" if truncated else "end_turn"
        msg: dict[str, Any] = {
            "id": f"msg_mock_{n}",
            "type": "message",
            "role": "assistant",
            "model": req["model"],
        }
        if not stream:
            return await reply(
                200,
                {
                    **msg,
                    "content": [{"type": "text", "text": content}],
                    "stop_reason": stop_reason,
                    "stop_sequence": None,
                    "usage": usage,
                },
            )

        def ev(name: str, data: dict[str, Any]) -> bytes:
            return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

        start = {
            **msg,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": usage["input_tokens"], "output_tokens": 0},
        }
        events = [
            ev("message_start", {"type": "message_start", "message": start}),
            ev(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
        ]
        events += [
            ev(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": piece},
                },
            )
            for piece in _WORD.findall(content)
        ]
        events += [
            ev("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ev(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                    "usage": {"output_tokens": output},
                },
            ),
            ev("message_stop", {"type": "message_stop"}),
        ]
        await self._stream(events, drop_after, receive, send)

    async def _embeddings(self, req: Any, reply: Callable[..., Awaitable[None]]) -> None:
        if not isinstance(req, dict) or not isinstance(req.get("model"), str):
            return await reply(
                *_err(
                    400,
                    "you must provide a model parameter",
                    "invalid_request_error",
                    "model",
                    "missing_required_parameter",
                )
            )
        raw = req.get("input")
        # A flat list of ints is ONE pre-tokenised input; anything else non-list is one input.
        if isinstance(raw, str) or (
            isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw)
        ):
            items: list[Any] = [raw]
        else:
            items = raw if isinstance(raw, list) else []
        if not items or not all(isinstance(i, str | list) and i for i in items):
            return await reply(
                *_err(
                    400,
                    "'input' must be a non-empty string or array.",
                    "invalid_request_error",
                    "input",
                    "invalid_value",
                )
            )
        dim = req.get("dimensions") or EMBED_DIM
        if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= 4096:
            return await reply(
                *_err(
                    400,
                    "Invalid 'dimensions'.",
                    "invalid_request_error",
                    "dimensions",
                    "invalid_value",
                )
            )
        b64 = req.get("encoding_format") == "base64"  # the openai SDK asks for this by default
        data = []
        for i, item in enumerate(items):
            vec = _embedding(item, dim)
            emb: Any = base64.b64encode(struct.pack(f"<{dim}f", *vec)).decode() if b64 else vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        tokens = max(sum(_words(i) if isinstance(i, str) else len(i) for i in items), 1)
        await reply(
            200,
            {
                "object": "list",
                "data": data,
                "model": req["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )


def _model_obj(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": _MODELS_CREATED, "owned_by": "mock"}


def build_app(*, latency_ms: float = 0.0, require_key: str | None = None) -> MockApp:
    """The raw ASGI callable (a ``MockApp``; its ``.state`` is the in-process control)."""
    return MockApp(_State(latency_ms, require_key))


def _config(app: MockApp, **kw: Any) -> uvicorn.Config:
    try:
        import uvloop  # noqa: F401  (absent on Windows)

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    return uvicorn.Config(
        app,
        loop=loop,
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
        # Else uvicorn wraps the app in ProxyHeadersMiddleware: pure overhead for a fake.
        proxy_headers=False,
        # Backstop only: stalled requests already end on should_exit.
        timeout_graceful_shutdown=3,
        **kw,
    )


def serve(
    host: str = "127.0.0.1",
    port: int = 9100,
    latency_ms: float = 0.0,
    *,
    require_key: str | None = None,
) -> None:
    """Run the mock upstream in the foreground (``cognitude mock-upstream``)."""
    app = build_app(latency_ms=latency_ms, require_key=require_key)
    server = uvicorn.Server(_config(app, host=host, port=port))
    app.state.server = server
    server.run()


class MockUpstream:
    """The real server on a loopback port, run in a daemon thread (for tests)."""

    def __init__(
        self, *, latency_ms: float = 0.0, require_key: str | None = None, port: int = 0
    ) -> None:
        self.app = build_app(latency_ms=latency_ms, require_key=require_key)
        self.port = port
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("MockUpstream already started")
        # Binding ourselves (port 0 = kernel's choice) and handing the socket to uvicorn
        # avoids the find-a-free-port-then-bind race.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        # log_config=None: don't reconfigure the host process's (pytest's) logging.
        server = uvicorn.Server(_config(self.app, log_config=None))
        self.app.state.server = server
        # uvicorn only installs signal handlers on the main thread, so a thread is safe.
        thread = threading.Thread(
            target=server.run,
            kwargs={"sockets": [sock]},
            name=f"mock-upstream-{self.port}",
            daemon=True,
        )
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + 10.0
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                sock.close()
                raise RuntimeError("mock upstream failed to start")
            time.sleep(0.005)
        self.url = f"http://127.0.0.1:{self.port}"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:  # "started" means listening; one round trip proves it answers
            conn.request("GET", "/_mock/stats")
            conn.getresponse().read()
        finally:
            conn.close()

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout=10)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5)
        self._server = self._thread = None

    def stats(self) -> dict[str, Any]:
        return self.app.state.stats()

    def reset(self) -> None:
        self.app.state.reset()

    def fail(self, mode: str, count: int = 1) -> None:
        self.app.state.fail(mode, count)

    def configure(
        self, *, latency_ms: float | None = None, chunk_delay_ms: float | None = None
    ) -> None:
        self.app.state.configure(latency_ms=latency_ms, chunk_delay_ms=chunk_delay_ms)

    def __enter__(self) -> MockUpstream:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
