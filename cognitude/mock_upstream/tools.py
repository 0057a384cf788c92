"""Function calling on ``/v1/chat/completions``: ``tools``, ``tool_choice`` and the tool turns.

Validation follows the real API's rules and wording (param paths such as
``tools[0].function.name`` and ``messages.[3].role``). The answer: with tools and a
``tool_choice`` other than ``"none"``, the mock always calls one tool -- the named one, else
the first -- unless the conversation ends with a tool result, so agent loops terminate
(even under ``"required"``: a loop that can never end is no use in a test).
"""

from __future__ import annotations

from typing import Any

import orjson

from cognitude.mock_upstream.protocol import (
    Reply,
    bad_name,
    empty_array,
    error,
    invalid_type,
    missing,
)
from cognitude.mock_upstream.schema_values import example, object_root_problem, strict_problem

CHOICES = ("none", "auto", "required")
ARGUMENT_FRAGMENT = 8  # characters per streamed ``arguments`` delta, like a few tokens each


def _bad_function(fn: Any, at: str) -> Reply | None:
    if not isinstance(fn, dict):
        return invalid_type(at, "an object", fn)
    if "name" not in fn:
        return missing(f"{at}.name")
    failed = bad_name(f"{at}.name", fn["name"])
    if failed:
        return failed
    if fn.get("description") is not None and not isinstance(fn["description"], str):
        return invalid_type(f"{at}.description", "a string", fn["description"])
    if fn.get("strict") is not None and not isinstance(fn["strict"], bool):
        return invalid_type(f"{at}.strict", "a boolean", fn["strict"])
    params = fn.get("parameters")
    if params is None:
        return None
    if not isinstance(params, dict):
        return invalid_type(f"{at}.parameters", "an object", params)
    problem = object_root_problem(params)
    if problem is None and fn.get("strict") is True:
        problem = strict_problem(params)
    if problem:
        return error(
            400,
            f"Invalid schema for function '{fn['name']}': {problem}",
            f"{at}.parameters",
            "invalid_function_parameters",
        )
    return None


def _bad_tools(tools: Any) -> Reply | None:
    if not isinstance(tools, list):
        return invalid_type("tools", "an array", tools)
    if not tools:
        return empty_array("tools")
    for i, tool in enumerate(tools):
        at = f"tools[{i}]"
        if not isinstance(tool, dict):
            return invalid_type(at, "an object", tool)
        if "type" not in tool:
            return missing(f"{at}.type")
        if tool["type"] != "function":
            return error(
                400,
                f"Invalid value: '{tool['type']}'. Supported values are: 'function'.",
                f"{at}.type",
                "invalid_value",
            )
        if "function" not in tool:
            return missing(f"{at}.function")
        failed = _bad_function(tool["function"], f"{at}.function")
        if failed:
            return failed
    return None


def _bad_choice(choice: Any, tools: list[dict[str, Any]]) -> Reply | None:
    if isinstance(choice, str):
        if choice in CHOICES:
            return None
        return error(
            400,
            f"Invalid value: '{choice}'. Supported values are: 'none', 'auto', and 'required'.",
            "tool_choice",
            "invalid_value",
        )
    if not isinstance(choice, dict):
        return invalid_type("tool_choice", "a string or an object", choice)
    if choice.get("type") != "function":
        return error(
            400,
            f"Invalid value: '{choice.get('type')}'. Supported values are: 'function'.",
            "tool_choice.type",
            "invalid_value",
        )
    fn = choice.get("function")
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        return missing("tool_choice.function.name")
    if fn["name"] not in {t["function"]["name"] for t in tools}:
        return error(
            400,
            f"Invalid value for 'tool_choice': function '{fn['name']}' not found in 'tools'.",
            "tool_choice",
            "invalid_value",
        )
    return None


def _only_with_tools(param: str) -> Reply:
    return error(
        400,
        f"Invalid value for '{param}': '{param}' is only allowed when 'tools' are specified.",
        param,
    )


