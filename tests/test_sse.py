"""StreamAccumulator and replay: a streamed completion folds back into the same body, however
the bytes are cut into chunks."""

from __future__ import annotations

import orjson
import pytest

from cognitude.hotpath.sse import DONE, StreamAccumulator, replay


def events(words: int, usage: bool = True) -> list[bytes]:
    base = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 7,
            "model": "gpt-4o-mini"}
    out = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                 "finish_reason": None}]}]
    out += [{**base, "choices": [{"index": 0, "delta": {"content": f"w{i} "},
                                  "finish_reason": None}]} for i in range(words)]
    out.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if usage:
        out.append({**base, "choices": [], "usage": {"prompt_tokens": 3,
                                                      "completion_tokens": words}})
    return [b"data: " + orjson.dumps(e) + b"\n\n" for e in out] + [DONE]


def fold(stream: bytes, cut: int) -> StreamAccumulator:
    acc = StreamAccumulator()
    for i in range(0, len(stream), cut):
        acc.feed(stream[i:i + cut])
    return acc


@pytest.mark.parametrize("cut", [1, 7, 64, 1_000_000])
def test_the_same_completion_whatever_the_chunking(cut):
    stream = b"".join(events(50))
    acc = fold(stream, cut)
    assert acc.cacheable and acc.usage == {"prompt_tokens": 3, "completion_tokens": 50}
    doc = orjson.loads(acc.completion())
    assert doc["choices"][0]["message"]["content"] == "".join(f"w{i} " for i in range(50))
    assert doc["choices"][0]["finish_reason"] == "stop" and doc["id"] == "chatcmpl-s"


def test_many_events_in_one_chunk_all_fold():
    # 20,000 events in one 2 MB chunk (the old per-event buffer cut copied ~20 GB for this:
    # 0.7 s; one pass with an offset takes a few ms).
    acc = fold(b"".join(events(20_000)), 10**9)
    assert acc.cacheable
    assert len(orjson.loads(acc.completion())["choices"][0]["message"]["content"]) > 100_000


def test_a_truncated_or_broken_stream_is_not_cacheable():
    stream = events(5)
    assert not fold(b"".join(stream[:-1]), 13).cacheable  # no [DONE]
    broken = [*stream[:2], b"data: {not json\n\n", *stream[2:]]
    assert not fold(b"".join(broken), 13).cacheable


def test_replay_of_the_folded_completion_round_trips():
    acc = fold(b"".join(events(5)), 9)
    again = fold(b"".join(replay(acc.completion(), include_usage=True)), 11)
    assert again.cacheable
    assert orjson.loads(again.completion()) == orjson.loads(acc.completion())
