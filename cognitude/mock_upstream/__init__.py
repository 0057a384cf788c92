"""The bundled fake LLM upstream: OpenAI and Anthropic wire formats over real HTTP.

Tests, demos and benchmarks all use this one fake. Benchmarks compare "direct to mock" with
"through the proxy", so the mock's own cost must be tiny: it is a raw ASGI callable (no
routing framework, no middleware), serialises with orjson and runs under uvicorn with
uvloop + httptools and no access log.

Determinism (so tests can check what the proxy forwarded):

* chat reply = ``"mock reply to: " + <last user message text>[:200]``, or
  ``"mock reply to tool result: " + <its text>[:200]`` when a tool message ends the
  conversation; choice ``i > 0`` of ``n`` appends ``" #<i>"``;
* ``tools`` (unless ``tool_choice`` is ``"none"`` or a tool result ends the conversation):
  one call to the named tool or else the first, id ``call_mock_<seq>_<choice>``, arguments
  built from its ``parameters`` schema (required properties only), ``content: null``,
  ``finish_reason: "tool_calls"``;
* ``response_format``: ``json_object`` answers ``{"reply": <echo>}``, ``json_schema`` a
  value generated to validate against the schema (``schema_values``);
* token counts are whitespace-split words (min 1): prompt tokens over every message's text,
  completion tokens over the reply (a tool call's ``arguments``), summed over choices.
  ``max_tokens`` / ``max_completion_tokens`` truncate each reply to that many words and then
  ``finish_reason`` is ``"length"``, as the real API does (even mid-JSON);
* embeddings are unit vectors derived from a SHAKE-256 hash of each input (8 floats unless
  ``dimensions`` is given).

Requests are validated as strictly as the real API (400 with its ``param``): messages,
limits, ``n`` (1..128), ``stream_options`` (streams only), ``tools``/``tool_choice``/tool
turns, ``response_format``. ``POST /v1/messages`` is as strict as Anthropic's Messages API
(``anthropic_validate``: the key only as ``x-api-key``, no unknown fields, alternating turns,
paired ``tool_use``/``tool_result``; 400s in its envelope naming the field), and answers in
kind (``anthropic_answer``: the echo, ``tool_use`` blocks, stop sequences, ``max_tokens``;
the real event sequence when streamed), and refuses a request without ``anthropic-version``
like the real API (``require_anthropic_version=False`` on ``build_app``, ``MockUpstream`` or
``serve`` lets it through, with the older two-field usage).

Control plane (tests only), under ``/_mock/``: ``GET stats``, ``POST reset``, ``POST fail``
(``{"mode": <one of FAIL_MODES>, "count": n}``, queued FIFO; what each mode does is in
``failures``) and ``GET|POST config`` (``{"latency_ms", "chunk_delay_ms",
"redirect_location", "huge_bytes"}``; unknown keys are a 400).

Layout: ``state`` (counters, failure queue, config), ``protocol`` (what both dialects
share: error envelope, validation helpers, the echo reply), ``openai_api`` and
``anthropic_api`` (the two wire formats), with ``tools``, ``response_format`` and
``schema_values`` (JSON Schema -> value) for chat's options and ``anthropic_validate``
(with ``anthropic_turns`` for ``messages`` and ``anthropic_checks``, its error wording) and
``anthropic_answer`` for the Messages API, ``asgi`` (raw ASGI plumbing),
``routes`` (path -> handler), ``failures`` (injected failures), ``app`` (dispatcher,
control plane) and ``server`` (uvicorn: ``serve()`` and ``MockUpstream``).
"""

from __future__ import annotations

from cognitude.mock_upstream.app import MockApp, build_app
from cognitude.mock_upstream.openai_api import MODELS
from cognitude.mock_upstream.server import MockUpstream, serve
from cognitude.mock_upstream.state import FAIL_MODES, MockState

__all__ = ["FAIL_MODES", "MODELS", "MockApp", "MockState", "MockUpstream", "build_app", "serve"]
