"""Injected failures: what each mode in ``state.FAIL_MODES`` answers instead of the handler.

Every mode applies to any API path unless noted; on ``/v1/messages`` every error is in
Anthropic's envelope ``{"type": "error", "error": {"type", "message"}}``:

* ``429`` / ``500`` / ``400``: that error at once, 429 with ``retry-after: 1``. OpenAI's
  types ``requests`` / ``server_error`` / ``invalid_request_error``; on ``/v1/messages``
  ``rate_limit_error`` / ``api_error`` / ``invalid_request_error``.
* ``529``: on ``/v1/messages``, Anthropic's overload: status 529, ``{"type": "error",
  "error": {"type": "overloaded_error", "message": "Overloaded"}}``. OpenAI has no 529; on
  its paths this is the 503 it answers when overloaded (``server_error``, "The server is
  overloaded or not ready yet."), so a proxy's overload handling is tested per dialect.
* ``stream_error`` (stream ``/v1/messages`` requests): the 200 stream begins --
  ``message_start``, ``content_block_start``, ``ping``, the first delta -- then ``event:
  error`` with the overloaded_error data above, and the body ends (no ``message_stop``):
  what the real API sends when it is overloaded mid-answer.
* ``timeout``: no response for up to 60 s (ends early on disconnect or shutdown), then the
  normal answer.
* ``drop``: non-stream, the connection is closed before any response; stream, after the
  first two events (chat: the role chunk and a word; messages: ``message_start`` and
  ``content_block_start``), without the terminating chunk.
* ``redirect``: ``302`` with ``Location: <redirect_location>`` and an empty body.
* ``not_json``: ``200``, ``content-type: application/json``, an HTML body.
* ``no_usage`` (stream chat completions): the normal stream, ignoring
  ``stream_options.include_usage`` -- no usage chunk, no ``"usage": null`` fields.
* ``trickle`` (stream requests): the 200 SSE headers, then one ``b"x"`` (never a newline,
  so never a complete event) every ``chunk_delay_ms`` (10 ms when 0), until the client
  disconnects, the server stops or 60 s pass; then the body ends.
* ``stall_stream`` (stream requests): the first two events, then silence (the connection
  kept open) until disconnect, shutdown or 60 s; then the body ends, without ``[DONE]``
  (or ``message_stop``).
* ``huge`` (non-stream chat completions): a normal 200 completion whose content is
  ``huge_bytes`` characters of words (max_tokens ignored).

A mode on a request it does not apply to answers the injected ``500`` (its message names
the mode). The modes that shape the normal answer (``drop`` and ``stall_stream`` on a
stream, ``no_usage``, ``huge``, ``stream_error``) need a valid request: an invalid one gets
its 400 instead. Either way the queued failure is used up.
"""

from __future__ import annotations

from cognitude.mock_upstream import anthropic_api
from cognitude.mock_upstream.asgi import (
    Receive,
    Send,
    drop,
    end_body,
    hold_open,
    send_events,
    send_raw,
    start_events,
)
from cognitude.mock_upstream.protocol import Reply, error
from cognitude.mock_upstream.routes import CHAT, MESSAGES, Call, handle, respond
from cognitude.mock_upstream.state import MockState

