"""What the classifier reads from a chat request: the latest user turn, split into the ask and
any pasted material, plus the little context it needs from the conversation.

Ignored on purpose: system and developer messages (a grand system prompt says nothing about
how hard *this* question is), assistant turns, tool results (role ``tool``, or user turns
holding only non-text parts) and agent boilerplate wrapped in known tags
(``<system-reminder>``, ``<environment_details>``...).

Bounded work: a turn longer than ``_HEAD + _TAIL`` characters is read as its first ``_HEAD``
and last ``_TAIL`` characters (where asks are put), so a 200 KB paste costs what a 6 KB one
does: 50-80 µs here, against 15-25 µs for a typical prompt.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from .signals import has_cjk

_HEAD, _TAIL = 4_000, 2_000
# Beyond this much text outside the ask, the turn is an ask about pasted material.
_PASTE_CHARS = 1_500
# A paragraph (or line) this short at the start or end of a long turn is taken as the ask;
# 600 characters is about 100 words, longer than nearly every instruction we have seen.
_ASK_CHARS = 600
# Before a closing question, this much text is material rather than context of the question.
_MATERIAL_CHARS = 700
_CLOSING_CHARS = 200
# Chinese and Japanese say in one character what takes about three in English.
_CJK_PASTE_CHARS = 400
_PREVIOUS_CHARS = 2_000
_SENTENCE_END = frozenset(".:?!。：？！)")
# Words of an instruction that points at the material it comes with.
_POINTERS = frozenset(
    "this these following below text article memo report notes email code log transcript "
    "draft story essay passage paragraph document clause listing review data table minutes "
    "post contract letter attached snippet excerpt readings values lines entries rows records "
    "results figures thread conversation chat message messages reviews comments feedback "
    "description poem song lyrics speech proposal policy terms agreement invoice receipt "
    "recipe manual instructions page website paper abstract chapter book input output file "
    "csv json config traceback diff patch function program logs dataset survey responses "
    "above bullet bullets points items it them sentence sentences word words title line "
    "lines paragraphs section sections "
    "dies diese diesen dieser dieses folgende folgenden folgendes unten "
    "ce cet cette ces suivant suivante suivants ci-dessous texte "
    "este esta estos estas siguiente siguientes texto abajo "
    "seguinte seguintes abaixo isto "
    "этот эта это эту этого следующий следующего следующую текст ниже".split())
_CJK_POINTERS = ("以下", "次の", "この", "下面", "以下的", "这篇", "这段", "这个", "这份")
_SPACES = str.maketrans(dict.fromkeys(".,:;!?()'\"", " "))
# A quoted passage of some length is material to work on ("put 'why my sourdough stopped
# rising' in title case"); a short quoted term is still the topic ("explain 'CAP theorem'").
# Each branch opens with its quote character, so the regex engine scans for those alone.
_QUOTED = re.compile(r"'(?<!\w')[^'\n]{20,400}'(?!\w)|\"[^\"\n]{20,400}\"|“[^”\n]{20,400}”"
                     r"|«[^»\n]{20,400}»|„[^“\n]{20,400}“|「[^」\n]{8,400}」|『[^』\n]{8,400}』")
_CODE_STARTS = ("def ", "class ", "if ", "for ", "while ", "return", "import ", "from ",
                "const ", "let ", "var ", "function", "public ", "private ", "static ",
                "#include", "}", "@", "//", "else", "try:", "except", "async ", "await ")
_CODE_INSIDE = (" = ", "+=", "==", "=>", "();", "->", "!=", "&&", "||", "::")
# Code and stack traces show within the first few KB of a paste, or at its very end.
_SAMPLE_HEAD, _SAMPLE_TAIL = 1_500, 500
_BOILERPLATE = re.compile(
    r"<(system-reminder|environment_details|env|ide_[a-z_]+|command-[a-z]+"
    r"|local-command-stdout|user-prompt-submit-hook|function_results|tool_result)\b[^>]*>"
    r".*?</\1>", re.DOTALL)
_TEXT_PARTS = ("text", "input_text")
_IMAGE_PARTS = ("image_url", "input_image", "image")


class Reading(NamedTuple):
    """What the classifier reads of the text of one user turn."""

    ask: str           # lower-cased instruction: the turn, or its ask beside pasted material
    sample: str        # lower-cased head and tail of the whole turn (material included)
    fenced: bool       # the turn holds a ``` code fence
    pasted: bool       # long material (text or code) beside the ask
    scale: float       # length of the turn's ask over the length of ``ask`` (read in part)


class Turn(NamedTuple):
    latest: Reading    # the latest user turn with text
    images: int        # image parts in it
    prior_user: int    # user turns with text before it
    previous: str      # the previous user turn (bounded), "" when there is none


def latest_turn(doc: Any) -> Turn | None:
    """The latest user turn with text, or None (no messages, odd shapes, no text at all)."""
    messages = doc.get("messages") if isinstance(doc, dict) else None
    if not isinstance(messages, list):
        return None
    latest: tuple[str, int] | None = None
    previous = ""
    prior = 0
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        if previous:  # older turns only count: no need to read them
            prior += 1
            continue
        text, images = _content(message.get("content"))
        if not text or text.isspace():  # what ``not text.strip()`` says, without a copy
            continue
        if latest is None:
            latest = (text, images)
            continue
        previous = text[:_PREVIOUS_CHARS]
        prior += 1
    if latest is None:
        return None
    return Turn(read(latest[0]), latest[1], prior, previous)


def read(window: str) -> Reading:
    """The ask, a sample and the shape of one turn's (bounded) text."""
    fenced = "```" in window
    if fenced or "\n\n" in window or len(window) > _PASTE_CHARS:
        ask, split = _ask(window, fenced)
    else:
        ask, split = window, False  # one short paragraph: nothing to split off (``_ask``)
    ask = _unquoted(_without_code(ask))
    if len(window) > _SAMPLE_HEAD + _SAMPLE_TAIL:
        sample = (window[:_SAMPLE_HEAD] + "\n" + window[-_SAMPLE_TAIL:]).lower()
    else:
        sample = window.lower()
    material = len(window) - len(ask)
    pasted = (split or fenced) and (
        material > _PASTE_CHARS or (material > _CJK_PASTE_CHARS and has_cjk(window)))
    # Unsplit, the whole turn is the ask even when only its edges were read for keywords.
    scale = 1.0 if split or len(ask) >= len(window) else len(window) / max(1, len(ask))
    # Usually the ask is the whole turn and the sample already its lower-cased text.
    lower = sample if ask is window and len(sample) == len(window) else ask.lower()
    return Reading(lower, sample, fenced, pasted, scale)


