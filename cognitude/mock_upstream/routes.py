"""Which handler answers which API path, and sending its ``Response``.

A request reaches here as a ``Call`` (parsed once by the dispatcher); ``handle`` turns it
into a ``Reply`` or SSE events, ``respond`` puts that on the wire in the path's dialect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cognitude.mock_upstream import anthropic_api, openai_api
from cognitude.mock_upstream.anthropic_validate import header_refusal
from cognitude.mock_upstream.asgi import Send, send_events, send_json
from cognitude.mock_upstream.protocol import Reply, Response, error
from cognitude.mock_upstream.state import MockState

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
STREAM_PATHS = frozenset({CHAT, MESSAGES})
API_PATHS = {CHAT: "POST", "/v1/embeddings": "POST", MESSAGES: "POST", "/v1/models": "GET"}
MODEL_PREFIX = "/v1/models/"

_BAD_JSON = error(
    400,
    "We could not parse the JSON body of your request. The API expects a JSON payload.",
)


@dataclass(frozen=True, slots=True)
class Call:
    """One API request as the handlers see it; ``seq`` is its sequence number (for ids)."""

    method: str
    path: str
    headers: dict[str, str]
    req: Any  # the parsed JSON body (None when empty or unparsable)
    bad_json: bool
    seq: int

    @property
    def model_id(self) -> str | None:
        return self.path[len(MODEL_PREFIX) :] if self.path.startswith(MODEL_PREFIX) else None

    @property
    def stream(self) -> bool:
        return (
            self.path in STREAM_PATHS
            and isinstance(self.req, dict)
            and self.req.get("stream") is True
        )


def refusal(call: Call, state: MockState) -> Reply | None:
    """404 / 405 / 401 (and Anthropic's header 400s), checked before any injected failure
    is consumed. ``/v1/messages`` takes the key only as ``x-api-key``, like the real API."""
    method, path, headers, key = call.method, call.path, call.headers, state.require_key
    expected = "GET" if call.model_id else API_PATHS.get(path)
    if expected is None:
        return error(404, f"Invalid URL ({method} {path})")
    if method != expected:
        return error(405, f"Method not allowed ({method} {path})")
    if path == MESSAGES:
        return header_refusal(headers, key, state.require_anthropic_version)
    if key is not None and key not in (
        headers.get("authorization", "").removeprefix("Bearer "),
        headers.get("x-api-key"),
    ):
        return error(401, "Incorrect API key provided.", None, "invalid_api_key")
    return None


def handle(call: Call, *, usage_chunk: bool = True, filler: str | None = None) -> Response:
    """The normal answer (``usage_chunk`` / ``filler``: see ``openai_api.chat``)."""
    if call.bad_json:
        return _BAD_JSON
    if call.path == CHAT:
        return openai_api.chat(
            call.req, call.seq, call.stream, usage_chunk=usage_chunk, filler=filler
        )
    if call.path == MESSAGES:
        version = call.headers.get("anthropic-version")
        return anthropic_api.messages(call.req, call.seq, call.stream, version=version)
    if call.path == "/v1/embeddings":
        return openai_api.embeddings(call.req)
    model_id = call.model_id
    if model_id is not None:
        return openai_api.model(model_id)
    return openai_api.models()


async def respond(call: Call, result: Response, state: MockState, send: Send) -> None:
    if isinstance(result, tuple):  # a Reply
        if result[0] >= 400 and call.path == MESSAGES:
            result = anthropic_api.as_anthropic(result)
        await send_json(send, *result)
    else:
        await send_events(result, state, send)
