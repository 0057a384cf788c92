"""Reading ``usage`` out of a response body: the tail fast path agrees with a full parse."""

from __future__ import annotations

import orjson
import pytest

from cognitude.accounting import _usage_of

USAGE = {"prompt_tokens": 15, "completion_tokens": 18, "total_tokens": 33,
         "prompt_tokens_details": {"cached_tokens": 0}}


def full_parse(body: bytes):
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    u = doc.get("usage") if isinstance(doc, dict) else None
    return u if isinstance(u, dict) else None


def completion(content: str, **extra: object) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}], **extra}


BODIES = [
    orjson.dumps(completion("hi", usage=USAGE)),  # usage last: the fast path
    orjson.dumps(completion("hi", usage=USAGE), option=orjson.OPT_INDENT_2) + b"\n",
    orjson.dumps({"usage": USAGE, **completion("usage first")}),  # full parse
    orjson.dumps(completion('the model said "usage": {"prompt_tokens": 999}}', usage=USAGE)),
    orjson.dumps(completion("no usage at all")),
    orjson.dumps(completion("nested", extra={"usage": {"prompt_tokens": 7}})),
    orjson.dumps({"x": {"usage": {"prompt_tokens": 7}}}),  # nested and last: no usage
    orjson.dumps({'x"usage': {"prompt_tokens": 7}}),  # a key ending in an escaped quote
    orjson.dumps({"data": [{"usage": {"prompt_tokens": 7}}]}),
    orjson.dumps(completion("null usage", usage=None)),
    orjson.dumps([{"usage": USAGE}]),  # not an object at the top
    b'{"choices": [], "usage": {"prompt_tokens": 3}',  # truncated
    b"not json at all",
    b"",
]


@pytest.mark.parametrize("body", BODIES)
def test_usage_matches_a_full_parse(body):
    assert _usage_of(body) == full_parse(body)


def test_a_long_completion_gives_the_same_usage():
    body = orjson.dumps(completion("word " * 5000, usage=USAGE))
    assert _usage_of(body) == USAGE
