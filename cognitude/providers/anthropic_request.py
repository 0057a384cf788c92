"""An OpenAI chat completion request rewritten as an Anthropic Messages request, for
``providers.anthropic``.

The request, field by field (DESIGN §11):

- **Turns.** Every ``system``/``developer`` message goes to the top-level ``system`` (texts
  joined with a blank line): Messages has no system turns. Consecutive messages of one side
  are merged into one turn, their content blocks concatenated, since Messages wants the sides
  to alternate. Every ``tool`` message becomes a ``tool_result`` block of a user turn, so the
  results of one assistant turn (and a user message after them) land in ONE user turn, tool
  results first, as Anthropic requires. A turn that is a single text stays a plain string. A
  conversation that starts with the assistant is sent as it is: the upstream says what is
  wrong, in its words. Empty text is left out (Anthropic refuses empty text blocks).
- **Content.** Text parts → text blocks; ``image_url`` parts → image blocks (a base64 data
  URL → a ``base64`` source, an http(s) URL → a ``url`` source); other part types (audio,
  files) → 400. Assistant ``tool_calls`` → ``tool_use`` blocks, their ``arguments`` parsed
  (arguments that are not a JSON object → 400 naming the message).
- **Tools.** Function tools → ``{name, description, input_schema}``; ``tool_choice`` auto →
  auto, required → any, none → none, a named function → tool; ``parallel_tool_calls: false``
  → ``disable_parallel_tool_use`` in the tool choice. Without tools, Messages takes no tool
  choice: auto and none are dropped, one that asks for a call is a 400.
- **Limits and sampling.** ``max_completion_tokens``, else ``max_tokens``, else the model's
  output limit becomes ``max_tokens`` (required by Anthropic; 4096 when the catalog knows no
  limit). ``stop`` → ``stop_sequences``. The sampling rule: ``temperature`` is clamped to
  Anthropic's 0..1 (OpenAI's range is 0..2), and when both ``temperature`` and ``top_p`` are
  given only ``temperature`` is sent, because newer Claude models refuse both at once.
  ``user`` (or ``safety_identifier``) → ``metadata.user_id``.
- **Refused** (400 naming the param, not silently degraded): ``n`` other than 1,
  ``logprobs``/``top_logprobs``, a ``response_format`` other than text, ``audio``,
  ``modalities`` other than text, and the legacy ``functions``/``function_call`` (tools
  dropped silently would change the answer). **Dropped**, as they change nothing a client can
  rely on: ``frequency_penalty``, ``presence_penalty``, ``seed``, ``logit_bias``,
  ``stream_options``, ``store``, ``metadata``, ``service_tier``, ``reasoning_effort``,
  ``n: 1``. Only the fields above are ever sent: the API refuses unknown ones, so a field
  this adapter does not know (a vendor extension) is left out too.
"""

from __future__ import annotations

from typing import Any

import orjson

from cognitude.errors import InvalidRequest

_DEFAULT_MAX_TOKENS = 4096  # a model the catalog gives no output limit: Anthropic needs one
_EMPTY_SCHEMA = {"type": "object", "properties": {}}
_CHOICES = {"auto": "auto", "required": "any", "none": "none"}


def to_messages(doc: dict[str, Any], model: str, stream: bool,
                max_output: int) -> dict[str, Any]:
    """The Messages request for the chat completion request ``doc``, sent to ``model``;
    ``InvalidRequest`` (400 naming the param) for what Anthropic cannot do."""
    _refuse_unsupported(doc)
    system, turns = _conversation(doc.get("messages"))
    out: dict[str, Any] = {"model": model, "messages": turns}
    if system:
        out["system"] = system
    if stream:
        out["stream"] = True
    _options(doc, out, max_output)
    _tools(doc, out)
    return out


def _cannot(param: str, what: str) -> InvalidRequest:
    return InvalidRequest(f"`{param}`: Anthropic models cannot {what}.", param=param)


