"""What speaking Anthropic costs per request: the adapters' work, in-process, per call.

    .venv/bin/python bench/translation.py [--rounds 20000]

A miss through an ``anthropic`` provider does what a miss through an ``openai`` one does
(gate, upstream call, relay, ledger: ``instructions.py``) plus the translation measured here:
the request rewritten as a Messages body, the answer rewritten as a chat completion, and for
a stream every event rewritten as a chunk. The OpenAI adapter's own calls (a pass-through and
one validating decode) are timed beside them for scale. Medians of ``--rounds`` calls after a
warm-up, on this machine's clock: compare runs of one day, not across days.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import orjson

from cognitude.providers.anthropic import ANTHROPIC
from cognitude.providers.openai import OPENAI

REQUEST = {
    "model": "claude-3-5-haiku",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
        {"role": "user", "content": "What is the capital of France? Answer in one word."},
    ],
    "temperature": 0.2,
    "max_tokens": 64,
}
MESSAGE = orjson.dumps({
    "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-3-5-haiku",
    "content": [{"type": "text", "text": "Paris is the capital of France."}],
    "stop_reason": "end_turn", "stop_sequence": None,
    "usage": {"input_tokens": 25, "output_tokens": 8, "cache_read_input_tokens": 0,
              "cache_creation_input_tokens": 0},
})
COMPLETION = orjson.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant",
                                         "content": "Paris is the capital of France."},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 25, "completion_tokens": 8, "total_tokens": 33},
})


def _event(name: str, data: dict[str, object]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


WORDS = "Paris is the capital of France, and its largest city by far.".split()
STREAM = b"".join([
    _event("message_start", {"type": "message_start", "message": {
        "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-3-5-haiku",
        "content": [], "stop_reason": None, "usage": {"input_tokens": 25, "output_tokens": 1}}}),
    _event("content_block_start", {"type": "content_block_start", "index": 0,
                                   "content_block": {"type": "text", "text": ""}}),
    _event("ping", {"type": "ping"}),
    *(_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "text_delta", "text": w + " "}})
      for w in WORDS),
    _event("content_block_stop", {"type": "content_block_stop", "index": 0}),
    _event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                             "usage": {"output_tokens": len(WORDS)}}),
    _event("message_stop", {"type": "message_stop"}),
])
EVENTS = STREAM.count(b"\n\n")


def median_us(fn: Callable[[], object], rounds: int) -> float:
    for _ in range(min(rounds, 1000)):
        fn()
    samples = []
    batch = 50
    for _ in range(max(1, rounds // batch)):
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        samples.append((time.perf_counter() - t0) / batch)
    return statistics.median(samples) * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=20000)
    rounds = p.parse_args().rounds
    body = orjson.dumps(REQUEST)
    rows = [
        ("openai: request (pass-through)", median_us(lambda: OPENAI.upstream_body(
            REQUEST, body, model="claude-3-5-haiku", chat_stream=False, stream_usage=True),
            rounds)),
        ("openai: answer (validating decode)", median_us(
            lambda: OPENAI.answer(COMPLETION, "chat", "p"), rounds)),
        ("anthropic: request → Messages", median_us(lambda: ANTHROPIC.upstream_body(
            REQUEST, body, model="claude-3-5-haiku", chat_stream=False, stream_usage=True,
            max_output=8192), rounds)),
        ("anthropic: answer → chat.completion", median_us(
            lambda: ANTHROPIC.answer(MESSAGE, "chat", "p"), rounds)),
        (f"anthropic: a {EVENTS}-event stream → chunks", median_us(
            lambda: ANTHROPIC.stream("p").feed(STREAM), max(1, rounds // 10))),
    ]
    print("| adapter call | median µs |\n|---|---|")
    for name, us in rows:
        print(f"| {name} | {us:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
