"""Every Redis key Cognitude writes, named in one place.

All keys of one organization carry the hash tag ``{org:<id>}`` so that a single
``EVALSHA`` touching an org's limiter windows and its cache entry stays on one shard of
a Redis/Valkey Cluster (DESIGN §6). Limiter keys have no TTL (they must survive
``volatile-*`` eviction); cache keys always have one.
"""

from __future__ import annotations

PREFIX = "cog"

# Pub/sub channel for cross-replica key-cache invalidation (identity.invalidation).
INVALIDATION_CHANNEL = f"{PREFIX}:invalidate"
# Pub/sub channel for deployment cooldowns (providers.cooldowns): no key, no per-request cost.
COOLDOWN_CHANNEL = f"{PREFIX}:cooldown"

# Sliding-window limiter hashes, one per window (minute / hour / day).
WINDOWS = ("m", "h", "d")


def org_tag(org_id: str) -> str:
    return f"{PREFIX}:{{org:{org_id}}}"


def limiter_keys(org_id: str) -> tuple[str, str, str]:
    tag = org_tag(org_id)
    return (f"{tag}:rl:m", f"{tag}:rl:h", f"{tag}:rl:d")


def key_limiter_keys(org_id: str, key_id: str) -> tuple[str, str, str]:
    """One API key's own minute / hour / day windows, under its org's hash tag (same slot)."""
    tag = org_tag(org_id)
    return (f"{tag}:rl:k:{key_id}:m", f"{tag}:rl:k:{key_id}:h", f"{tag}:rl:k:{key_id}:d")


def epoch_key(org_id: str) -> str:
    """When this Redis dataset first admitted the org (set by gate.lua, no TTL)."""
    return f"{org_tag(org_id)}:epoch"


def cache_key(org_id: str, endpoint: str, digest_hex: str) -> str:
    """``endpoint`` is a short name such as ``chat`` or ``embeddings``."""
    return f"{org_tag(org_id)}:c:{endpoint}:{digest_hex}"


# Abuse throttles of the unauthenticated account endpoints (cognitude.management.throttle):
# plain counters, one per client address or email per hour. Unlike the limiter hashes they
# always carry a TTL (set in the same MULTI that creates them), so they expire on their own.


def register_throttle_key(address: str) -> str:
    """``POST /auth/register`` attempts from one client address in the current hour."""
    return f"{PREFIX}:throttle:register:{address}"


def login_throttle_key(address: str) -> str:
    """``POST /auth/login`` attempts from one client address in the current hour."""
    return f"{PREFIX}:throttle:login:{address}"


def login_failures_key(email_sha256: str) -> str:
    """Failed logins for one email in the current hour (by digest: no addresses in key names)."""
    return f"{PREFIX}:throttle:login-failed:{email_sha256}"
