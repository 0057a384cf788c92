"""OpenAI's wire format: chat completions (JSON and SSE chunks), embeddings, the model list."""

from __future__ import annotations

import base64
import hashlib
import math
import struct
import time
from typing import Any

import orjson

from .protocol import (
    WORD,
    Reply,
    Response,
    bad_limit,
    echo_reply,
    error,
    missing_model,
    prompt_tokens,
    validate_messages,
    words,
)

MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-3.5-turbo", "gpt-4", "claude-3-5-sonnet", "claude-3-haiku")
EMBED_DIM = 8
_MODELS_CREATED = 1_700_000_000  # fixed so /v1/models is byte-for-byte stable
DONE = b"data: [DONE]\n\n"


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def chat(req: Any, n: int, stream: bool) -> Response:
    """``POST /v1/chat/completions``; ``n`` makes the response id unique."""
    failed = validate_messages(req) or bad_limit(req, "max_tokens", "max_completion_tokens")
    if failed:
        return failed
    limit = req.get("max_completion_tokens") or req.get("max_tokens")
    content, completion, truncated = echo_reply(req["messages"], limit)
    prompt = prompt_tokens(req["messages"])
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
        return 200, {**base, "object": "chat.completion", "choices": [choice], "usage": usage}, ()

    opts = req.get("stream_options")
    include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
    # The real API puts "usage": null on every chunk once include_usage is on.
    tail = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _sse({**base, "object": "chat.completion.chunk", "choices": [choice], **tail})

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": piece}) for piece in WORD.findall(content)]
    events.append(chunk({}, finish))
    if include_usage:
        events.append(
            _sse({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        )
    events.append(DONE)
    return events


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