def _content(content: Any) -> tuple[str, int]:
    """(text, number of images) of a message's content: a string or a list of parts, read
    within bounds and without agent boilerplate."""
    if isinstance(content, str):
        return _strip_boilerplate(_bounded(content)), 0
    if not isinstance(content, list):
        return "", 0
    texts: list[str] = []
    images = 0
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict):
            kind = part.get("type")
            if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind in _IMAGE_PARTS:
                images += 1
    return _strip_boilerplate(_bounded("\n\n".join(texts))), images


def _strip_boilerplate(text: str) -> str:
    return _BOILERPLATE.sub(" ", text) if "</" in text else text


def _bounded(text: str) -> str:
    if len(text) <= _HEAD + _TAIL:
        return text
    return text[:_HEAD] + "\n\n" + text[-_TAIL:]


def _ask(window: str, fenced: bool) -> tuple[str, bool]:
    """(the instruction part of the turn, whether material was split off), so that the words
    of pasted material do not count as the ask. Prose outside code fences; of a turn of
    several paragraphs (or lines), the opening one when it is a short sentence pointing at
    what follows ("Summarise these notes:", "以下の社内報から…") or a question before long
    material, else a closing question or instruction after long material ("<report> What is
    the date of the incident?"). Otherwise the whole turn is the ask; of a long one only the
    edges are read."""
    prose = "\n\n".join(window.split("```")[::2]) if fenced else window
    parts = _parts(prose)
    if len(parts) >= 2:
        first, last = parts[0].strip(), parts[-1].strip()
        rest = len(prose) - len(first)
        if _points_at_material(first, len(prose)) or (_is_question(first) and rest > _PASTE_CHARS):
            return (first + "\n\n" + last if _is_question(last) else first), True
        if _closes_material(last) and len(prose) - len(last) >= _MATERIAL_CHARS:
            return last, True
    if len(prose) <= _PASTE_CHARS:
        return prose, False
    return _edge(prose, first=True) + "\n\n" + _edge(prose, first=False), False


def _parts(prose: str) -> list[str]:
    """Paragraphs; for a long turn without blank lines, its lines."""
    if "\n\n" in prose:
        return [p for p in prose.split("\n\n") if p.strip()]
    if len(prose) > _PASTE_CHARS and "\n" in prose:
        return [p for p in prose.split("\n") if p.strip()]
    return []


def _unquoted(ask: str) -> str:
    if ask.isascii() and ask.count("'") + ask.count('"') < 2:
        return ask
    return _QUOTED.sub(" ", ask)


def _without_code(prose: str) -> str:
    """Prose without the lines of code pasted into it unfenced."""
    if "\n" not in prose or prose.count("(") + prose.count("=") + prose.count("{") < 2:
        return prose
    lines = prose.split("\n")
    kept = [line for line in lines if not _is_code_line(line)]
    return prose if len(kept) == len(lines) else "\n".join(kept)


def _is_code_line(line: str) -> bool:
    if line.startswith(("    ", "\t")):
        return True
    stripped = line.strip()
    if stripped.startswith(_CODE_STARTS):
        return True
    for marker in _CODE_INSIDE:
        if marker in stripped:
            return True
    return False


def _points_at_material(paragraph: str, total: int) -> bool:
    if len(paragraph) > _ASK_CHARS or total < 3 * len(paragraph):
        return False
    if paragraph[-1] not in _SENTENCE_END:
        return False  # a title or a heading of the material, not an instruction
    return _points_at(paragraph)


def _is_question(paragraph: str) -> bool:
    return len(paragraph) <= _ASK_CHARS and paragraph[-1] in "?？"


def _closes_material(paragraph: str) -> bool:
    """A short closing question, or a closing instruction about the material above."""
    if _is_question(paragraph):
        return True
    return len(paragraph) <= _CLOSING_CHARS and _points_at(paragraph)


def _points_at(paragraph: str) -> bool:
    if not paragraph.isascii() and any(p in paragraph for p in _CJK_POINTERS):
        return True
    return not _POINTERS.isdisjoint(paragraph.lower().translate(_SPACES).split())


def _edge(paragraph: str, first: bool) -> str:
    """A short paragraph whole; else its first (or last) line if short; else a slice."""
    if len(paragraph) <= _ASK_CHARS:
        return paragraph
    lines = paragraph.strip().split("\n")
    line = lines[0] if first else lines[-1]
    if len(line) <= _ASK_CHARS:
        return line
    return line[:_ASK_CHARS // 2] if first else line[-_ASK_CHARS // 2:]
