"""What a provider adapter is: the one interface dispatch speaks to every wire format.

The proxy's own language is OpenAI's: a request arrives as a chat completion (or embeddings)
body, and the client gets OpenAI JSON or OpenAI SSE chunks back, whatever answered. An adapter
turns that request into its provider's, and its provider's answer back, so nothing else in
the hot path knows a second dialect. ``providers.openai`` passes bytes through;
``providers.anthropic`` translates both ways.

Adapters hold no per-request state and no I/O; a stream's state lives in the
``StreamTranslator`` the adapter makes for it.
"""

from __future__ import annotations

from typing import Any, Protocol

from cognitude.errors import UpstreamError


class StreamTranslator(Protocol):
    """One upstream stream, rewritten into OpenAI's ``chat.completion.chunk`` events."""

    def feed(self, chunk: bytes) -> bytes:
        """Upstream bytes in; the whole OpenAI SSE events they complete out (``data: {…}``
        lines, ``data: [DONE]`` once the provider's stream ended), possibly ``b""``. A
        usage chunk is always produced before ``[DONE]`` (the accumulator drops it for a
        client that did not ask). Raises ``UpstreamError`` for an in-stream error event."""
        ...


class Adapter(Protocol):
    kind: str

    def headers(self, key: str) -> dict[str, str]:
        """The request headers for ``key`` ("" for a provider that needs none)."""
        ...

    def path(self, endpoint: str) -> str | None:
        """The path under ``base_url`` for ``endpoint`` ("chat", "embeddings"); None when
        this kind cannot serve it."""
        ...

    def upstream_body(self, doc: dict[str, Any], body: bytes, *, model: str,
                      chat_stream: bool, stream_usage: bool,
                      max_output: int) -> tuple[bytes, bool]:
        """The body to send for the client's ``doc`` (``body`` its bytes) to ``model``, and
        whether the stream's usage chunk must be left out for the client. ``max_output``:
        the model's output limit, for kinds that require ``max_tokens``. Raises
        ``InvalidRequest`` for a request this kind cannot express."""
        ...

    def answer(self, body: bytes, endpoint: str, provider: str
               ) -> tuple[bytes, dict[str, Any] | None]:
        """A 200's body as the OpenAI answer for ``endpoint``, and its OpenAI-shaped
        ``usage`` (None without one); ``UpstreamError`` (502 ``upstream_bad_response``)
        when the body is not a valid answer."""
        ...

    def stream(self, provider: str) -> StreamTranslator | None:
        """A translator for one SSE stream, or None when the provider's events are OpenAI's
        already (passed through as they come)."""
        ...

    def error(self, name: str, secret: bytes, status: int, body: bytes,
              retry_after: str | None) -> UpstreamError:
        """A non-200 as our error, in OpenAI's shape, ``secret`` scrubbed from it, with
        ``retryable`` and ``retry_after_s`` set for the attempt loop."""
        ...


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header's delay in seconds (the delta-seconds form; an HTTP date, which
    providers do not send, counts as absent)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def scrubbed(body: bytes, secret: bytes) -> bytes:
    """An upstream error body without the key the request carried (401 messages quote it)."""
    return body.replace(secret, b"[redacted]") if secret and secret in body else body


def redirected(name: str, status: int) -> UpstreamError:
    """A 3xx: never followed (a tenant's base_url must not bounce the proxy to an internal
    address), and not transient either."""
    return UpstreamError(f"Upstream provider `{name}` answered with a redirect (HTTP "
                         f"{status}); upstream redirects are never followed.",
                         code="upstream_redirect", retryable=False)


def retryable_status(status: int) -> bool:
    """Whether an upstream status is transient: the next attempt may well succeed."""
    return status == 408 or status == 429 or 500 <= status <= 599
