"""What the ledger notes about a request's prompt, for the analytics that find waste
(DESIGN §8, §12): a hash of the whole prompt, a hash and a size of its prefix, and the
``max_tokens`` it asked for. Computed after the response is sent, never stored as text.

- ``prompt_hash``: the response-cache digest of the request (``cache.cache_key.digest``:
  the fields that change the answer), so the same prompt paid for twice shows up as one
  hash twice, whether the cache was on, bypassed or expired.
- ``prefix_hash`` / ``prefix_tokens``: everything before the latest user message (the
  system prompt, earlier turns): the part a provider's prompt caching would serve, or a
  trimmed conversation would drop. xxh3_64 of its canonical JSON; tokens estimated at
  4 characters each (the ledger's real counts are for the whole prompt). None when the
  latest user message is the first message.
- ``max_tokens``: ``max_completion_tokens``, else ``max_tokens``, when a positive integer.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson
import xxhash

from cognitude.cache.cache_key import digest

_CHARS_PER_TOKEN = 4


class PromptFacts(NamedTuple):
    prompt_hash: str | None
    prefix_hash: str | None
    prefix_tokens: int | None
    max_tokens: int | None


def prompt_facts(doc: dict[str, Any], cache_key: str | None) -> PromptFacts:
    whole = cache_key.rsplit(":", 1)[-1] if cache_key is not None else digest(doc)
    prefix_hash = prefix_tokens = None
    messages = doc.get("messages")
    if isinstance(messages, list):
        last = _last_user(messages)
        if last > 0:
            head = messages[:last]
            prefix_hash = xxhash.xxh3_64_hexdigest(orjson.dumps(head,
                                                                option=orjson.OPT_SORT_KEYS))
            prefix_tokens = _chars(head) // _CHARS_PER_TOKEN
    limit = doc.get("max_completion_tokens")
    if limit is None:
        limit = doc.get("max_tokens")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        limit = None
    return PromptFacts(whole, prefix_hash, prefix_tokens, limit)


def _last_user(messages: list[Any]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if isinstance(m, dict) and m.get("role") == "user":
            return i
    return 0


def _chars(messages: list[Any]) -> int:
    n = 0
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            n += len(content)
        elif isinstance(content, list):
            n += sum(len(p["text"]) for p in content
                     if isinstance(p, dict) and isinstance(p.get("text"), str))
    return n
