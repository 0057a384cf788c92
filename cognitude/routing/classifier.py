"""Classify a chat request as simple, medium or complex from explainable signals.

Reading (``turns.py``): the latest user turn only - not system or developer prompts, not
tool results, not agent boilerplate - bounded to its first 8 KB and last 4 KB. A long turn is
split into its ask and pasted material ("Summarise these notes:" + notes; a report + "What
date was it?"); code, quoted passages and pasted material are read for their shape only, so a
pasted article's words never count as the ask. Earlier turns are context: their count, and
the previous ask when the latest turn continues it.

Evidence (``signals.py``; keywords in ``lexicon.py`` and ``topics.py``, in nine languages):
every signal that fires adds its weight to one score, listed in ``Classification.signals``.

    score <  SIMPLE_BELOW (0.0)                  → simple
    SIMPLE_BELOW <= score < COMPLEX_FROM (2.5)   → medium
    score >= COMPLEX_FROM                        → complex
    no signal at all                             → default_class, defaulted=True

Scale: one unit is one clear piece of evidence. Cues of a trivial ask - a look-up, a name or
word look-up, a translation or reformatting, "in one word", thanks - weigh -0.5 to -2; cues of
a standard-tier ask - explain, a code request, summarising a long paste, a table, 250+ words -
+0.5 to +1; cues of premium work - analyse/compare, design, a deep domain (distributed
systems, security, law, medicine, finance) - +1.5 each, so that two of them, or one with a
medium cue, reach 2.5; and formal reasoning (prove, derive, decidability, open problems) +2.5
to +3, alone enough, because a short hard prompt is the costliest mistake (it gets no brevity
discount either). Length is weak evidence (-1 to +2): it tips prompts that say little else.
A second distinct term of a group adds a little (the ``(one, two or more)`` pairs). Every
weight is in ``GROUP_WEIGHTS`` / ``WEIGHTS`` below with an example; they were set by hand
and checked on the "tune" split of bench/routing_eval (README there) - not fitted: a
coordinate search over them, run on one half of that split, gained 4 points there and lost
3 on the other half. Measured once on the holdout split: 75.8 % accuracy against 90.7 % on
tune - the word lists grew from the tune split's misses and generalise less than that.

Rules between signals, each for a trap a shallow router falls into:
  * effort bait ("think step by step", "be very careful", "this is very important") is
    removed before matching: it changes nothing;
  * a look-up phrase inside a request to explain or analyse is no look-up ("explain what a
    monad is"), and neither is the question of a problem stated in numbers;
  * thanks and greetings count only when they are the whole turn;
  * a follow-up inherits the previous ask's score (capped at 3.0) when it extends the task
    ("now add deletion"), half of it when it only trims it ("make it shorter"), and nothing
    when it is a closure or a fresh trivial question ("thanks!", "what's GDPR short for?");
  * asking for a short summary of a long paste is still reading the paste: brevity does not
    lower it;
  * a turn with no signal at all gets the configured default class, not the cheapest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .lexicon import OPENERS
from .signals import (
    LEXICON,
    Structure,
    count_digits,
    has_cjk,
    strip_bait,
    structure,
    tokenize,
    word_units,
)
from .turns import Reading, Turn, latest_turn, read

CLASSES = ("simple", "medium", "complex")
SIMPLE_BELOW = 0.0
COMPLEX_FROM = 2.5

# Keyword groups: (weight for one distinct term, weight for two or more).
GROUP_WEIGHTS: dict[str, tuple[float, float]] = {
    "lookup": (-1.0, -1.0),          # what is / how many / where is
    "opener": (-0.5, -0.5),          # the turn opens with what / who / is / does ...
    "name_lookup": (-2.0, -2.0),     # who proved / how do you pronounce / short for
    "simple_task": (-1.0, -1.0),     # translate / list / rephrase / extract one value
    "compute": (-0.5, -0.5),         # calculate / solve / simplify: one worked step
    "summarise": (0.5, 0.5),         # summarise / main points
    "one_line": (-1.0, -1.5),        # in one word / one sentence / yes or no
    "brevity": (-1.0, -1.5),         # briefly / short / two sentences
    "short_form": (-0.5, -0.5),      # a haiku, a joke, a slogan
    "form_constraint": (1.0, 2.0),   # a sonnet in iambic pentameter, a lipogram
    "compose": (0.5, 0.5),           # write / draft (the noun decides how much)
    "howto": (0.5, 0.5),             # how do I / help me
    "why": (0.5, 0.5),
    "explain": (1.0, 1.0),           # explain / describe / the difference between
    "analysis": (1.5, 2.0),          # analyse / compare / trade-offs / argue both sides
    "design": (1.5, 2.0),            # design / architect / optimise / plan
    "debug": (1.0, 1.5),             # bug / crash / memory leak
    "structured": (1.0, 1.0),        # as a table / JSON / columns
    "verify": (1.0, 1.0),            # check whether / is this correct
    "proof": (3.0, 3.5),             # prove / derive / justify / open problems
    "theory": (2.5, 3.0),            # decidable / halting problem / NP-complete
    "math": (0.5, 1.5),              # theorem / eigenvalue / probability
    "domain": (1.5, 2.5),            # distributed systems, security, law, medicine, finance
    "output_large": (1.5, 2.0),      # detailed / essay / comprehensive report
}
WEIGHTS: dict[str, float] = {
    "chitchat": -2.0,                # the whole turn is thanks / hello / ok
    "code_request": 1.0,             # implement / a Python function / a SQL query
    "code_block": 1.0,               # a code fence or several lines of code syntax ...
    "code_block_asked": 0.5,         # ... beside a code request (less news then)
    "stack_trace": 1.0,
    "math_notation": 0.5,            # LaTeX, math symbols, an equation with a variable
    "list_steps": 1.0,               # 3+ numbered or bulleted items
    "many_steps": 2.0,               # 6+ items
    "sequence": 0.5,                 # 2+ of "first", "and then", "finally"
    "constraints": 1.0,              # 3+ of "must", "at least", "without using", edge cases
    "questions": 0.5,                # 2+ questions in one turn
    "quantities": 0.5,               # 5+ distinct numbers: a quantitative problem
    "long_output_requested": 2.0,    # "a 2000-word essay" (800+ words)
    "output_requested": 1.0,         # 250-799 words
    "short_output_requested": -0.5,  # "in 50 words" (100 or fewer)
    "summarise_long": 1.0,           # summarising long pasted material
    "length_tiny": -1.0,             # ≤ 5 words
    "length_short": -0.5,            # ≤ 15 words
    "length_long": 1.0,              # > 120 words of ask (not of paste)
    "length_very_long": 2.0,         # > 300 words of ask
    "pasted_material": 0.5,          # a long text or code beside the ask
    "image": 0.5,
    "conversation_depth": 0.5,       # 3+ earlier user turns
}
# A follow-up that continues the previous task inherits a share of its score, capped; one
# that only trims it ("make it shorter", "in bullets") inherits less.
CARRY_SHARE, CARRY_CAP = 1.0, 3.0
CARRY_TRIM_SHARE, CARRY_TRIM_CAP = 0.5, 2.0
_TINY, _SHORT, _LONG, _VERY_LONG = 5, 15, 120, 300
_QUANTITIES = 5
_CHITCHAT_MAX_UNITS = 10
_FOLLOW_UP_MAX_UNITS = 40
_DEPTH_TURNS = 3
# Groups that may accompany thanks without making it a request ("great, makes sense now").
_CHITCHAT_COMPANIONS = frozenset(("chitchat", "follow_up", "follow_up_trim", "constraint",
                                  "sequence", "brevity", "one_line"))
# A question asking for an explanation or an analysis is not a look-up ("explain what X is").
_DEEPER = frozenset(("explain", "analysis", "design", "proof", "theory"))
_LOOKUPS = frozenset(("lookup", "name_lookup"))
_DIGITS = frozenset("0123456789")
# Formal reasoning is as hard in one line as in ten: "Is P=NP?" gets no brevity discount.
_FORMAL = frozenset(("proof", "theory"))
# A fresh trivial question, not a continuation, even if it says "now" or "also".
_SELF_CONTAINED = frozenset(("lookup", "name_lookup", "simple_task", "brevity", "one_line",
                             "short_form", "chitchat"))

_GROUP_RANK = {group: rank for rank, group in enumerate(GROUP_WEIGHTS)}

Signals = list[tuple[str, float]]


@dataclass(frozen=True, slots=True)
class Classification:
    cls: str                                  # one of CLASSES
    score: float                              # the summed evidence (scale: module docstring)
    signals: tuple[tuple[str, float], ...]    # (name, weight) of every signal that fired
    defaulted: bool                           # no signal fired: default_class was used


def classify(doc: dict[str, Any], default_class: str = "medium") -> Classification:
    """Class of an OpenAI chat-completions request body. Never raises on odd message shapes
    (they get ``default_class``); raises ValueError for a ``default_class`` not in CLASSES."""
    if default_class not in CLASSES:
        raise ValueError(f"default_class must be one of {CLASSES}, not {default_class!r}")
    turn = latest_turn(doc)
    signals = _turn_signals(turn) if turn is not None else []
    if not signals:
        return Classification(default_class, 0.0, (), True)
    score = round(sum([weight for _, weight in signals]), 3)
    return Classification(class_of(score), score, tuple(signals), False)


def class_of(score: float) -> str:
    if score < SIMPLE_BELOW:
        return "simple"
    return "complex" if score >= COMPLEX_FROM else "medium"


def _turn_signals(turn: Turn) -> Signals:
    signals, hits, units = _content_signals(turn.latest)
    carry = _carry(turn, hits, units) if turn.previous else 0.0
    if carry > 0:
        # A follow-up is short because the conversation carries its content.
        signals.append(("follow_up", carry))
    elif _FORMAL.isdisjoint(hits):
        _add_length_signal(signals, units)
    if turn.images:
        signals.append(("image", WEIGHTS["image"]))
    if turn.prior_user >= _DEPTH_TURNS and "chitchat" not in hits:
        signals.append(("conversation_depth", WEIGHTS["conversation_depth"]))
    return signals


def _content_signals(turn: Reading) -> tuple[Signals, dict[str, int], float]:
    """(signals, keyword hits, length in words) of one turn, length signals aside."""
    hits, units = _scan(turn.ask)
    units *= turn.scale
    signals = _keyword_signals(hits, units)
    _add_structure_signals(signals, structure(turn.ask, turn.sample, turn.fenced),
                           "code_request" in hits)
    if turn.pasted:
        signals.append(("pasted_material", WEIGHTS["pasted_material"]))
        if "summarise" in hits:
            # Condensing a long text takes reading, however short the summary asked for.
            signals = [s for s in signals if s[0] not in ("brevity", "short_output_requested")]
            signals.append(("summarise_long", WEIGHTS["summarise_long"]))
    return signals, hits, units


def _scan(raw: str) -> tuple[dict[str, int], float]:
    """(keyword group → distinct hits, length in words) of a lower-cased ask, bait removed."""
    cjk = has_cjk(raw)
    norm, words = tokenize(raw)
    stripped, raw = strip_bait(norm, words, raw, cjk)
    if stripped is not norm:
        norm, words = stripped, set(stripped.split())
    hits = LEXICON.scan(norm, words, raw, cjk)
    if not _DEEPER.isdisjoint(hits):
        hits.pop("lookup", None)
    elif _LOOKUPS.isdisjoint(hits) and norm[1:norm.find(" ", 1)] in OPENERS:
        hits["opener"] = 1
    # Each number word starts with a digit, so fewer digits than _QUANTITIES rule it out
    # without looking at the words.
    if len(words) >= _QUANTITIES and count_digits(norm) >= _QUANTITIES:
        numbers = len([word for word in words if word[0] in _DIGITS])
        if numbers >= _QUANTITIES:
            # A question about a problem stated in numbers is a calculation, not a look-up.
            hits["quantities"] = numbers
            hits.pop("lookup", None)
            hits.pop("opener", None)
    if "code_strong" in hits or hits.get("code_weak", 0) >= 2 or (
            "code_weak" in hits and "compose" in hits):
        # "Write" is part of the code request, not extra prose to write.
        hits.pop("compose", None)
        hits["code_request"] = 1
    return hits, word_units(norm, raw, cjk)


def _keyword_signals(hits: dict[str, int], units: float) -> Signals:
    signals: Signals = []
    # In GROUP_WEIGHTS order: a turn hits a few groups, and sorting those beats a pass over
    # all of them.
    for group in sorted(hits.keys() & GROUP_WEIGHTS.keys(), key=_GROUP_RANK.__getitem__):
        one, more = GROUP_WEIGHTS[group]
        signals.append((group, one if hits[group] == 1 else more))
    if "chitchat" in hits and units <= _CHITCHAT_MAX_UNITS and hits.keys() <= _CHITCHAT_COMPANIONS:
        signals.append(("chitchat", WEIGHTS["chitchat"]))
    if "code_request" in hits:
        signals.append(("code_request", WEIGHTS["code_request"]))
    if "quantities" in hits:
        signals.append(("quantities", WEIGHTS["quantities"]))
    if hits.get("sequence", 0) >= 2:
        signals.append(("sequence", WEIGHTS["sequence"]))
    if hits.get("constraint", 0) >= 3:
        signals.append(("constraints", WEIGHTS["constraints"]))
    return signals


def _add_structure_signals(signals: Signals, shape: Structure, code_request: bool) -> None:
    if shape.code_markers >= 3:
        name = "code_block_asked" if code_request else "code_block"
        signals.append((name, WEIGHTS[name]))
    if shape.stack_trace:
        signals.append(("stack_trace", WEIGHTS["stack_trace"]))
    if shape.math_notation:
        signals.append(("math_notation", WEIGHTS["math_notation"]))
    if shape.questions >= 2:
        signals.append(("questions", WEIGHTS["questions"]))
    if shape.list_items >= 6:
        signals.append(("many_steps", WEIGHTS["many_steps"]))
    elif shape.list_items >= 3:
        signals.append(("list_steps", WEIGHTS["list_steps"]))
    requested = shape.words_requested
    if requested >= 800:
        signals.append(("long_output_requested", WEIGHTS["long_output_requested"]))
    elif requested >= 250:
        signals.append(("output_requested", WEIGHTS["output_requested"]))
    elif 0 < requested <= 100:
        signals.append(("short_output_requested", WEIGHTS["short_output_requested"]))


def _add_length_signal(signals: Signals, units: float) -> None:
    if units <= _TINY:
        signals.append(("length_tiny", WEIGHTS["length_tiny"]))
    elif units <= _SHORT:
        signals.append(("length_short", WEIGHTS["length_short"]))
    elif units > _VERY_LONG:
        signals.append(("length_very_long", WEIGHTS["length_very_long"]))
    elif units > _LONG:
        signals.append(("length_long", WEIGHTS["length_long"]))


def _carry(turn: Turn, hits: dict[str, int], units: float) -> float:
    """Share of the previous turn's score that a continuation of it inherits."""
    if not turn.previous or units > _FOLLOW_UP_MAX_UNITS:
        return 0.0
    if "follow_up_trim" in hits:
        share, cap = CARRY_TRIM_SHARE, CARRY_TRIM_CAP
    elif "follow_up" in hits:
        share, cap = CARRY_SHARE, CARRY_CAP
    else:
        return 0.0
    if not _SELF_CONTAINED.isdisjoint(hits):
        return 0.0
    signals, _, prev_units = _content_signals(read(turn.previous))
    _add_length_signal(signals, prev_units)
    score = sum([weight for _, weight in signals])
    return round(min(cap, share * score), 3) if score > 0 else 0.0