def _refuse_unsupported(doc: dict[str, Any]) -> None:
    n = doc.get("n")
    if n is not None and n != 1:
        raise _cannot("n", "return more than one choice; `n` must be 1")
    for param in ("logprobs", "top_logprobs"):
        if doc.get(param):
            raise _cannot(param, "return log probabilities")
    fmt = doc.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise _cannot("response_format", "enforce a JSON response format")
    if doc.get("audio") is not None:
        raise _cannot("audio", "produce audio")
    mods = doc.get("modalities")
    if mods is not None and (not isinstance(mods, list) or any(m != "text" for m in mods)):
        raise _cannot("modalities", "answer in modalities other than text")
    for param in ("functions", "function_call"):
        if doc.get(param) is not None:
            raise _cannot(param, "take legacy functions; send `tools` instead")


def _text(content: Any, param: str) -> str:
    """A string, or the text parts of a content array joined with a blank line."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        return "\n\n".join(p["text"] for p in content if isinstance(p, dict)
                           and p.get("type") == "text" and isinstance(p.get("text"), str)
                           and p["text"])
    raise InvalidRequest(f"`{param}` must be a string or an array of content parts.",
                         param=param)


def _image(spec: Any, param: str) -> dict[str, Any]:
    url = spec.get("url") if isinstance(spec, dict) else spec
    if isinstance(url, str) and url.startswith("data:"):
        head, comma, data = url[5:].partition(",")
        media = head.split(";", 1)[0]
        if comma and media and head.endswith(";base64"):
            return {"type": "image",
                    "source": {"type": "base64", "media_type": media, "data": data}}
    elif isinstance(url, str) and url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequest(f"`{param}.image_url.url` must be an http(s) URL or a base64 data URL "
                         "(data:image/png;base64,...) for Anthropic models.", param=param)


def _blocks(content: Any, param: str) -> list[dict[str, Any]]:
    """User or assistant content as Messages blocks (empty text left out)."""
    if content is None or isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise InvalidRequest(f"`{param}` must be a string or an array of content parts.",
                             param=param)
    out = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "refusal"):
            text = part.get(kind)
            if not isinstance(text, str):
                raise InvalidRequest(f"`{param}[{j}].{kind}` must be a string.",
                                     param=f"{param}[{j}]")
            if text:
                out.append({"type": "text", "text": text})
        elif kind == "image_url":
            out.append(_image(part.get("image_url"), f"{param}[{j}]"))
        else:
            raise InvalidRequest(f"`{param}[{j}]` is a `{kind}` part; Anthropic models take "
                                 "text and image parts only.", param=f"{param}[{j}]")
    return out


def _tool_use(call: Any, i: int, j: int) -> dict[str, Any]:
    param = f"messages[{i}].tool_calls[{j}]"
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(call.get("id"), str) \
            or not isinstance(fn.get("name"), str):
        raise InvalidRequest(f"`{param}` must have a string `id` and a `function` with a "
                             "string `name`.", param=param)
    args = fn.get("arguments")
    try:
        given = orjson.loads(args) if isinstance(args, str) and args.strip() else args or {}
    except orjson.JSONDecodeError:
        given = None
    if not isinstance(given, dict):
        raise InvalidRequest(f"`{param}.function.arguments` of message {i} is not a JSON "
                             "object, so Anthropic models cannot take it as tool input.",
                             param=f"{param}.function.arguments")
    return {"type": "tool_use", "id": call["id"], "name": fn["name"], "input": given}


def _assistant(m: dict[str, Any], i: int) -> list[dict[str, Any]]:
    blocks = _blocks(m.get("content"), f"messages[{i}].content")
    calls = m.get("tool_calls")
    if calls is None:
        return blocks
    if not isinstance(calls, list):
        raise InvalidRequest(f"`messages[{i}].tool_calls` must be an array.",
                             param=f"messages[{i}].tool_calls")
    return blocks + [_tool_use(call, i, j) for j, call in enumerate(calls)]


def _tool_result(m: dict[str, Any], i: int) -> dict[str, Any]:
    call_id = m.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest(f"`messages[{i}].tool_call_id` is required for a tool message.",
                             param=f"messages[{i}].tool_call_id")
    block = {"type": "tool_result", "tool_use_id": call_id}
    text = _text(m.get("content"), f"messages[{i}].content")
    return {**block, "content": text} if text else block


def _turn(m: Any, i: int) -> tuple[str, list[dict[str, Any]]]:
    role = m.get("role") if isinstance(m, dict) else None
    if role == "user":
        return "user", _blocks(m.get("content"), f"messages[{i}].content")
    if role == "assistant":
        return "assistant", _assistant(m, i)
    if role == "tool":
        return "user", [_tool_result(m, i)]
    raise InvalidRequest(f"`messages[{i}].role` must be system, developer, user, assistant or "
                         "tool for Anthropic models.", param=f"messages[{i}].role")


def _conversation(messages: Any) -> tuple[str, list[dict[str, Any]]]:
    """(the system prompt, the alternating turns)."""
    if not isinstance(messages, list):
        raise InvalidRequest("`messages` must be an array.", param="messages")
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if isinstance(m, dict) and m.get("role") in ("system", "developer"):
            if text := _text(m.get("content"), f"messages[{i}].content"):
                system.append(text)
            continue
        side, blocks = _turn(m, i)
        if turns and turns[-1]["role"] == side:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": side, "content": blocks})
    for turn in turns:
        content = turn["content"]
        if len(content) == 1 and content[0]["type"] == "text":
            turn["content"] = content[0]["text"]
        elif turn["role"] == "user" and any(b["type"] == "tool_result" for b in content):
            content.sort(key=lambda b: b["type"] != "tool_result")  # stable: results first
    return "\n\n".join(system), turns


def _tool(tool: Any, j: int) -> dict[str, Any]:
    fn = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" \
        else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise InvalidRequest(f"`tools[{j}]` must be a function tool with a string name; "
                             "Anthropic models take function tools only.", param=f"tools[{j}]")
    spec = {"name": fn["name"]}
    if isinstance(fn.get("description"), str):
        spec["description"] = fn["description"]
    return {**spec, "input_schema": fn.get("parameters") or _EMPTY_SCHEMA}


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    out: dict[str, Any] | None
    if choice is None:
        out = {"type": "auto"} if parallel is False else None
    elif isinstance(choice, str) and choice in _CHOICES:
        out = {"type": _CHOICES[choice]}
    elif isinstance(choice, dict) and choice.get("type") == "function" \
            and isinstance(choice.get("function"), dict) \
            and isinstance(choice["function"].get("name"), str):
        out = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise InvalidRequest("`tool_choice` must be auto, required, none or a named function "
                             "for Anthropic models.", param="tool_choice")
    if out is not None and parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


def _tools(doc: dict[str, Any], out: dict[str, Any]) -> None:
    tools = doc.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise InvalidRequest("`tools` must be an array.", param="tools")
    choice = doc.get("tool_choice")
    if not tools:
        # Messages takes no tool_choice without tools; auto and none mean nothing then.
        if choice is not None and choice not in ("auto", "none"):
            raise InvalidRequest("`tool_choice` asks for a tool call, but the request has no "
                                 "`tools`.", param="tool_choice")
        return
    out["tools"] = [_tool(t, j) for j, t in enumerate(tools)]
    if (spec := _tool_choice(choice, doc.get("parallel_tool_calls"))) is not None:
        out["tool_choice"] = spec


def _stop_sequences(stop: Any) -> list[str] | None:
    if stop is None or isinstance(stop, str):
        return [stop] if stop else None
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return [s for s in stop if s] or None
    raise InvalidRequest("`stop` must be a string or an array of strings.", param="stop")


def _options(doc: dict[str, Any], out: dict[str, Any], max_output: int) -> None:
    """max_tokens, sampling, stop sequences and the end user (the rules in the docstring)."""
    limit = doc.get("max_completion_tokens")
    if limit is None:
        limit = doc.get("max_tokens")
    out["max_tokens"] = limit if limit is not None else max_output or _DEFAULT_MAX_TOKENS
    temperature, top_p = doc.get("temperature"), doc.get("top_p")
    if isinstance(temperature, int | float) and not isinstance(temperature, bool):
        out["temperature"] = min(max(temperature, 0), 1)
    elif temperature is not None:
        out["temperature"] = temperature  # not a number: the upstream says so
    elif top_p is not None:
        out["top_p"] = top_p
    if stop := _stop_sequences(doc.get("stop")):
        out["stop_sequences"] = stop
    user = doc.get("user") or doc.get("safety_identifier")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
