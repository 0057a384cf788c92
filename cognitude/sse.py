"""Server-sent events for chat completions: replay a cached response, rebuild one from a stream.

A cache entry always holds a non-stream ``chat.completion`` body. A ``stream: true``
request that hits gets it replayed as ``chat.completion.chunk`` events; a streamed miss is
folded back into a ``chat.completion`` (``StreamAccumulator``) so the next request, stream
or not, can hit.
"""

from __future__ import annotations

from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def replay(completion: bytes, include_usage: bool) -> list[bytes]:
    """SSE events equivalent to a stored ``chat.completion`` body."""
    doc = orjson.loads(completion)
    base = {
        "id": doc.get("id", ""),
        "object": "chat.completion.chunk",
        "created": doc.get("created", 0),
        "model": doc.get("model", ""),
    }
    if "system_fingerprint" in doc:
        base["system_fingerprint"] = doc["system_fingerprint"]
    events = []
    for choice in doc.get("choices", ()):
        idx = choice.get("index", 0)
        msg = choice.get("message") or {}
        delta: dict[str, Any] = {"role": msg.get("role", "assistant"), "content": ""}
        events.append(_event({**base, "choices": [
            {"index": idx, "delta": delta, "finish_reason": None}]}))
        if msg.get("content"):
            events.append(_event({**base, "choices": [
                {"index": idx, "delta": {"content": msg["content"]}, "finish_reason": None}]}))
        if msg.get("tool_calls"):
            calls = [{"index": i, **tc} for i, tc in enumerate(msg["tool_calls"])]
            events.append(_event({**base, "choices": [
                {"index": idx, "delta": {"tool_calls": calls}, "finish_reason": None}]}))
        events.append(_event({**base, "choices": [
            {"index": idx, "delta": {}, "finish_reason": choice.get("finish_reason", "stop")}]}))
    if include_usage and doc.get("usage") is not None:
        events.append(_event({**base, "choices": [], "usage": doc["usage"]}))
    events.append(DONE)
    return events


class StreamAccumulator:
    """Feeds on raw SSE bytes as they pass through; rebuilds the full completion at the end.

    ``complete`` is True only when the stream ended with ``[DONE]`` and every event parsed:
    a truncated or odd stream is never cached.
    """

    __slots__ = ("_buf", "_choices", "_meta", "usage", "complete", "_broken")

    def __init__(self) -> None:
        self._buf = b""
        self._choices: dict[int, dict[str, Any]] = {}
        self._meta: dict[str, Any] = {}
        self.usage: dict[str, Any] | None = None
        self.complete = False
        self._broken = False

    def feed(self, chunk: bytes) -> None:
        if self._broken:
            return
        buf = self._buf + chunk if self._buf else chunk
        # One pass with an offset: cutting the buffer after every event copied the rest of
        # it each time, quadratic when a chunk carries many events (a client reading slowly
        # lets aiohttp coalesce them).
        start = 0
        while (end := buf.find(b"\n\n", start)) >= 0:
            self._event(buf[start:end])
            start = end + 2
        self._buf = buf[start:]

    def _event(self, event: bytes) -> None:
        for line in event.split(b"\n"):
            line = line.rstrip(b"\r")
            if not line.startswith(b"data:"):
                continue  # comments, event: and id: lines
            data = line[5:].strip()
            if data == b"[DONE]":
                self.complete = True
                return
            try:
                obj = orjson.loads(data)
            except orjson.JSONDecodeError:
                self._broken = True
                return
            self._chunk(obj)

    def _chunk(self, obj: dict[str, Any]) -> None:
        for k in ("id", "created", "model", "system_fingerprint"):
            if k in obj and k not in self._meta:
                self._meta[k] = obj[k]
        if obj.get("usage"):
            self.usage = obj["usage"]
        for ch in obj.get("choices") or ():
            idx = ch.get("index", 0)
            acc = self._choices.setdefault(
                idx, {"role": "assistant", "content": [], "tool_calls": {}, "finish": None}
            )
            delta = ch.get("delta") or {}
            if delta.get("role"):
                acc["role"] = delta["role"]
            if delta.get("content"):
                acc["content"].append(delta["content"])
            for tc in delta.get("tool_calls") or ():
                slot = acc["tool_calls"].setdefault(
                    tc.get("index", 0),
                    {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                )
                if tc.get("id"):
                    slot["id"] = tc["id"]
                fn = tc.get("function") or {}
                slot["function"]["name"] += fn.get("name") or ""
                slot["function"]["arguments"] += fn.get("arguments") or ""
            if ch.get("finish_reason"):
                acc["finish"] = ch["finish_reason"]

    @property
    def cacheable(self) -> bool:
        return self.complete and not self._broken and bool(self._choices)

    def completion_tokens_text(self) -> str:
        """All generated text so far (for token counting when the upstream sent no usage)."""
        return "".join("".join(c["content"]) for c in self._choices.values())

    def completion(self) -> bytes:
        """The equivalent non-stream ``chat.completion`` body."""
        choices = []
        for idx in sorted(self._choices):
            acc = self._choices[idx]
            msg: dict[str, Any] = {"role": acc["role"], "content": "".join(acc["content"]) or None}
            if acc["tool_calls"]:
                msg["tool_calls"] = [acc["tool_calls"][i] for i in sorted(acc["tool_calls"])]
            choices.append({"index": idx, "message": msg, "finish_reason": acc["finish"]})
        doc: dict[str, Any] = {
            "id": self._meta.get("id", ""),
            "object": "chat.completion",
            "created": self._meta.get("created", 0),
            "model": self._meta.get("model", ""),
            "choices": choices,
        }
        if "system_fingerprint" in self._meta:
            doc["system_fingerprint"] = self._meta["system_fingerprint"]
        if self.usage is not None:
            doc["usage"] = self.usage
        return orjson.dumps(doc)
