"""Reading ``usage`` out of a response body (msgspec, skipping the rest) agrees with a full
parse, whatever the body."""

from __future__ import annotations

import orjson
import pytest

from cognitude.ledger.accounting import usage_of

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
    assert usage_of(body) == full_parse(body)


def test_a_long_completion_gives_the_same_usage():
    body = orjson.dumps(completion("word " * 5000, usage=USAGE))
    assert usage_of(body) == USAGE


async def test_a_stream_without_usage_is_counted_off_the_event_loop(monkeypatch):
    """Tokenizing a long answer takes milliseconds: it must not stall every other request
    sharing the event loop, so it runs in a worker thread."""
    import threading
    from time import perf_counter

    from cognitude.hotpath.sse import StreamAccumulator
    from cognitude.ledger import tokens
    from cognitude.ledger.accounting import Accountant, RequestLog

    threads: list[threading.Thread] = []
    real = tokens.count_text

    def recording(model: str, text: str) -> int:
        threads.append(threading.current_thread())
        return real(model, text)

    monkeypatch.setattr(tokens, "count_text", recording)
    req = RequestLog("rid", perf_counter(), "chat")
    req.model = "gpt-4o-mini"
    req.doc = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    req.acc = StreamAccumulator()
    chunk = {"id": "c", "choices": [{"index": 0, "delta": {"content": "hello there"}}]}
    req.acc.feed(b"data: " + orjson.dumps(chunk) + b"\n\ndata: [DONE]\n\n")
    assert Accountant.needs_count(req)
    accountant = Accountant.__new__(Accountant)
    await accountant.count_tokens(req)
    assert threads and threads[0] is not threading.main_thread()
    assert req.counted == (accountant.tokens(req)) and req.counted[1] == 2
    assert not Accountant.needs_count(req)
