"""Request checks for ``POST /v1/messages``, as strict as the real Messages API: the proxy's
OpenAI -> Anthropic translation is proven against them, so whatever the real API refuses,
the mock refuses too, with a 400 whose message names the field the way the real one does.

Headers (``header_refusal``, checked before an injected failure is used up, like a 401):
the key only in ``x-api-key`` (a Bearer token is not Anthropic's scheme), and
``anthropic-version``, which must be ``2023-06-01`` when given and is required when the mock
runs with ``require_anthropic_version``.

The body (``validate``): only the Messages fields (``user``, ``n``, ``stream_options``... are
"Extra inputs are not permitted"); ``model``, ``max_tokens`` (an integer >= 1) and
``messages`` (``anthropic_turns``) required; ``system`` a string or text blocks;
``temperature`` and ``top_p`` within 0..1 (OpenAI's temperature goes to 2), ``top_k`` >= 0;
``stop_sequences`` non-blank strings; ``tools`` Anthropic's ``{name, description,
input_schema}`` (not OpenAI's ``{"type": "function", "function": ...}``) and ``tool_choice``
an object (not OpenAI's strings), only with tools; ``metadata`` only ``user_id``;
``thinking`` enabled with a ``budget_tokens`` of 1024 up to ``max_tokens`` (and then no
``temperature`` but 1, no ``top_k``, ``top_p`` >= 0.95, no forced tool choice), or disabled.
"""

from __future__ import annotations

import re
from typing import Any

from cognitude.mock_upstream.anthropic_checks import (
    bad_cache_control,
    bad_object,
    bad_string,
    bad_tag,
    expected,
    extra_key,
    invalid,
    is_int,
    is_number,
    one_of,
    required,
)
from cognitude.mock_upstream.anthropic_turns import bad_block, bad_messages
from cognitude.mock_upstream.protocol import Reply, error

VERSIONS = ("2023-06-01",)  # 2023-01-01 streams another format the mock does not speak
FIELDS = (
    "model",
    "messages",
    "max_tokens",
    "system",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "metadata",
    "thinking",
    "service_tier",
)
REQUIRED = ("model", "max_tokens", "messages")
TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
TOOL_KEYS = ("type", "name", "description", "input_schema", "cache_control")
CHOICE_TYPES = ("auto", "any", "tool", "none")
_CHOICE_KEYS = {
    "auto": ("type", "disable_parallel_tool_use"),
    "any": ("type", "disable_parallel_tool_use"),
    "tool": ("type", "name", "disable_parallel_tool_use"),
    "none": ("type",),
}
SERVICE_TIERS = ("auto", "standard_only")
MIN_THINKING_BUDGET = 1024
THINKING_MIN_TOP_P = 0.95


def header_refusal(headers: dict[str, str], key: str | None, require_version: bool) -> Reply | None:
    """401 / 400 for the headers, in the real API's words."""
    if key is not None:
        given = headers.get("x-api-key")
        if given is None:
            return error(401, "x-api-key header is required")
        if given != key:
            return error(401, "invalid x-api-key")
    version = headers.get("anthropic-version")
    if version is None:
        return invalid("anthropic-version: header is required") if require_version else None
    if version not in VERSIONS:
        return invalid(f"anthropic-version: invalid version '{version}'; known: {VERSIONS[0]}")
    return None


def _bad_fraction(req: dict[str, Any], name: str) -> Reply | None:
    value = req.get(name)
    if value is None:
        return None
    if not is_number(value):
        return expected(name, "a valid number")
    if value < 0:
        return expected(name, "greater than or equal to 0")
    if value > 1:
        return expected(name, "less than or equal to 1")
    return None


def _bad_scalars(req: dict[str, Any]) -> Reply | None:
    if not isinstance(req["model"], str):
        return expected("model", "a valid string")
    if not req["model"]:
        return invalid("model: String should have at least 1 character")
    if not is_int(req["max_tokens"]):
        return expected("max_tokens", "a valid integer")
    if req["max_tokens"] < 1:
        return expected("max_tokens", "greater than or equal to 1")
    if req.get("stream") is not None and not isinstance(req["stream"], bool):
        return expected("stream", "a valid boolean")
    top_k = req.get("top_k")
    if top_k is not None and (not is_int(top_k) or top_k < 0):
        return expected("top_k", "a valid integer greater than or equal to 0")
    tier = req.get("service_tier")
    if tier is not None and tier not in SERVICE_TIERS:
        return one_of("service_tier", SERVICE_TIERS)
    return _bad_fraction(req, "temperature") or _bad_fraction(req, "top_p")


def _bad_system(system: Any) -> Reply | None:
    if system is None or isinstance(system, str):
        return None
    if not isinstance(system, list):
        return expected("system", "a valid string or a list of text blocks")
    for j, block in enumerate(system):
        failed = bad_block(block, f"system.{j}", ("text",))
        if failed:
            return failed
    return None


def _bad_stop_sequences(stops: Any) -> Reply | None:
    if stops is None:
        return None
    if not isinstance(stops, list):  # OpenAI's "stop" may be a bare string; this may not
        return expected("stop_sequences", "a valid list")
    for j, stop in enumerate(stops):
        if not isinstance(stop, str):
            return expected(f"stop_sequences.{j}", "a valid string")
        if not stop.strip():
            return invalid(f"stop_sequences.{j}: stop sequences must contain non-whitespace")
    return None


