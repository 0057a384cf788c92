"""The bundled fake LLM upstream: OpenAI (and minimal Anthropic) wire format over real HTTP.

Tests, demos and benchmarks all use this one fake. Benchmarks compare "direct to mock" with
"through the proxy", so the mock's own cost must be tiny: it is a raw ASGI callable (no
routing framework, no middleware), serialises with orjson and runs under uvicorn with
uvloop + httptools and no access log.

Determinism (so tests can check what the proxy forwarded):

* chat reply = ``"mock reply to: " + <last user message text>[:200]``;
* token counts are whitespace-split words (min 1): prompt tokens over every message's text,
  completion tokens over the reply. ``max_tokens`` / ``max_completion_tokens`` truncate the
  reply to that many words and then ``finish_reason`` is ``"length"``, as the real API does;
* embeddings are unit vectors derived from a SHAKE-256 hash of each input (8 floats unless
  ``dimensions`` is given).

Control plane (tests only), under ``/_mock/``: ``GET stats``, ``POST reset``, ``POST fail``
(``{"mode": "429"|"500"|"400"|"timeout"|"drop", "count": n}``, queued FIFO) and
``GET|POST config`` (``{"latency_ms", "chunk_delay_ms"}``).

Layout: ``state`` (counters, failure queue, config), ``protocol`` (what both dialects
share: error envelope, validation, the echo reply), ``openai_api`` and ``anthropic_api``
(the two wire formats), ``asgi`` (raw ASGI plumbing), ``app`` (dispatcher, failure
injection, control plane) and ``server`` (uvicorn: ``serve()`` and ``MockUpstream``).
"""

from __future__ import annotations

from .app import MockApp, build_app
from .openai_api import MODELS
from .server import MockUpstream, serve
from .state import FAIL_MODES, MockState

__all__ = ["FAIL_MODES", "MODELS", "MockApp", "MockState", "MockUpstream", "build_app", "serve"]