def _bad_call(call: Any, at: str) -> Reply | None:
    if not isinstance(call, dict):
        return invalid_type(at, "an object", call)
    for key in ("id", "type", "function"):
        if key not in call:
            return missing(f"{at}.{key}")
    if not isinstance(call["id"], str):
        return invalid_type(f"{at}.id", "a string", call["id"])
    if call["type"] != "function":
        return error(
            400,
            f"Invalid value: '{call['type']}'. Supported values are: 'function'.",
            f"{at}.type",
            "invalid_value",
        )
    fn = call["function"]
    if not isinstance(fn, dict):
        return invalid_type(f"{at}.function", "an object", fn)
    for key in ("name", "arguments"):
        if key not in fn:
            return missing(f"{at}.function.{key}")
        if not isinstance(fn[key], str):
            return invalid_type(f"{at}.function.{key}", "a string", fn[key])
    return None


def _unanswered(at: int, ids: list[str]) -> Reply:
    return error(
        400,
        "An assistant message with 'tool_calls' must be followed by tool messages responding "
        "to each 'tool_call_id'. The following tool_call_ids did not have response messages: "
        + ", ".join(ids),
        f"messages.[{at}].role",
    )


def _bad_turns(messages: list[dict[str, Any]]) -> Reply | None:
    """Tool messages answer the assistant ``tool_calls`` just before them, every one of them."""
    ids: list[str] | None = None  # the open assistant turn's call ids
    pending: list[str] = []
    opened = 0
    for i, msg in enumerate(messages):
        role = msg.get("role")
        if role == "tool":
            call_id = msg.get("tool_call_id")
            if not isinstance(call_id, str):
                return error(
                    400,
                    "Missing parameter 'tool_call_id': messages with role 'tool' must have a "
                    "'tool_call_id'.",
                    f"messages.[{i}].tool_call_id",
                )
            if ids is None:
                return error(
                    400,
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'.",  # sic: the real API's spelling
                    f"messages.[{i}].role",
                )
            if call_id not in ids:
                return error(
                    400,
                    f"Invalid parameter: 'tool_call_id' of '{call_id}' not found in "
                    "'tool_calls' of previous message.",
                    f"messages.[{i}].tool_call_id",
                )
            pending = [p for p in pending if p != call_id]
            continue
        if pending:
            return _unanswered(opened, pending)
        ids = None
        calls = msg.get("tool_calls")
        if role == "assistant" and calls is not None:
            at = f"messages[{i}].tool_calls"
            if not isinstance(calls, list):
                return invalid_type(at, "an array", calls)
            if not calls:
                return empty_array(at)
            for j, call in enumerate(calls):
                failed = _bad_call(call, f"{at}[{j}]")
                if failed:
                    return failed
            ids = [c["id"] for c in calls]
            pending, opened = list(ids), i
    return _unanswered(opened, pending) if pending else None


def validate(req: dict[str, Any]) -> Reply | None:
    """``tools``, ``tool_choice``, ``parallel_tool_calls`` and the tool turns in ``messages``."""
    tools = req.get("tools")
    if tools is not None:
        failed = _bad_tools(tools)
        if failed:
            return failed
    choice = req.get("tool_choice")
    if choice is not None:
        if tools is None:
            return _only_with_tools("tool_choice")
        failed = _bad_choice(choice, tools)
        if failed:
            return failed
    parallel = req.get("parallel_tool_calls")
    if parallel is not None:
        if not isinstance(parallel, bool):
            return invalid_type("parallel_tool_calls", "a boolean", parallel)
        if tools is None:
            return _only_with_tools("parallel_tool_calls")
    return _bad_turns(req["messages"])


def to_call(req: dict[str, Any]) -> dict[str, Any] | None:
    """The function the mock "decides" to call for a validated request, or None for text."""
    tools = req.get("tools")
    choice = req.get("tool_choice") or "auto"
    if not tools or choice == "none" or req["messages"][-1].get("role") == "tool":
        return None
    if isinstance(choice, dict):
        name = choice["function"]["name"]
        return next(t["function"] for t in tools if t["function"]["name"] == name)
    function: dict[str, Any] = tools[0]["function"]
    return function


def arguments(function: dict[str, Any]) -> str:
    """The call's ``arguments``: a JSON object with every required parameter filled in."""
    value = example(function.get("parameters") or {"type": "object"})
    # A parameters schema whose root is not an object (anyOf, say) still gets an object.
    return orjson.dumps(value if isinstance(value, dict) else {}).decode()


def fragments(text: str) -> list[str]:
    """``arguments`` as the stream sends it: short pieces that may split anywhere."""
    return [text[i : i + ARGUMENT_FRAGMENT] for i in range(0, len(text), ARGUMENT_FRAGMENT)]
