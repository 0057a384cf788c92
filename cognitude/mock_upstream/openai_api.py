"""OpenAI's wire format: chat completions (JSON and SSE chunks), embeddings, the model list.

Chat answers ``n`` choices, each a tool call (``tools``) or text (the echo, shaped by
``response_format``); those two live in their own modules.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import math
import struct
import time
from typing import Any, NamedTuple

import orjson

from cognitude.mock_upstream import protocol, response_format, tools
from cognitude.mock_upstream.protocol import (
    WORD,
    Reply,
    Response,
    bad_limit,
    error,
    invalid_type,
    limit_words,
    missing_model,
    prompt_tokens,
    validate_messages,
    words,
)

MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-3.5-turbo", "gpt-4", "claude-3-5-sonnet", "claude-3-haiku")
EMBED_DIM = 8
_MODELS_CREATED = 1_700_000_000  # fixed so /v1/models is byte-for-byte stable
DONE = b"data: [DONE]\n\n"
MAX_N = 128  # the real API's cap on choices per request


class _Choice(NamedTuple):
    """One answer: text, or else a tool call."""

    content: str | None
    call: dict[str, Any] | None
    finish_reason: str


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _bad_n(req: dict[str, Any]) -> Reply | None:
    value = req.get("n")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        return invalid_type("n", "an integer", value)
    if value < 1:
        return error(
            400,
            f"Invalid 'n': integer below minimum value. Expected a value >= 1, but got {value} "
            "instead.",
            "n",
            "integer_below_min_value",
        )
    if value > MAX_N:
        return error(
            400,
            f"Invalid 'n': integer above maximum value. Expected a value <= {MAX_N}, but got "
            f"{value} instead.",
            "n",
            "integer_above_max_value",
        )
    return None


def _bad_stream_options(req: dict[str, Any]) -> Reply | None:
    """As the real API: ``stream_options`` only on a stream (null is as good as absent)."""
    opts = req.get("stream_options")
    if opts is None:
        return None
    if req.get("stream") is not True:
        return error(
            400,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
        )
    if not isinstance(opts, dict):
        return invalid_type("stream_options", "an object", opts)
    return None


def _choices(req: dict[str, Any], seq: int, filler: str | None) -> tuple[list[_Choice], int]:
    """Every choice's answer, and completion tokens summed over them."""
    limit = req.get("max_completion_tokens") or req.get("max_tokens")
    function = tools.to_call(req)
    arguments = tools.arguments(function) if function is not None else ""
    echo = protocol.echo_text(req["messages"])
    out: list[_Choice] = []
    total = 0
    for i in range(req.get("n") or 1):
        if function is not None:
            args, tokens, cut = limit_words(arguments, limit)
            call = {
                "id": f"call_mock_{seq}_{i}",
                "type": "function",
                "function": {"name": function["name"], "arguments": args},
            }
            out.append(_Choice(None, call, "length" if cut else "tool_calls"))
        else:
            if filler is not None:  # the "huge" failure: ignores max_tokens on purpose
                text, tokens, cut = filler, words(filler), False
            else:
                # Distinct texts per choice, so a proxy that mixes choices up is caught.
                mine = echo if i == 0 else f"{echo} #{i}"
                text, tokens, cut = limit_words(response_format.render(req, mine), limit)
            out.append(_Choice(text, None, "length" if cut else "stop"))
        total += tokens
    return out, total