def _bad_metadata(metadata: Any) -> Reply | None:
    if metadata is None:
        return None
    failed = bad_object(metadata, "metadata", ("user_id",))
    if failed:
        return failed
    user_id = metadata.get("user_id")
    if user_id is not None and not isinstance(user_id, str):
        return expected("metadata.user_id", "a valid string")
    return None


def _bad_thinking_shape(thinking: Any, max_tokens: int) -> Reply | None:
    if not isinstance(thinking, dict):
        return expected("thinking", "a valid dictionary")
    kind = thinking.get("type")
    if kind == "disabled":
        return bad_object(thinking, "thinking", ("type",))
    if kind != "enabled":
        return bad_tag("thinking", kind, ("enabled", "disabled"))
    failed = bad_object(thinking, "thinking", ("type", "budget_tokens"))
    if failed:
        return failed
    budget = thinking.get("budget_tokens")
    if budget is None:
        return required("thinking.budget_tokens")
    if not is_int(budget):
        return expected("thinking.budget_tokens", "a valid integer")
    if budget < MIN_THINKING_BUDGET:
        return expected("thinking.budget_tokens", f"greater than or equal to {MIN_THINKING_BUDGET}")
    if budget >= max_tokens:
        return invalid("max_tokens: must be greater than thinking.budget_tokens")
    return None


def _bad_thinking(req: dict[str, Any]) -> Reply | None:
    """The shape, then what extended thinking rules out: sampling other than the model's
    own, and a forced tool choice. (The mock answers no thinking blocks either way.)"""
    thinking = req.get("thinking")
    if thinking is None:
        return None
    failed = _bad_thinking_shape(thinking, req["max_tokens"])
    if failed or thinking["type"] == "disabled":
        return failed
    if req.get("temperature") not in (None, 1):
        return invalid("temperature: may only be set to 1 when thinking is enabled")
    if req.get("top_k") is not None:
        return invalid("top_k: may not be set when thinking is enabled")
    if req.get("top_p") is not None and req["top_p"] < THINKING_MIN_TOP_P:
        return invalid(
            f"top_p: must be between {THINKING_MIN_TOP_P} and 1 when thinking is enabled"
        )
    choice = req.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
        return invalid("tool_choice: Thinking may not be enabled when tool_choice forces tool use.")
    return None


def _bad_schema(schema: Any, at: str) -> Reply | None:
    if not isinstance(schema, dict):
        return expected(at, "a valid dictionary")
    if "type" not in schema:
        return required(f"{at}.type")
    if schema["type"] != "object":
        return one_of(f"{at}.type", ("object",))
    return None


def _bad_tool(tool: Any, at: str) -> Reply | None:
    failed = bad_object(tool, at, TOOL_KEYS)
    if failed:
        return failed
    if tool.get("type", "custom") != "custom":  # OpenAI's "function" type, say
        return one_of(f"{at}.type", ("custom",))
    failed = bad_string(tool, "name", at) or bad_string(tool, "description", at, optional=True)
    if failed:
        return failed
    if not TOOL_NAME.fullmatch(tool["name"]):
        return invalid(f"{at}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
    if "cache_control" in tool:
        failed = bad_cache_control(tool["cache_control"], at)
        if failed:
            return failed
    if "input_schema" not in tool:
        return required(f"{at}.input_schema")
    return _bad_schema(tool["input_schema"], f"{at}.input_schema")


def _bad_tools(tools: Any) -> Reply | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        return expected("tools", "a valid list")
    for i, tool in enumerate(tools):
        failed = _bad_tool(tool, f"tools.{i}")
        if failed:
            return failed
    names = [t["name"] for t in tools]
    if len(set(names)) != len(names):
        return invalid("tools: Tool names must be unique.")
    return None


def _bad_tool_choice(choice: Any, tools: list[dict[str, Any]] | None) -> Reply | None:
    if choice is None:
        return None
    if not isinstance(choice, dict):  # OpenAI's "auto" / "required" strings
        return expected("tool_choice", "a valid dictionary")
    kind = choice.get("type")
    if kind not in CHOICE_TYPES:
        return bad_tag("tool_choice", kind, CHOICE_TYPES)
    failed = bad_object(choice, "tool_choice", _CHOICE_KEYS[kind])
    if failed:
        return failed
    parallel = choice.get("disable_parallel_tool_use")
    if parallel is not None and not isinstance(parallel, bool):
        return expected("tool_choice.disable_parallel_tool_use", "a valid boolean")
    if not tools:
        return invalid("tool_choice: tool_choice may only be specified while providing tools")
    if kind != "tool":
        return None
    failed = bad_string(choice, "name", "tool_choice")
    if failed:
        return failed
    if choice["name"] not in {t["name"] for t in tools}:
        return invalid(f"tool_choice.name: tool '{choice['name']}' not found in tools")
    return None


def validate(req: Any) -> Reply | None:
    """None for a request the real API would take, else its 400."""
    if not isinstance(req, dict):
        return invalid("body: Input should be a valid dictionary")
    failed = extra_key(req, FIELDS, "")
    if failed:
        return failed
    for key in REQUIRED:
        if key not in req:
            return required(key)
    return (
        _bad_scalars(req)
        or _bad_system(req.get("system"))
        or _bad_stop_sequences(req.get("stop_sequences"))
        or _bad_metadata(req.get("metadata"))
        or bad_messages(req["messages"])
        or _bad_tools(req.get("tools"))
        or _bad_tool_choice(req.get("tool_choice"), req.get("tools"))
        or _bad_thinking(req)  # last: it reads the checked sampling fields and tool_choice
    )
