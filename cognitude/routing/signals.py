"""Evidence in one piece of text: keyword hits (``Lexicon``) and structure (``structure``).

Nothing here weighs anything; ``classifier.py`` turns these counts into weighted signals.

Keyword matching is built for the hot path. The text is lower-cased, punctuation becomes
spaces, and the words go into a set; single-word terms are then one set intersection,
phrases are checked only when their first and last words are present, and Chinese/Japanese
terms (no spaces to split on) are indexed by their first character and checked only when
that character occurs. This costs 2-5 µs a prompt here, where one regex alternation of 95
words already takes 23 µs over 300 characters (there are ~3,500 terms).

Structure (code, stack traces, math notation, lists, questions, requested length) is read
from the ask, and code and traces also from a bounded sample of the pasted material, with
one-character counts and substring tests before any regex.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from .lexicon import BAIT, GROUPS
from .topics import FALSE_FRIENDS, Group

# ASCII punctuation to spaces, on UTF-8 bytes (ASCII bytes never occur inside a multi-byte
# character): 0.2 µs a prompt, where str.translate takes 1.7 µs. "+" and "#" stay so that
# "c++" and "c#" remain words.
_ASCII_PUNCT = b"!\"$%&'()*,-./:;<=>?@[\\]^_`{|}~"
_SEPARATORS = bytes.maketrans(_ASCII_PUNCT, b" " * len(_ASCII_PUNCT))
# A lone surrogate ("\ud800" from a JSON escape) is not UTF-8; carried through, not an error.
_LONE = "surrogatepass"
_OTHER_PUNCT = re.compile("[«»“”‘’„…—–¿¡。、，：；？！（）「」『』【】《》·।]")
# Hiragana, katakana and CJK ideographs: scripts written without spaces.
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def _expand(term: str) -> list[str]:
    """``analy{se,ze}`` → analyse, analyze (several braces multiply)."""
    start = term.find("{")
    if start < 0:
        return [term]
    end = term.index("}", start)
    rests = _expand(term[end + 1:])
    return [term[:start] + alt + rest for alt in term[start + 1:end].split(",") for rest in rests]


def terms(group: Group) -> list[str]:
    return [t for chunk in group for raw in chunk.split("|") for t in _expand(raw.strip()) if t]


def normalise(text: str) -> str:
    """Lower-case words separated by single spaces, padded: `` what s the time ``."""
    return tokenize(text.lower())[0]


def tokenize(lower: str) -> tuple[str, set[str]]:
    """(padded normal form, set of its words) of already lower-cased text."""
    spaced = lower.encode(errors=_LONE).translate(_SEPARATORS).decode(errors=_LONE)
    if not spaced.isascii():
        spaced = _OTHER_PUNCT.sub(" ", spaced)
    tokens = spaced.split()
    return " " + " ".join(tokens) + " ", set(tokens)


def count_digits(text: str) -> int:
    """ASCII digits in the text (a bytes translate: no per-character loop)."""
    encoded = text.encode(errors=_LONE)
    return len(encoded) - len(encoded.translate(None, b"0123456789"))


def has_cjk(text: str) -> bool:
    return not text.isascii() and _CJK.search(text) is not None


class Lexicon:
    """The keyword groups of ``lexicon.py``, indexed for matching (built once at import)."""

    def __init__(self, groups: dict[str, Group]) -> None:
        words: dict[str, list[str]] = {}
        phrases: list[tuple[str, list[str], str]] = []
        cjk: dict[str, list[tuple[str, str]]] = {}
        for group, listing in groups.items():
            # The same word in two languages' lists (en "analyse", fr "analyse") counts once.
            for term in dict.fromkeys(terms(listing)):
                if has_cjk(term):
                    cjk.setdefault(term[0], []).append((term.replace(" ", ""), group))
                    continue
                norm = normalise(term)
                parts = norm.split()
                if len(parts) == 1:
                    words.setdefault(parts[0], []).append(group)
                else:
                    phrases.append((norm, parts, group))
        self._words = {w: tuple(dict.fromkeys(g)) for w, g in words.items()}
        self._phrases = _phrase_index(phrases)
        # One set of every word that starts a look-up, so that a text's words are matched
        # against both kinds of term by one set intersection.
        self._keys = frozenset(self._words) | frozenset(self._phrases)
        self._cjk = {c: tuple(t) for c, t in cjk.items()}
        self._cjk_keys = frozenset(self._cjk)
        self._false = {_key(t): tuple(_key(p) for f in fs for p in _expand(f))
                       for t, fs in FALSE_FRIENDS.items()}
        # Single-word terms that need a second look: they have false friends, or they also
        # occur inside a phrase term and may be part of it ("list" in "linked list").
        inside = {w for _, parts, _ in phrases for w in parts}
        self._careful = frozenset(w for w in self._words
                                  if w in inside or f" {w} " in self._false)

    def scan(self, norm: str, words: set[str], raw: str, cjk: bool) -> dict[str, int]:
        """Group → number of distinct terms of it found in the text."""
        hits: dict[str, int] = {}
        matched: list[str] = []
        careful: list[str] = []
        for word in words & self._keys:
            for phrase, other, group in self._phrases.get(word, ()):
                if other in words and phrase in norm and self._counts(phrase, norm):
                    hits[group] = hits.get(group, 0) + 1
                    matched.append(phrase)
            if word in self._careful:
                careful.append(word)  # once every phrase is known: it may be inside one
                continue
            for group in self._words.get(word, ()):
                hits[group] = hits.get(group, 0) + 1
        for word in careful:
            padded = f" {word} "
            if self._counts(padded, norm) and _outside(padded, matched, norm):
                for group in self._words[word]:
                    hits[group] = hits.get(group, 0) + 1
        if cjk:
            for char in self._cjk_keys.intersection(raw):
                for term, group in self._cjk[char]:
                    if term in raw and self._counts(term, raw):
                        hits[group] = hits.get(group, 0) + 1
        return hits

    def _counts(self, term: str, text: str) -> bool:
        """False when every occurrence is inside an everyday phrase ("proof of purchase")."""
        friends = self._false.get(term)
        if friends is None:
            return True
        return text.count(term) > sum(text.count(f) for f in friends)


def _phrase_index(phrases: list[tuple[str, list[str], str]]
                  ) -> dict[str, tuple[tuple[str, str, str], ...]]:
    """Phrase terms by their rarest word, each with its second rarest: (phrase, word, group).

    A phrase can only occur where all its words do, so any one of them can key it; the rarest
    ("sentences" of "in two sentences", not "in") keeps the phrases looked at per text few,
    and the second word dismisses most of those by a set test before any substring search.
    Rarity is the number of phrase terms a word occurs in, longer words first on a tie."""
    counts: dict[str, int] = {}
    for _, parts, _ in phrases:
        for word in set(parts):
            counts[word] = counts.get(word, 0) + 1
    index: dict[str, list[tuple[str, str, str]]] = {}
    for norm, parts, group in phrases:
        rarest = sorted(set(parts), key=lambda w: (counts[w], -len(w), w))
        index.setdefault(rarest[0], []).append((norm, rarest[-1 if len(rarest) < 2 else 1], group))
    return {w: tuple(p) for w, p in index.items()}


def _outside(padded: str, phrases: list[str], norm: str) -> bool:
    """Whether a word occurs outside the matched phrases ("list" outside "linked list")."""
    if not phrases:
        return True
    inside = [p for p in phrases if padded in p]
    return not inside or norm.count(padded) > sum(norm.count(p) for p in inside)


def _key(term: str) -> str:
    return term if has_cjk(term) else normalise(term)


LEXICON = Lexicon(GROUPS)

_BAIT_TERMS = terms(BAIT)
_BAIT: dict[str, tuple[str, ...]] = {}
# Longest first, so "let s think step by step" goes before "step by step" can split it.
for _phrase in sorted({normalise(t) for t in _BAIT_TERMS if not has_cjk(t)}, key=len,
                      reverse=True):
    _BAIT[_phrase.split()[0]] = (*_BAIT.get(_phrase.split()[0], ()), _phrase)
_BAIT_FIRST = frozenset(_BAIT)
_BAIT_CJK = tuple(sorted((t for t in _BAIT_TERMS if has_cjk(t)), key=len, reverse=True))


def strip_bait(norm: str, words: set[str], raw: str, cjk: bool) -> tuple[str, str]:
    """Remove effort exhortations ("think step by step", "be careful") from both texts."""
    for first in words & _BAIT_FIRST:
        for phrase in _BAIT[first]:
            if phrase in norm:
                norm = norm.replace(phrase, " ")
    if cjk:
        for term in _BAIT_CJK:
            if term in raw:
                raw = raw.replace(term, " ")
    return norm, raw


def word_units(norm: str, raw: str, cjk: bool) -> float:
    """Length in words; a Chinese/Japanese character counts as a third of a word (the usual
    characters-per-word of Japanese, a little over Chinese)."""
    if not cjk:
        return float(norm.count(" ") - 1)
    # CJK characters are the 3-byte ones in UTF-8: no per-character loop needed. Words of
    # other scripts count as words; runs of CJK characters count only by their characters.
    latin = sum(1 for token in norm.split() if token.isascii())
    return latin + (len(raw.encode(errors=_LONE)) - len(raw)) / 6


# ---- structure -------------------------------------------------------------------------

_STACK_MARKERS = ("traceback (most recent", "exception:", "exception in thread", "error:",
                  "error[", "panicked at", "segmentation fault", "core dumped", "\tat ",
                  "\n    at ", 'file "')
# Multi-character syntax that prose does not use; looked for only when the cheap symbol
# count below says the text may be code.
_CODE_SYNTAX = ("=>", "){", ") {", "};", "#include", "console.", "print(", "self.", "this.",
                "::", "!=", "==", "</", "();", "):\n", "+=", "->", "&&", "||", "def ",
                "import ", "return ", "const ", "let ", "var ", "null")
_CODE_SYMBOLS_MIN = 4
_CODE_DENSITY = 100  # at least one of the symbols per 100 characters
_CODE_ENOUGH = 3     # markers that make a code block
_LATEX = re.compile(r"\\(?:frac|int|sum|prod|sqrt|lim|partial|nabla|math[a-z]+|begin|infty"
                    r"|cdot|leq|geq|neq|forall|exists|binom|alpha|beta|theta|lambda|sigma"
                    r"|epsilon|delta|omega|pi)\b")
_MATH_SYMBOLS = re.compile(r"[∫∑∏√∂∇∞≤≥≠∈∀∃⊂⊆∪∩≡≈]")
# An equation with a variable beside a number (x^2, 2x + 3 = 7, f(x) =, dy/dx), looked for
# only in a few characters around each "^", "=" and "/d": a scan of the whole text by this
# pattern costs ~60 µs a KB.
_EQUATION = re.compile(r"[a-z] ?\^ ?[\d({a-z]|\d*[a-z] ?[-+*/] ?\d+ ?=|= ?\d+[a-z]\b"
                       r"|\bf ?\( ?[a-z] ?\) ?=|\bd[a-z] ?/ ?d[a-z]\b")
_EQUATION_MARKS = ("^", "=", "/d")
_EQUATION_CONTEXT = 12
_WORDS_REQUESTED = re.compile(
    r"(\d[\d,.]*)\s?(?:-\s?)?(words?|wörter|worte?n?|mots|palabras|palavras|слов\w*|शब्द|字"
    r"|词|語|pages?|seiten|páginas|страниц\w*)")
_PAGE_WORDS = 400
_DIGIT = re.compile(r"\d")
_MATH_SCAN = 1_000  # the problem statement, not a pasted paper


_UNITS = ("word", "wört", "wort", "mots", "palabra", "palavra", "слов", "शब्द", "字", "词", "語",
          "page", "seite", "página", "страниц")


class Structure(NamedTuple):
    code_markers: int       # distinct code-syntax markers (a fence counts as plenty)
    stack_trace: bool
    math_notation: bool     # LaTeX, math symbols, an equation with a variable
    list_items: int         # lines of the ask that start a numbered or bulleted item
    questions: int          # question marks in the ask
    words_requested: int    # "a 2000-word essay" → 2000; 0 when not stated


def structure(ask: str, sample: str, fenced: bool) -> Structure:
    """Shape of a turn: ``ask`` is its lower-cased instruction, ``sample`` a lower-cased,
    bounded sample of the whole turn (pasted material included) for code and traces."""
    markers = 9 if fenced else _code_markers(sample)
    return Structure(markers, _stack_trace(sample),
                     _math_notation(ask[:_MATH_SCAN], is_code=markers >= 3),
                     _list_items(ask) if "\n" in ask else 0, _questions(ask),
                     _words_requested(ask))


def _stack_trace(text: str) -> bool:
    for marker in _STACK_MARKERS:  # a plain loop: any() over a generator costs 3x here
        if marker in text:
            return True
    return False


def _questions(text: str) -> int:
    """Question marks that end a question (not the ``?`` of a regex or a URL)."""
    if "?" not in text:
        return 0 if text.isascii() else text.count("？")
    count = text.count("? ") + text.count("?\n") + text.endswith("?")
    return count if text.isascii() else count + text.count("？")


def _code_markers(text: str) -> int:
    # One-character counts are the cheapest scan there is; prose rarely has four of these.
    symbols = (text.count("(") + text.count("=") + text.count("{") + text.count(";")
               + text.count("\n    "))
    if symbols < _CODE_SYMBOLS_MIN or symbols * _CODE_DENSITY < len(text):
        return 0
    count = 0
    for marker in _CODE_SYNTAX:
        if marker in text:
            count += 1
            if count == _CODE_ENOUGH:
                break
    return count


def _math_notation(text: str, is_code: bool) -> bool:
    if "\\" in text and _LATEX.search(text):
        return True
    if not text.isascii() and _MATH_SYMBOLS.search(text):
        return True
    if is_code:
        return False  # in code "x = y + 1" is an assignment, not an equation
    for mark in _EQUATION_MARKS:
        start = text.find(mark)
        while start >= 0:
            context = text[max(0, start - _EQUATION_CONTEXT):start + _EQUATION_CONTEXT]
            if _EQUATION.search(context):
                return True
            start = text.find(mark, start + 1)
    return False


def _list_items(text: str) -> int:
    count = 0
    for line in text.split("\n", 200)[:200]:
        item = line.lstrip()[:4]
        if not item:
            continue
        if item[:2] in ("- ", "* ", "• ") or item[0] in "①②③④⑤⑥⑦⑧⑨":
            count += 1
        elif item[0].isdigit():
            rest = item[2:] if item[1:2].isdigit() else item[1:]
            if rest[:1] in (".", ")", "、", "．") and rest[1:2] in (" ", ""):
                count += 1
    return count


def _words_requested(text: str) -> int:
    if not _has_unit(text) or _DIGIT.search(text) is None:
        return 0
    best = 0
    for match in _WORDS_REQUESTED.finditer(text):
        digits = match.group(1).replace(",", "").replace(".", "")
        if not digits.isdigit() or len(digits) > 6:
            continue
        n = int(digits)
        if match.group(2).startswith(("page", "seite", "página", "страниц")):
            n *= _PAGE_WORDS
        best = max(best, n)
    return best


def _has_unit(text: str) -> bool:
    if text.isascii():
        return "word" in text or "page" in text
    for unit in _UNITS:
        if unit in text:
            return True
    return False