def chat(
    req: Any, seq: int, stream: bool, *, usage_chunk: bool = True, filler: str | None = None
) -> Response:
    """``POST /v1/chat/completions``; ``seq`` (the request's number) makes ids unique.

    ``usage_chunk=False`` ignores ``stream_options.include_usage`` (the "no_usage" failure);
    ``filler`` replaces every choice's content (the "huge" failure).
    """
    failed = (
        validate_messages(req)
        or bad_limit(req, "max_tokens", "max_completion_tokens")
        or _bad_n(req)
        or _bad_stream_options(req)
        or tools.validate(req)
        or response_format.validate(req)
    )
    if failed:
        return failed
    choices, completion = _choices(req, seq, filler)
    prompt = prompt_tokens(req["messages"])
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    # "object" is overridden per shape; listing it here keeps the real API's key order.
    base = {
        "id": f"chatcmpl-mock-{seq}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req["model"],
        "system_fingerprint": "fp_mock",
    }
    if not stream:
        body = [
            {"index": i, "message": _message(c), "logprobs": None, "finish_reason": c.finish_reason}
            for i, c in enumerate(choices)
        ]
        return 200, {**base, "object": "chat.completion", "choices": body, "usage": usage}, ()

    opts = req.get("stream_options")
    include_usage = usage_chunk and isinstance(opts, dict) and opts.get("include_usage") is True
    # The real API puts "usage": null on every chunk once include_usage is on.
    tail = {"usage": None} if include_usage else {}

    def chunk(i: int, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _sse({**base, "object": "chat.completion.chunk", "choices": [choice], **tail})

    per_choice = [_deltas(choice) for choice in choices]
    # Round-robin, one choice per chunk, as the real API interleaves parallel choices.
    events = [
        chunk(i, *step)
        for steps in itertools.zip_longest(*per_choice)
        for i, step in enumerate(steps)
        if step is not None
    ]
    if include_usage:
        events.append(
            _sse({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        )
    events.append(DONE)
    return events


def _message(choice: _Choice) -> dict[str, Any]:
    if choice.call is None:
        return {"role": "assistant", "content": choice.content, "refusal": None}
    return {"role": "assistant", "content": None, "tool_calls": [choice.call], "refusal": None}


def _deltas(choice: _Choice) -> list[tuple[dict[str, Any], str | None]]:
    """One choice's stream as (delta, finish_reason) per chunk."""
    text, call, finish = choice
    if call is None:
        return [
            ({"role": "assistant", "content": ""}, None),
            *[({"content": piece}, None) for piece in WORD.findall(text or "")],
            ({}, finish),
        ]
    fn = call["function"]
    # The first delta names the call; later ones carry only "index" and argument text.
    head = {
        "index": 0,
        "id": call["id"],
        "type": "function",
        "function": {"name": fn["name"], "arguments": ""},
    }
    return [
        ({"role": "assistant", "content": None, "tool_calls": [head]}, None),
        *[
            ({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}, None)
            for piece in tools.fragments(fn["arguments"])
        ],
        ({}, finish),
    ]


def _embedding(item: Any, dim: int) -> list[float]:
    raw = hashlib.shake_256(orjson.dumps(item)).digest(4 * dim)
    vec = [x / 2_147_483_648.0 - 1.0 for x in struct.unpack(f"<{dim}I", raw)]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


def embeddings(req: Any) -> Reply:
    """``POST /v1/embeddings``: one deterministic unit vector per input."""
    if not isinstance(req, dict) or not isinstance(req.get("model"), str):
        return missing_model()
    raw = req.get("input")
    # A flat list of ints is ONE pre-tokenised input; anything else non-list is one input.
    if isinstance(raw, str) or (
        isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw)
    ):
        items: list[Any] = [raw]
    else:
        items = raw if isinstance(raw, list) else []
    if not items or not all(isinstance(i, str | list) and i for i in items):
        return error(400, "'input' must be a non-empty string or array.", "input", "invalid_value")
    dim = req.get("dimensions") or EMBED_DIM
    if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= 4096:
        return error(400, "Invalid 'dimensions'.", "dimensions", "invalid_value")
    b64 = req.get("encoding_format") == "base64"  # the openai SDK asks for this by default
    data = []
    for i, item in enumerate(items):
        vec = _embedding(item, dim)
        emb: Any = base64.b64encode(struct.pack(f"<{dim}f", *vec)).decode() if b64 else vec
        data.append({"object": "embedding", "index": i, "embedding": emb})
    tokens = max(sum(words(i) if isinstance(i, str) else len(i) for i in items), 1)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return 200, {"object": "list", "data": data, "model": req["model"], "usage": usage}, ()


def _model_obj(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": _MODELS_CREATED, "owned_by": "mock"}


def model(model_id: str) -> Reply:
    """``GET /v1/models/{id}``."""
    if model_id in MODELS:
        return 200, _model_obj(model_id), ()
    return error(404, f"The model '{model_id}' does not exist", "model", "model_not_found")


def models() -> Reply:
    """``GET /v1/models``."""
    return 200, {"object": "list", "data": [_model_obj(m) for m in MODELS]}, ()
