"""Exact OpenAI token counts, offline, for billing when the upstream gives no ``usage``.

Used when a streaming client disconnects mid-stream or an upstream omits ``usage``: the
usage ledger is then billed from our own count, made with the real BPE tokenizer.

Backend: ``toktok-rs`` (import name ``toktok``). Its vocabularies (cl100k_base, o200k_base)
are compiled into the wheel's extension module, so nothing is downloaded at run time --
unlike ``tiktoken``, which fetches its ``.tiktoken`` files from the internet on first use.
Its counts are id-for-id identical to tiktoken's ``encode_ordinary``.

Encodings by model name (case-insensitive; a ``provider/`` prefix and ``ft:`` fine-tune
wrapper are stripped):

* o200k_base: gpt-4o*, chatgpt-4o*, gpt-4.1*, gpt-4.5*, gpt-5*, o1*, o3*, o4*, gpt-oss*
* cl100k_base: gpt-4* (other), gpt-3.5*, gpt-35* (Azure), text-embedding-*
* anything else (claude-*, llama, mistral, ...): o200k_base, as the best available
  approximation -- we have no tokenizer for those vendors, and o200k is the newest and
  closest general-purpose BPE we can run exactly.

Special-token strings in text (``<|endoftext|>``) are counted as the ordinary text they are,
as the API does for user content.

Loading an encoding takes ~200-300 ms the first time (it is built from the embedded data);
it then stays cached for the life of the process. Call :func:`warm` at start-up so that no
request pays for it. Counting itself is fast (hundreds of MB/s) and releases the GIL.

Nothing here raises on odd input: non-``str`` text counts 0, malformed messages count what
is countable in them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

import toktok  # type: ignore[import-untyped]  # toktok-rs ships no py.typed

__all__ = ["CL100K", "O200K", "count_messages", "count_text", "encoding_for", "warm"]

log = logging.getLogger(__name__)

O200K = "o200k_base"
CL100K = "cl100k_base"

# Checked in order: "gpt-4o" must win over "gpt-4".
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("gpt-4o", O200K), ("chatgpt-4o", O200K), ("gpt-4.1", O200K), ("gpt-4.5", O200K),
    ("gpt-5", O200K), ("o1", O200K), ("o3", O200K), ("o4", O200K), ("gpt-oss", O200K),
    ("gpt-4", CL100K), ("gpt-3.5", CL100K), ("gpt-35", CL100K), ("text-embedding-", CL100K),
)

# OpenAI's documented chat-format overhead (openai-cookbook "How to count tokens with
# tiktoken", num_tokens_from_messages) for every current chat model.
TOKENS_PER_MESSAGE = 3  # <|start|>{role/name}\n{content}<|end|>\n
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3  # every reply is primed with <|start|>assistant<|message|>

_lock = threading.Lock()
_loaded: set[str] = set()


def encoding_for(model: object) -> str:
    """The encoding name used to count tokens for ``model`` (o200k_base when unknown)."""
    if not isinstance(model, str):
        return O200K
    name = model.strip().lower().rsplit("/", 1)[-1]
    if name.startswith("ft:"):  # ft:gpt-4o-mini-2024-07-18:org::id
        name = name[3:]
    for prefix, encoding in _PREFIXES:
        if name.startswith(prefix):
            return encoding
    return O200K


def _load(encoding: str) -> None:
    if encoding in _loaded:
        return
    with _lock:  # one load per encoding, even with concurrent first callers
        if encoding not in _loaded:
            toktok.batch_count([""], encoding, threads=1)
            _loaded.add(encoding)


def warm() -> None:
    """Load both encodings now (~200-300 ms each, ~0.45 s in all) instead of on the first count.

    Unlike the counting functions this raises if the tokenizer is unusable, so a broken
    install fails at start-up rather than silently under-billing later."""
    for encoding in (O200K, CL100K):
        _load(encoding)


def _utf8_safe(text: str) -> str:
    # Lone surrogates can't be UTF-8 encoded; replace them as tiktoken does.
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _count_many(model: object, texts: Iterable[str]) -> int:
    batch = [_utf8_safe(t) for t in texts if t]
    if not batch:
        return 0
    encoding = encoding_for(model)
    try:
        _load(encoding)
        return int(sum(toktok.batch_count(batch, encoding, threads=1)))
    except Exception:  # never fail a request over billing; make the miss visible
        log.exception("token counting failed; using a bytes/4 estimate")
        return sum((len(t.encode("utf-8", "replace")) + 3) // 4 for t in batch)


def count_text(model: str, text: str) -> int:
    """Tokens in ``text`` for ``model``; 0 for empty or non-``str`` text (bytes are decoded)."""
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8", "replace")
    if not isinstance(text, str):
        return 0
    return _count_many(model, (text,))


def _strings(value: Any) -> Iterable[str]:
    """The strings inside ``value`` (str, or nested dicts/lists of them)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


def _content_strings(content: Any) -> Iterable[str]:
    """Text of a message's ``content``: a string, or a list of parts.

    Text parts ({"type": "text", "text": ...}) and refusals count. Image, audio and file
    parts are ignored: their token cost depends on media size/detail, not on any text we
    can tokenize, so a count with them is a lower bound."""
    if isinstance(content, str):
        yield content
    elif isinstance(content, list | tuple):
        for part in content:
            if isinstance(part, str):
                yield part
            elif isinstance(part, dict):
                for key in ("text", "refusal"):
                    if isinstance(part.get(key), str):
                        yield part[key]


def count_messages(model: str, messages: list[Any]) -> int:
    """Prompt tokens of a chat request's ``messages``, with OpenAI's chat-format overhead.

    Per message: 3 tokens plus the tokens of each value (role, content, name, ...), plus 1
    if it has a ``name``; then 3 for the reply priming. ``content`` may be a string or a list
    of parts (see :func:`_content_strings`). Other structured values (``tool_calls``,
    ``function_call``) count the strings they contain -- an approximation, since OpenAI
    doesn't document how it renders them. Non-dict messages are skipped."""
    if not isinstance(messages, list | tuple):
        messages = []
    overhead = REPLY_PRIMING
    texts: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        overhead += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if key == "content":
                texts.extend(_content_strings(value))
            else:
                texts.extend(_strings(value))
            if key == "name":
                overhead += TOKENS_PER_NAME
    return overhead + _count_many(model, texts)
