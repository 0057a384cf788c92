"""An org's cache policy and the request's cache directives, decided into (read, write, ttl).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """An org's effective cache settings (its overrides over ``[cache]``)."""

    enabled: bool
    ttl_s: int
    only_deterministic: bool
