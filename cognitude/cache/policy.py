"""An org's cache policy and a request's cache directives, decided into (read, write, ttl).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cognitude.cache.cache_key import is_deterministic


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """An org's effective cache settings (its overrides over ``[cache]``)."""

    enabled: bool
    ttl_s: int
    only_deterministic: bool


def decide(policy: CachePolicy, doc: dict[str, Any], endpoint: str,
           cache_control: bytes | None, ttl: int | None) -> tuple[bool, bool, int]:
    """(read, write, ttl) for one request: the org's policy, then its cache directives
    (``Cache-Control: no-cache`` skips the read, ``no-store`` the write; a TTL of 0 stores
    nothing)."""
    read = write = policy.enabled
    if read and policy.only_deterministic and endpoint == "chat" and not is_deterministic(doc):
        read = write = False  # embeddings are deterministic by nature
    if cache_control is not None:
        if b"no-store" in cache_control:
            write = False
        if b"no-cache" in cache_control:
            read = False
    if ttl is None:
        return read, write, policy.ttl_s
    return read, write and ttl > 0, ttl
