"""``response_format`` on ``/v1/chat/completions``: ``text``, ``json_object``, ``json_schema``.

``json_object`` wraps the echo as ``{"reply": "<echo>"}``; ``json_schema`` answers
``schema_values.example(schema)``, which validates against the schema. Every error names
``param: "response_format"`` except json_object's missing "json" word, which the real API
pins on ``messages``.
"""

from __future__ import annotations

import json
from typing import Any

from cognitude.mock_upstream.protocol import Reply, bad_name, error, invalid_type, missing, text_of
from cognitude.mock_upstream.schema_values import example, object_root_problem, strict_problem

TYPES = ("text", "json_object", "json_schema")
PARAM = "response_format"


def _invalid(message: str, code: str | None = "invalid_value") -> Reply:
    return error(400, message, PARAM, code)


def _as_param(reply: Reply | None) -> Reply | None:
    """The shared helpers name the nested field; this module reports ``response_format``."""
    if reply is None:
        return None
    status, payload, headers = reply
    return status, {"error": {**payload["error"], "param": PARAM}}, headers


def _bad_json_schema(spec: Any) -> Reply | None:
    at = "response_format.json_schema"
    if spec is None:
        return _as_param(missing(at))
    if not isinstance(spec, dict):
        return _as_param(invalid_type(at, "an object", spec))
    if "name" not in spec:
        return _as_param(missing(f"{at}.name"))
    failed = bad_name(f"{at}.name", spec["name"])
    if failed:
        return _as_param(failed)
    if spec.get("description") is not None and not isinstance(spec["description"], str):
        return _as_param(invalid_type(f"{at}.description", "a string", spec["description"]))
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        return _as_param(invalid_type(f"{at}.strict", "a boolean", strict))
    schema = spec.get("schema")
    if schema is None:
        return _as_param(missing(f"{at}.schema"))
    if not isinstance(schema, dict):
        return _as_param(invalid_type(f"{at}.schema", "an object", schema))
    problem = (object_root_problem(schema) or strict_problem(schema)) if strict else None
    if problem:
        return _invalid(
            f"Invalid schema for response_format '{spec['name']}': {problem}", "invalid_json_schema"
        )
    return None


def validate(req: dict[str, Any]) -> Reply | None:
    fmt = req.get(PARAM)
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        return _as_param(invalid_type(PARAM, "an object", fmt))
    if "type" not in fmt:
        return _as_param(missing("response_format.type"))
    kind = fmt["type"]
    if kind not in TYPES:
        return _invalid(
            f"Invalid value: '{kind}'. Supported values are: 'text', 'json_object', "
            "and 'json_schema'."
        )
    if kind == "json_schema":
        return _bad_json_schema(fmt.get("json_schema"))
    if kind == "json_object" and not any(
        "json" in text_of(m.get("content")).lower() for m in req["messages"]
    ):
        return error(
            400,
            "'messages' must contain the word 'json' in some form, to use 'response_format' "
            "of type 'json_object'.",
            "messages",
            "invalid_value",
        )
    return None


def render(req: dict[str, Any], echo: str) -> str:
    """The reply content a validated request's format asks for."""
    fmt = req.get(PARAM) or {"type": "text"}
    # json.dumps' ", " / ": " separators give the spaces that split the stream into deltas.
    if fmt["type"] == "json_object":
        return json.dumps({"reply": echo}, ensure_ascii=False)
    if fmt["type"] == "json_schema":
        return json.dumps(example(fmt["json_schema"]["schema"]), ensure_ascii=False)
    return echo
