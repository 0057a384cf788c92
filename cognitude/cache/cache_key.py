"""The response-cache key and the stored value format (DESIGN §7).

Key: xxh3_128 over the canonical JSON (sorted keys) of every request field that can change
the response, namespaced per org and endpoint (``keys.cache_key``) so that a response is
never served to another organization. Unknown fields are included: a field we do not know
may well change the output, and a spurious miss is cheap while a wrong hit is not.

Value: one flag byte then the exact upstream response bytes, zstd-compressed above
``compress_min_bytes``, so a hit is served without re-serialising anything.
"""

from __future__ import annotations

import orjson
import xxhash
import zstandard

from cognitude.gate import keys

# Fields that never change the response, each with the reason it is left out of the key.
EXCLUDED_FIELDS: dict[str, str] = {
    "user": "an end-user id for abuse tracking; the same prompt gets the same answer",
    "stream": "a hit on a stream request is replayed as SSE from the same stored response",
    "stream_options": "only shapes the SSE framing (e.g. include_usage), not the content",
    "metadata": "free-form tags for the provider's dashboards",
    "store": "whether the provider keeps the completion; no effect on its content",
}

_EXCLUDED = frozenset(EXCLUDED_FIELDS)

FLAG_RAW = 0
FLAG_ZSTD = 1


def digest(body: dict) -> str:
    """xxh3_128 hex of the request's output-affecting fields."""
    if not _EXCLUDED.isdisjoint(body):
        body = {k: v for k, v in body.items() if k not in EXCLUDED_FIELDS}
    return xxhash.xxh3_128_hexdigest(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))


def redis_key(org_id: str, endpoint: str, body: dict) -> str:
    return keys.cache_key(org_id, endpoint, digest(body))


def is_deterministic(body: dict) -> bool:
    """Whether a request asks for repeatable output (``cache.only_deterministic``).

    temperature 0 is greedy decoding; a fixed ``seed`` is the provider's own promise of
    best-effort repeatability. Embeddings are deterministic by nature.
    """
    temp = body.get("temperature")
    return temp == 0 or body.get("seed") is not None


class ValueCodec:
    """Encodes cache values; holds its zstd contexts (created once, in the lifespan)."""

    __slots__ = ("_min", "_cctx", "_dctx")

    def __init__(self, compress_min_bytes: int) -> None:
        self._min = compress_min_bytes
        # Level 3: zstd's default; ~5x on JSON completions at a few µs per KB.
        self._cctx = zstandard.ZstdCompressor(level=3)
        self._dctx = zstandard.ZstdDecompressor()

    def encode(self, raw: bytes) -> bytes:
        if len(raw) >= self._min:
            return bytes((FLAG_ZSTD,)) + self._cctx.compress(raw)
        return bytes((FLAG_RAW,)) + raw

    def decode(self, value: bytes) -> bytes | None:
        """The stored response bytes, or None for a value this version cannot read."""
        if not value:
            return None
        flag = value[0]
        if flag == FLAG_RAW:
            return value[1:]
        if flag == FLAG_ZSTD:
            try:
                return self._dctx.decompress(value[1:])
            except zstandard.ZstdError:
                return None
        return None
