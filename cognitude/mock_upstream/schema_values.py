"""Plausible values from a JSON Schema: tool-call arguments and ``json_schema`` replies.

``example(schema)`` builds one deterministic value that validates against the schema for the
keywords structured outputs use: ``type`` (also as a list), ``enum``/``const``, objects
(``required`` properties only, then optional ones up to ``minProperties``), strings (common
``format``s, ``minLength``/``maxLength``), numbers and integers (bounds, ``multipleOf``),
arrays (``items``, ``prefixItems``, ``minItems``/``maxItems``), ``anyOf``/``oneOf`` (the
first branch), ``allOf`` (merged) and local ``$ref`` (``#/$defs/...``). ``pattern`` and
``not`` are ignored: no generator can satisfy arbitrary ones cheaply.

``strict_problem(schema)`` is the real API's check for ``"strict": true`` schemas.
"""

from __future__ import annotations

import math
from typing import Any

# A recursive $ref that is required all the way down has no finite instance; stop here.
MAX_DEPTH = 16

_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "12:00:00Z",
    "duration": "PT1M",
    "email": "mock@example.com",
    "hostname": "example.com",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "uri": "https://example.com/mock",
    "url": "https://example.com/mock",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


def example(schema: Any, name: str = "value") -> Any:
    """One value valid against ``schema``; ``name`` (the property's) makes strings readable."""
    return _value(schema, schema, name, 0)


def _int(schema: dict[str, Any], key: str, default: int) -> int:
    value = schema.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _resolve(schema: Any, root: Any) -> Any:
    ref = schema.get("$ref") if isinstance(schema, dict) else None
    if not isinstance(ref, str) or not ref.startswith("#"):
        return schema
    node = root
    for part in filter(None, ref[1:].split("/")):
        part = part.replace("~1", "/").replace("~0", "~")  # JSON Pointer escapes
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def _merge_all_of(schema: dict[str, Any], root: Any) -> dict[str, Any]:
    merged = {k: v for k, v in schema.items() if k != "allOf"}
    for part in schema["allOf"]:
        part = _resolve(part, root)
        if not isinstance(part, dict):
            continue
        merged["properties"] = {**_dict(merged.get("properties")), **_dict(part.get("properties"))}
        merged["required"] = [*_list(merged.get("required")), *_list(part.get("required"))]
        for key, value in part.items():
            merged.setdefault(key, value)
    return merged


def _type_of(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):  # ["string", "null"]: the non-null one reads better
        kind = next((k for k in kind if k != "null"), "null")
    if isinstance(kind, str):
        return kind
    if "properties" in schema or "required" in schema or "additionalProperties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return "string"  # {} accepts anything


def _value(schema: Any, root: Any, name: str, depth: int) -> Any:
    if depth > MAX_DEPTH:
        return None
    if schema is True:  # the schema that accepts anything
        return "mock"
    schema = _resolve(schema, root)
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return _value(schema[key][0], root, name, depth + 1)
    if isinstance(schema.get("allOf"), list):
        return _value(_merge_all_of(schema, root), root, name, depth + 1)
    kind = _type_of(schema)
    if kind == "object":
        return _object(schema, root, depth)
    if kind == "array":
        return _array(schema, root, name, depth)
    if kind in ("integer", "number"):
        return _number(schema, kind == "integer")
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _string(schema, name)


def _object(schema: dict[str, Any], root: Any, depth: int) -> dict[str, Any]:
    props = _dict(schema.get("properties"))
    keys = [k for k in _list(schema.get("required")) if isinstance(k, str)]
    short = _int(schema, "minProperties", 0) - len(keys)
    keys += [k for k in props if k not in keys][: max(0, short)]
    # A required key missing from "properties" is governed by additionalProperties.
    fallback = _dict(schema.get("additionalProperties"))
    return {k: _value(props.get(k, fallback), root, k, depth + 1) for k in dict.fromkeys(keys)}


def _array(schema: dict[str, Any], root: Any, name: str, depth: int) -> list[Any]:
    out = [_value(s, root, name, depth + 1) for s in _list(schema.get("prefixItems"))]
    count = max(_int(schema, "minItems", 1), len(out))
    count = min(count, _int(schema, "maxItems", count))
    items = schema.get("items", {})
    while len(out) < count and items is not False:
        out.append(_value(items, root, name, depth + 1))
    return out[:count]


def _number(schema: dict[str, Any], integer: bool) -> int | float:
    def bound(key: str) -> float | None:
        value = schema.get(key)
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None

    lo, hi = bound("minimum"), bound("maximum")
    xlo, xhi = bound("exclusiveMinimum"), bound("exclusiveMaximum")
    step = bound("multipleOf")
    if step is not None and step > 0:
        k = 1
        if lo is not None:
            k = max(k, math.ceil(lo / step))
        if xlo is not None:
            k = max(k, math.floor(xlo / step) + 1)
        value = k * step
        return int(value) if integer else value
    if integer:
        lows = [math.ceil(lo)] if lo is not None else []
        lows += [math.floor(xlo) + 1] if xlo is not None else []
        highs = [math.floor(hi)] if hi is not None else []
        highs += [math.ceil(xhi) - 1] if xhi is not None else []
        return max(lows) if lows else min([1, *highs])
    low = max((b for b in (lo, xlo) if b is not None), default=None)
    high = min((b for b in (hi, xhi) if b is not None), default=None)
    if low is not None and high is not None:
        return (low + high) / 2  # strictly inside exclusive bounds too
    if low is not None:
        return low + 1.5
    if high is not None:
        return high - 1.5
    return 1.5


def _string(schema: dict[str, Any], name: str) -> str:
    fmt = schema.get("format")
    text = _FORMATS.get(fmt, f"mock {name}") if isinstance(fmt, str) else f"mock {name}"
    text = text.ljust(_int(schema, "minLength", 0), "x")
    return text[: _int(schema, "maxLength", len(text))]


def object_root_problem(schema: dict[str, Any]) -> str | None:
    """The real API's rule for function parameters and strict response schemas."""
    kind = schema.get("type", "object")
    if kind == "object":
        return None
    return f"schema must be a JSON Schema of 'type: \"object\"', got 'type: \"{kind}\"'."


def strict_problem(schema: Any, path: tuple[str, ...] = ()) -> str | None:
    """Why ``schema`` is not allowed with ``"strict": true``, or None.

    As in the real API: every object must set ``additionalProperties: false`` and list
    every property in ``required``; the text mimics its "In context=(...)" messages.
    """
    if not isinstance(schema, dict):
        return None
    where = f"In context={path!r}, " if path else "In context=(), "
    kind = schema.get("type")
    if kind == "object" or (isinstance(kind, list) and "object" in kind) or "properties" in schema:
        if schema.get("additionalProperties") is not False:
            return where + "'additionalProperties' is required to be supplied and to be false."
        required = _list(schema.get("required"))
        missing = [k for k in _dict(schema.get("properties")) if k not in required]
        if missing:
            return (
                where + "'required' is required to be supplied and to be an array including "
                f"every key in properties. Missing '{missing[0]}'."
            )
    children: list[tuple[tuple[str, ...], Any]] = []
    for key in ("properties", "$defs", "definitions"):
        if isinstance(schema.get(key), dict):
            children += [((*path, key, k), v) for k, v in schema[key].items()]
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        if isinstance(schema.get(key), list):
            children += [((*path, key, str(i)), v) for i, v in enumerate(schema[key])]
    if isinstance(schema.get("items"), dict):
        children.append(((*path, "items"), schema["items"]))
    for child_path, child in children:
        problem = strict_problem(child, child_path)
        if problem:
            return problem
    return None