_RETRY_AFTER = ((b"retry-after", b"1"),)
IMMEDIATE: dict[str, Reply] = {
    "429": error(
        429,
        "Rate limit reached for requests (mock).",
        None,
        "rate_limit_exceeded",
        kind="requests",
        headers=_RETRY_AFTER,
    ),
    "500": error(
        500,
        "The server had an error while processing your request. Sorry about that!",
        kind="server_error",
    ),
    "400": error(400, "Invalid 'messages': injected failure (mock).", "messages", "invalid_value"),
    "529": error(503, "The server is overloaded or not ready yet.", kind="server_error"),
}
# The same modes in Anthropic's words (``routes.respond`` re-shapes the envelope by status).
ANTHROPIC_IMMEDIATE: dict[str, Reply] = {
    "429": error(
        429, "Number of requests has exceeded your rate limit (mock).", headers=_RETRY_AFTER
    ),
    "500": error(500, "Internal server error"),
    "400": error(400, "messages: injected failure (mock)"),
    "529": error(529, "Overloaded"),
}
NOT_JSON_BODY = b"<html><body>upstream hiccup</body></html>"
_CT_JSON = ((b"content-type", b"application/json"),)
_EVENTS_BEFORE_CUT = 2  # "drop" and "stall_stream": the client has seen a stream begin
# "stream_error": message_start, content_block_start, ping and one delta -- the client has
# already seen part of the answer, so a proxy cannot pass it off as a clean failure.
_EVENTS_BEFORE_ERROR = 4
_HUGE_WORD = "huge "  # words, so the word-count usage stays meaningful

# Which requests each shaping mode applies to (the rest answer everything).
_STREAM_ONLY = frozenset({"trickle", "stall_stream"})


def _not_applicable(mode: str, what: str) -> Reply:
    status, payload, headers = IMMEDIATE["500"]
    message = f"{payload['error']['message']} (mock: '{mode}' applies to {what} only)"
    return status, {"error": {**payload["error"], "message": message}}, headers


def _applies(mode: str, call: Call) -> Reply | None:
    """None when ``mode`` can shape this request, else the 500 that stands in for it."""
    if mode in _STREAM_ONLY and not call.stream:
        return _not_applicable(mode, "stream requests")
    if mode == "stream_error" and not (call.path == MESSAGES and call.stream):
        return _not_applicable(mode, "stream /v1/messages requests")
    if mode == "no_usage" and not (call.path == CHAT and call.stream):
        return _not_applicable(mode, "stream chat completions")
    if mode == "huge" and not (call.path == CHAT and not call.stream):
        return _not_applicable(mode, "non-stream chat completions")
    return None


def _immediate(mode: str, call: Call) -> Reply | None:
    table = ANTHROPIC_IMMEDIATE if call.path == MESSAGES else IMMEDIATE
    return table.get(mode)


async def inject(mode: str, call: Call, state: MockState, receive: Receive, send: Send) -> None:
    """Answer ``call`` as failure ``mode`` dictates (the mode is already dequeued)."""
    refused = _immediate(mode, call) or _applies(mode, call)
    if refused is not None:
        return await respond(call, refused, state, send)
    if mode == "timeout":
        if await hold_open(state, receive):
            await respond(call, handle(call), state, send)
        return  # else the client gave up; nobody to answer
    if mode == "redirect":
        location = (b"location", state.redirect_location.encode("ascii"))
        return await send_raw(send, 302, b"", (location,))
    if mode == "not_json":
        return await send_raw(send, 200, NOT_JSON_BODY, _CT_JSON)
    if mode == "trickle":
        return await _trickle(state, receive, send)
    if mode == "drop" and not call.stream:
        return await drop(receive)
    if mode == "huge":
        filler = (_HUGE_WORD * (state.huge_bytes // len(_HUGE_WORD) + 1))[: state.huge_bytes]
        return await respond(call, handle(call, filler=filler), state, send)
    result = handle(call, usage_chunk=mode != "no_usage")
    if isinstance(result, tuple) or mode == "no_usage":
        return await respond(call, result, state, send)
    if mode == "stream_error":
        events = [*result[:_EVENTS_BEFORE_ERROR], anthropic_api.stream_error()]
        return await send_events(events, state, send)
    # "drop" and "stall_stream" on a stream: the stream begins, then breaks.
    await send_events(result, state, send, stop_at=_EVENTS_BEFORE_CUT)
    if mode == "drop":
        await drop(receive)
    elif await hold_open(state, receive):
        await end_body(send)


async def _trickle(state: MockState, receive: Receive, send: Send) -> None:
    await start_events(send)

    async def one_byte() -> None:
        await send({"type": "http.response.body", "body": b"x", "more_body": True})

    if await hold_open(state, receive, one_byte):
        await end_body(send)
