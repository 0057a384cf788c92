"""From a finished request to its usage record: tokens, cost, baseline cost, latencies.

Runs after the response is complete (never before a byte reaches the client) and hands the
record to ``UsageWriter.submit``, which never blocks. Token counts come from the upstream's
own ``usage`` when it sent one; otherwise (an upstream that ignored ``include_usage``, a
client that disconnected mid-stream) they are counted with the real tokenizer in
``ledger.tokens``, in a worker thread (``count_tokens``): a long answer takes
milliseconds to tokenize, which must not stall every other request on the event loop.

Decisions:
- Requests that never authenticated (401) are not recorded: they belong to no organization,
  and recording them would let anyone fill the ledger's disk.
- A cache hit costs nothing (``cost_micros = 0``); its ``baseline_cost_micros`` is what the
  requested model would have charged for the same tokens, which is the saving.
- Unknown models get ``cost_micros = NULL`` (the catalog logs each once), never a guess.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from time import perf_counter
from typing import Any, Protocol

import msgspec

from cognitude.ledger.pricing import PriceCatalog
from cognitude.ledger.prompt_facts import PromptFacts, prompt_facts
from cognitude.ledger.usage import UsageRecord, UsageWriter
from cognitude.routing.classifier import classify

log = logging.getLogger("cognitude.accounting")


class StreamSoFar(Protocol):
    """What the ledger reads of a stream the proxy passed through (``hotpath.sse``'s
    accumulator): the usage the upstream sent, if any, and the text received so far."""

    usage: dict[str, Any] | None

    def completion_tokens_text(self) -> str: ...


class _Usage(msgspec.Struct):
    usage: Any = None


# One msgspec decode checks the stored body and reads only its usage (0.8 µs for a
# completion; the rest is skipped, not built).
_USAGE = msgspec.json.Decoder(_Usage)


def usage_of(body: bytes) -> dict[str, Any] | None:
    """The top-level ``usage`` object of a JSON object, or None (never raises)."""
    try:
        usage = _USAGE.decode(body).usage
    except msgspec.DecodeError:
        return None
    return usage if isinstance(usage, dict) else None


_MAX_MEMO = 10_000  # cache keys remembered for their class and prompt facts (~3 MB)
_NO_FACTS = PromptFacts(None, None, None, None)


class RequestLog:
    """What the hot route learned about one request (filled as it goes)."""

    __slots__ = (
        "rid", "t0", "ts", "endpoint", "org_id", "key_id", "model", "model_used",
        "provider", "route", "stream", "cache_status", "status", "error_type", "gate_s",
        "upstream_s", "end_user", "doc", "response", "acc", "usage", "counted", "headers_sent",
        "stripped_usage", "attempts", "complexity", "baseline", "cache_key",
    )

    def __init__(self, rid: str, t0: float, endpoint: str) -> None:
        self.rid = rid
        self.t0 = t0
        self.ts = datetime.now(UTC)
        self.endpoint = endpoint
        self.org_id: str | None = None
        self.key_id: str | None = None
        self.model: str | None = None
        self.model_used: str | None = None
        self.provider: str | None = None
        self.route: str | None = None
        self.stream = False
        self.cache_status = b"BYPASS"
        self.status = 0
        self.error_type: str | None = None
        self.gate_s = 0.0
        self.upstream_s = 0.0
        self.end_user: str | None = None
        self.doc: dict[str, Any] | None = None
        self.response: bytes | None = None  # the stored body a hit sent
        self.acc: StreamSoFar | None = None  # a streamed miss, complete or not
        self.usage: dict[str, Any] | None = None  # a non-stream miss's parsed ``usage``
        self.counted: tuple[int, int] | None = None  # tokens counted off the loop
        # True from the moment the response's first message went out: an error after that
        # can no longer be a JSON error response (a stream ends with an error event instead).
        self.headers_sent = False
        # The proxy asked the upstream for this stream's usage on the client's behalf: the
        # usage chunk is left out of what the client receives.
        self.stripped_usage = False
        self.attempts = 0  # upstream calls made (retries and fallbacks included)
        self.complexity: str | None = None  # the class a smart plan chose by
        self.baseline: str | None = None  # the model the saving is measured against
        self.cache_key: str | None = None  # the response-cache key, when the cache is used


def _count(req: RequestLog) -> tuple[int, int]:
    """What was asked and what was received so far, with the real tokenizer (no upstream
    usage: an upstream that ignored include_usage, or a stream cut short)."""
    if req.acc is None or req.doc is None or not req.model:
        return 0, 0
    from cognitude.ledger import tokens

    messages = req.doc.get("messages")
    prompt = tokens.count_messages(req.model, messages if isinstance(messages, list) else [])
    return prompt, tokens.count_text(req.model, req.acc.completion_tokens_text())


def usage_of_counts(prompt: int, completion: int) -> dict[str, int]:
    """An OpenAI ``usage`` object for counted tokens (stored with a cached stream)."""
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class Accountant:
    """Turns a RequestLog into a UsageRecord and submits it; owned by the lifespan."""

    __slots__ = ("catalog", "writer", "requests", "default_class", "_classes", "_classify",
                 "_prompts")

    def __init__(self, catalog: PriceCatalog, writer: UsageWriter,
                 default_class: str = "medium", classify_all: bool = True) -> None:
        self.catalog = catalog
        self.writer = writer
        self.default_class = default_class
        self._classify = classify_all  # routing.classify_all
        # cache key → class: a hit's prompt is the one its miss classified (bounded).
        self._classes: dict[str, str] = {}
        self._prompts: dict[str, PromptFacts] = {}  # cache key → its prompt facts
        # (endpoint, status, cache status) → count, for /metrics.
        self.requests: dict[tuple[str, int, str], int] = {}

    @staticmethod
    def needs_count(req: RequestLog) -> bool:
        """A streamed miss without usage from the upstream: its tokens must be counted."""
        acc = req.acc
        return acc is not None and acc.usage is None and req.counted is None

    async def count_tokens(self, req: RequestLog) -> None:
        """Count a usage-less stream's tokens in a worker thread (``req.counted``)."""
        req.counted = await asyncio.to_thread(_count, req)

    def tokens(self, req: RequestLog) -> tuple[int, int]:
        usage = req.usage
        if usage is None:
            if req.response is not None:
                usage = usage_of(req.response)
            elif req.acc is not None:
                usage = req.acc.usage
        if usage is not None:
            return _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))
        if req.counted is not None:
            return req.counted
        if req.acc is not None:
            return _count(req)  # not counted off the loop (cancelled at shutdown): now
        return 0, 0

    def record(self, req: RequestLog) -> UsageRecord | None:
        if req.org_id is None:
            return None
        prompt, completion = self.tokens(req)
        used = req.model_used or req.model
        hit = req.cache_status == b"HIT"
        catalog = self.catalog
        # The baseline: routing.baseline_model (for smart-*, the premium model they save
        # against), else the model as asked; an alias (no price of its own) as its model.
        asked = req.baseline or req.model
        if asked != used and asked not in catalog:
            asked = used
        baseline = (catalog.cost_micros(asked, prompt, completion)
                    if asked and (prompt or completion) else 0)
        if hit:
            cost: int | None = 0
        elif used and (prompt or completion):
            # The price of the deployment that answered (its own, else the model's).
            cost = catalog.cost_micros(used, prompt, completion, req.provider)
        else:
            cost = 0
        total_ms = (perf_counter() - req.t0) * 1000
        upstream_ms = req.upstream_s * 1000
        facts = self._facts(req)
        # Positional, in column order: a 27-keyword call costs ~4x the positional one.
        return UsageRecord(
            req.rid,  # request_id
            req.ts,  # ts
            req.org_id,  # org_id
            req.key_id,  # key_id
            req.endpoint,  # endpoint
            req.model,  # model_requested
            used,  # model_used
            req.provider,  # provider
            req.route,  # route
            prompt,  # prompt_tokens
            completion,  # completion_tokens
            cost,  # cost_micros
            baseline,  # baseline_cost_micros
            req.cache_status.decode(),  # cache_status
            req.status,  # status_code
            req.error_type,  # error_type
            req.stream,  # stream
            total_ms,  # latency_ms
            upstream_ms,  # upstream_ms
            max(0.0, total_ms - upstream_ms),  # overhead_ms
            req.end_user,  # end_user
            req.attempts,  # attempts
            self._complexity(req),  # complexity
            *facts,  # prompt_hash, prefix_hash, prefix_tokens, max_tokens
        )

    def _facts(self, req: RequestLog) -> PromptFacts:
        """The prompt's hashes and sizes; a hit's are its miss's (remembered by cache key,
        like the class: hashing a long system prompt is the costly part)."""
        if req.doc is None:
            return _NO_FACTS
        key = req.cache_key
        if key is None:
            return prompt_facts(req.doc, None)
        known = self._prompts.get(key)
        if known is None:
            if len(self._prompts) >= _MAX_MEMO:
                self._prompts.clear()
            known = self._prompts[key] = prompt_facts(req.doc, key)
        return known

    def _complexity(self, req: RequestLog) -> str | None:
        """The class of a chat request that a model answered (a hit, or an upstream call):
        the plan's for a smart one, else classified here, after the response went out (the
        ledger needs it, the request does not; ~13 µs). A hit's prompt was classified when
        its miss was, in this process: remembered by cache key. Requests refused before
        any model saw them (429, 400) get none: no money was spent or saved on them."""
        if (req.complexity is not None or not self._classify or req.endpoint != "chat"
                or req.doc is None):
            return req.complexity
        if req.attempts == 0 and req.cache_status != b"HIT":
            return None
        key = req.cache_key
        if key is not None and (known := self._classes.get(key)) is not None:
            return known
        cls = classify(req.doc, self.default_class).cls
        if key is not None:
            if len(self._classes) >= _MAX_MEMO:
                self._classes.clear()  # rare; a forgotten entry costs one classification
            self._classes[key] = cls
        return cls

    def finish(self, req: RequestLog) -> None:
        key = (req.endpoint, req.status, req.cache_status.decode())
        self.requests[key] = self.requests.get(key, 0) + 1
        try:
            rec = self.record(req)
        except Exception:  # noqa: BLE001
            # Accounting must never turn a served request into an error; a bug here is
            # logged with its trace and the request is still answered.
            log.exception("could not build the usage record for %s", req.rid)
            return
        if rec is not None:
            self.writer.submit(rec)
