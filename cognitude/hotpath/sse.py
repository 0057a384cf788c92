"""Server-sent events for chat completions: replay a cached response, rebuild one from a stream.

A cache entry always holds a non-stream ``chat.completion`` body. A ``stream: true``
request that hits gets it replayed as ``chat.completion.chunk`` events; a streamed miss is
folded back into a ``chat.completion`` (``StreamAccumulator``) so the next request, stream
or not, can hit.

The accumulator also frames the pass-through: ``feed`` returns the bytes to forward, which
are always whole events. So a stream the upstream cuts mid-event never hands the client half
an event glued to our error event, and one event can be left out: the usage chunk the
proxy asked for on the client's behalf (``strip_usage``, see ``proxy``), so that every
cached stream carries its usage while the client sees the stream it asked for. The
``"usage": null`` that the upstream then puts on every other chunk is left as it is: every
client reads it as "no usage here" (the OpenAI SDK's ``chunk.usage`` is None either way),
and removing it would cost a copy of every chunk (~17,000 instructions per stream).
"""

from __future__ import annotations

from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def replay(completion: bytes, include_usage: bool) -> list[bytes]:
    """SSE events equivalent to a stored ``chat.completion`` body; ValueError when it is
    not one (an entry this version cannot replay is a miss, never a broken stream)."""
    doc = orjson.loads(completion)
    choices = doc.get("choices") if isinstance(doc, dict) else None
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise ValueError("not a chat.completion body")
    base = {
        "id": doc.get("id", ""),
        "object": "chat.completion.chunk",
        "created": doc.get("created", 0),
        "model": doc.get("model", ""),
    }
    if "system_fingerprint" in doc:
        base["system_fingerprint"] = doc["system_fingerprint"]
    events = []
    for choice in choices:
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
    a truncated or odd stream is never cached. ``overflow`` is set once more than
    ``max_pending`` bytes arrive without ending an event (an upstream that never sends a
    blank line would otherwise grow the buffer forever).
    """

    __slots__ = ("_buf", "_choices", "_meta", "usage", "complete", "_broken", "_strip",
                 "_max_pending", "overflow", "_drop", "_sep")

    def __init__(self, *, strip_usage: bool = False, max_pending: int = 1 << 25) -> None:
        self._buf = b""
        self._choices: dict[int, dict[str, Any]] = {}
        self._meta: dict[str, Any] = {}
        self.usage: dict[str, Any] | None = None
        self.complete = False
        self._broken = False
        self._strip = strip_usage
        self._max_pending = max_pending
        self.overflow = False
        self._drop = False  # set by _chunk for the event being parsed: leave it out
        self._sep = b""  # the event separator, from the first bytes: "\n\n" or CRLF's

    def feed(self, chunk: bytes) -> bytes:
        """Take the next bytes from upstream; return the whole events among them (and any
        left from before) to forward to the client."""
        buf = self._buf + chunk if self._buf else chunk
        if self._broken:
            self._buf = b""
            return buf  # no longer parsed: passed through as it comes
        sep = self._sep
        if not sep:
            # One stream, one framing: decided by the first line's ending.
            if b"\n" not in buf:
                self._buf = buf
                self.overflow = len(buf) > self._max_pending
                return b""
            sep = self._sep = b"\r\n\r\n" if b"\r\n" in buf else b"\n\n"
        # One pass with an offset: cutting the buffer after every event copied the rest of
        # it each time, quadratic when a chunk carries many events (a client reading slowly
        # lets aiohttp coalesce them).
        start = 0
        kept: list[bytes] | None = None
        while (end := buf.find(sep, start)) >= 0:
            self._event(buf[start:end])
            if self._drop:
                if kept is None:
                    kept = [buf[:start]]
                self._drop = False
            elif kept is not None:
                kept.append(buf[start:end + len(sep)])
            start = end + len(sep)
            if self._broken:
                kept = None  # forward the rest untouched
                start = len(buf)
                break
        self._buf = buf[start:]
        if len(self._buf) > self._max_pending:
            self.overflow = True
        return buf[:start] if kept is None else b"".join(kept)

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
            if isinstance(obj, dict):
                self._chunk(obj)

    def _chunk(self, obj: dict[str, Any]) -> None:
        for k in ("id", "created", "model", "system_fingerprint"):
            if k in obj and k not in self._meta:
                self._meta[k] = obj[k]
        choices = obj.get("choices") or ()
        if obj.get("usage"):
            self.usage = obj["usage"]
            if self._strip and not choices:
                self._drop = True  # the usage chunk only the proxy asked for
        for ch in choices:
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
