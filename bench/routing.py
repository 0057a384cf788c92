"""Smart-routing benchmark: how well the prompt classifier picks simple / medium / complex.

    .venv/bin/python bench/routing.py [--split tune|holdout|all] [--markdown] [--rounds 50]

Runs ``cognitude.routing.classifier.classify`` on every item of the evaluation set
``bench/routing_eval/prompts.jsonl`` (its README gives the labelling rule, the slices and the
split) and reports, for the ``tune`` split, the ``holdout`` split and all items:

* accuracy; under-routing (complex predicted simple, as % of complex items: a hard request
  answered by an economy model, the costly error); over-routing (simple predicted complex, as %
  of simple items: money spent for nothing); the 3×3 confusion matrix;
* accuracy per slice (the six trap slices marked) and per language;
* decision latency: median and p99 in µs of single ``classify`` calls, each timed with
  ``time.perf_counter_ns``, over ``--rounds`` passes over the whole set after one warm-up pass;
* what ``smart-cost`` saves against sending everything to the premium model, priced from the
  catalog (``load_catalog``) with one representative model per class (``REPRESENTATIVE``),
  prompt tokens estimated as len(message text) / 4 and completion tokens by the item's true
  class (``COMPLETION_TOKENS``: how long an answer is depends on the question, not on the model
  that writes it, so both sides of the ratio price the same tokens); and the same with the true
  labels, the most a perfect classifier could save.

Then checks the targets (``TARGETS``) on the holdout split and prints PASS/FAIL for each. Tuning
must look only at the tune split: with ``--split tune`` the targets are shown against tune,
labelled so. Exit status 0 (it is a report) unless the classifier cannot be imported (2).

``load()`` reads and checks the set; tests import it with ``bench/`` on ``sys.path``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchlib

from cognitude.ledger.pricing import PriceCatalog, load_catalog

EVAL_PATH = Path(__file__).resolve().parent / "routing_eval" / "prompts.jsonl"
CLASSES = ("simple", "medium", "complex")
SPLITS = ("tune", "holdout")
FIELDS = ("id", "messages", "label", "slice", "lang", "split", "why")
TRAP_SLICES = ("short_hard", "long_simple", "reasoning_bait", "keyword_false_positive",
               "trivial_followup", "grand_system_prompt")
# One model per class, priced from the catalog: the tier's usual choice, not its cheapest
# (gpt-4.1-nano is cheaper than gpt-4o-mini), so the saving is not flattered.
REPRESENTATIVE = {"simple": "gpt-4o-mini", "medium": "gpt-4.1-mini", "complex": "gpt-4o"}
TIER_OF = {"simple": "economy", "medium": "standard", "complex": "premium"}
COMPLETION_TOKENS = {"simple": 150, "medium": 500, "complex": 1200}
CHARS_PER_TOKEN = 4
DEFAULT_ROUNDS = 50


# --- the evaluation set --------------------------------------------------------------------

def load(path: Path | str | None = None) -> list[dict[str, Any]]:
    """Every item of the evaluation set, in file order; a malformed line is a ValueError that
    names the file and the line."""
    path = Path(path) if path is not None else EVAL_PATH
    items, seen = [], set()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = _checked(json.loads(line))
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: {exc}") from None
            if item["id"] in seen:
                raise ValueError(f"{path}:{lineno}: duplicate id {item['id']!r}")
            seen.add(item["id"])
            items.append(item)
    return items


def _checked(item: Any) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise ValueError("expected a JSON object")
    missing = [k for k in FIELDS if k not in item]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)}")
    if item["label"] not in CLASSES:
        raise ValueError(f"label {item['label']!r} is not one of {', '.join(CLASSES)}")
    if item["split"] not in SPLITS:
        raise ValueError(f"split {item['split']!r} is not one of {', '.join(SPLITS)}")
    msgs = item["messages"]
    if not isinstance(msgs, list) or not msgs or msgs[-1].get("role") != "user":
        raise ValueError("messages must be a non-empty list ending with a user turn")
    return item


def message_text(messages: Iterable[dict[str, Any]]) -> str:
    """All text of the messages (string contents and text parts), for the token estimate."""
    parts: list[str] = []
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [p.get("text", "") for p in content if isinstance(p, dict)]
    return "\n".join(parts)


# --- running the classifier ----------------------------------------------------------------

Classify = Callable[..., Any]


def import_classifier() -> Classify:
    try:
        from cognitude.routing.classifier import classify
    except ImportError as exc:
        print(f"routing benchmark: cannot import cognitude.routing.classifier ({exc}).\n"
              "The classifier is not there yet; nothing to measure.", file=sys.stderr)
        raise SystemExit(2) from None
    return classify


@dataclass(slots=True)
class Run:
    predicted: list[str]            # class of each item (first call)
    defaulted: list[bool]           # no signal fired, the default class was used
    latencies_ns: list[list[int]]   # per item, one sample per round
    unstable: int                   # items whose class changed between calls
    timer_overhead_ns: int          # median of an empty perf_counter_ns pair


def run(classify: Classify, items: Sequence[dict[str, Any]], rounds: int) -> Run:
    docs = [{"model": "smart-cost", "messages": it["messages"]} for it in items]
    first = []
    for it, doc in zip(items, docs, strict=True):  # also the warm-up pass
        try:
            first.append(classify(doc))
        except Exception as exc:  # name the item: a crash inside the classifier is its bug
            raise RuntimeError(f"classify() failed on item {it['id']!r}") from exc
    predicted = [str(r.cls) for r in first]
    samples: list[list[int]] = [[] for _ in docs]
    unstable: set[int] = set()
    clock = time.perf_counter_ns
    gc.collect()  # start clean; the collector stays on, as in the proxy
    for _ in range(rounds):
        for i, doc in enumerate(docs):
            t0 = clock()
            result = classify(doc)
            t1 = clock()
            samples[i].append(t1 - t0)
            if result.cls != predicted[i]:
                unstable.add(i)
    return Run(predicted, [bool(getattr(r, "defaulted", False)) for r in first], samples,
               len(unstable), _timer_overhead(clock))


def _timer_overhead(clock: Callable[[], int], n: int = 10_000) -> int:
    pairs = []
    for _ in range(n):
        t0 = clock()
        pairs.append(clock() - t0)
    pairs.sort()
    return pairs[n // 2]


# --- cost ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Pricing:
    models: dict[str, str]   # class -> model
    catalog: PriceCatalog

    def cost(self, cls: str, prompt_tokens: int, completion_tokens: int) -> int:
        micros = self.catalog.cost_micros(self.models[cls], prompt_tokens, completion_tokens)
        assert micros is not None  # every model in ``models`` was found in the catalog
        return micros


def pricing() -> Pricing:
    catalog = load_catalog()
    models = {cls: _representative(catalog, cls) for cls in CLASSES}
    return Pricing(models, catalog)


def _representative(catalog: PriceCatalog, cls: str) -> str:
    """``REPRESENTATIVE[cls]`` if the catalog has it, else the cheapest chat model of the
    class's tier (embedding models, which have no output price, are not candidates)."""
    wanted = REPRESENTATIVE[cls]
    if wanted in catalog:
        return wanted
    tier = [p for m in catalog.models() if (p := catalog.get(m)) is not None
            and p.tier == TIER_OF[cls] and p.output_micros_per_mtok > 0 and "/" not in m]
    if not tier:
        raise SystemExit(f"routing benchmark: no {TIER_OF[cls]}-tier model in the catalog")
    return min(tier, key=lambda p: p.input_micros_per_mtok + p.output_micros_per_mtok).model


# --- metrics -------------------------------------------------------------------------------

@dataclass(slots=True)
class Report:
    name: str
    n: int = 0
    correct: int = 0
    defaulted: int = 0
    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)
    by_slice: dict[str, list[int]] = field(default_factory=dict)   # slice -> [correct, n]
    by_lang: dict[str, list[int]] = field(default_factory=dict)
    latencies_ns: list[int] = field(default_factory=list)
    cost_smart: int = 0      # micro-USD, predicted classes
    cost_perfect: int = 0    # micro-USD, true classes
    cost_premium: int = 0    # micro-USD, everything on the premium model

    def add(self, item: dict[str, Any], pred: str, defaulted: bool, lat: list[int],
            prices: Pricing) -> None:
        true, hit = item["label"], int(pred == item["label"])
        self.n += 1
        self.correct += hit
        self.defaulted += defaulted
        self.confusion[true, pred] += 1
        for table, key in ((self.by_slice, item["slice"]), (self.by_lang, item["lang"])):
            cell = table.setdefault(key, [0, 0])
            cell[0] += hit
            cell[1] += 1
        self.latencies_ns += lat
        prompt = len(message_text(item["messages"])) // CHARS_PER_TOKEN
        completion = COMPLETION_TOKENS[true]
        # An unknown predicted class is priced as premium: the router cannot act on it.
        self.cost_smart += prices.cost(pred if pred in CLASSES else "complex", prompt, completion)
        self.cost_perfect += prices.cost(true, prompt, completion)
        self.cost_premium += prices.cost("complex", prompt, completion)

    @property
    def accuracy(self) -> float:
        return _ratio(self.correct, self.n)

    def routed(self, true: str, pred: str) -> float:
        """Share of the ``true`` items that were predicted ``pred``."""
        total = sum(c for (t, _), c in self.confusion.items() if t == true)
        return _ratio(self.confusion[true, pred], total)

    def slice_accuracy(self, name: str) -> float:
        correct, n = self.by_slice.get(name, (0, 0))
        return _ratio(correct, n)

    def latency_us(self, q: float) -> float:
        return benchlib.percentile(sorted(self.latencies_ns), q) / 1000

    @property
    def saved(self) -> float:
        return 1 - _ratio(self.cost_smart, self.cost_premium)

    @property
    def saved_perfect(self) -> float:
        return 1 - _ratio(self.cost_perfect, self.cost_premium)


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def reports(items: Sequence[dict[str, Any]], result: Run, prices: Pricing,
            names: Sequence[str]) -> dict[str, Report]:
    out = {name: Report(name) for name in names}
    for i, item in enumerate(items):
        for name in names:
            if name in ("all", item["split"]):
                out[name].add(item, result.predicted[i], result.defaulted[i],
                              result.latencies_ns[i], prices)
    return out


# --- targets -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Target:
    name: str
    value: Callable[[Report], float]
    ok: Callable[[float], bool]
    unit: str = "%"
    note: Callable[[Report], str] | None = None   # context shown after the measured value


def _trap_target(name: str) -> Target:
    return Target(f"trap slice {name} ≥ 70 %", lambda r: r.slice_accuracy(name),
                  lambda v: v >= 0.70)


TARGETS = (
    Target("accuracy ≥ 85 %", lambda r: r.accuracy, lambda v: v >= 0.85),
    Target("complex→simple ≤ 3 % of complex", lambda r: r.routed("complex", "simple"),
           lambda v: v <= 0.03),
    Target("simple→complex ≤ 10 % of simple", lambda r: r.routed("simple", "complex"),
           lambda v: v <= 0.10),
    *(_trap_target(s) for s in TRAP_SLICES),
    # The perfect classifier's saving is shown beside it: a saving above that ceiling is
    # bought with under-routing, not earned.
    Target("smart-cost saves ≥ 60 % vs always-premium", lambda r: r.saved, lambda v: v >= 0.60,
           note=lambda r: f" (perfect: {_pct(r.saved_perfect)})"),
    Target("median latency < 50 µs", lambda r: r.latency_us(50), lambda v: v < 50, "µs"),
    Target("p99 latency < 200 µs", lambda r: r.latency_us(99), lambda v: v < 200, "µs"),
)


def check(report: Report) -> list[tuple[str, str, str]]:
    """(target, measured, PASS/FAIL) for every target; an unmeasurable one (no items) fails."""
    rows = []
    for t in TARGETS:
        v = t.value(report)
        shown = (_pct(v) if t.unit == "%" else _num(v)) + (t.note(report) if t.note else "")
        rows.append((t.name, shown, "PASS" if not math.isnan(v) and t.ok(v) else "FAIL"))
    return rows


# --- output --------------------------------------------------------------------------------

def _pct(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{100 * v:.1f} %"


def _num(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.1f}"


def _usd(micros: int) -> str:
    return f"${micros / 1_000_000:.4f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> str:
    if markdown:
        return benchlib.markdown_table(header, rows)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths)),
                      *(fmt.format(*r) for r in rows)])


def summary_rows(reps: Sequence[Report]) -> list[list[str]]:
    def row(label: str, f: Callable[[Report], str]) -> list[str]:
        return [label, *(f(r) for r in reps)]

    return [
        row("items", lambda r: str(r.n)),
        row("accuracy", lambda r: _pct(r.accuracy)),
        row("under-routing: complex→simple (% of complex)",
            lambda r: _pct(r.routed("complex", "simple"))),
        row("over-routing: simple→complex (% of simple)",
            lambda r: _pct(r.routed("simple", "complex"))),
        row("no signal (default class used)", lambda r: str(r.defaulted)),
        row("latency median (µs)", lambda r: _num(r.latency_us(50))),
        row("latency p99 (µs)", lambda r: _num(r.latency_us(99))),
        row("cost always-premium", lambda r: _usd(r.cost_premium)),
        row("cost smart-cost (predicted)", lambda r: _usd(r.cost_smart)),
        row("cost smart-cost (true labels)", lambda r: _usd(r.cost_perfect)),
        row("saved by smart-cost", lambda r: _pct(r.saved)),
        row("saved by a perfect classifier", lambda r: _pct(r.saved_perfect)),
    ]


def confusion_rows(rep: Report) -> list[list[str]]:
    return [[f"true {t}", *(str(rep.confusion[t, p]) for p in CLASSES)] for t in CLASSES]


def grouped_rows(reps: Sequence[Report], attr: str, order: Sequence[str],
                 mark: Sequence[str] = ()) -> list[list[str]]:
    rows = []
    for key in order:
        cells = []
        for r in reps:
            correct, n = getattr(r, attr).get(key, (0, 0))
            cells.append(f"{_pct(_ratio(correct, n))} ({n})" if n else "—")
        rows.append([f"{key} (trap)" if key in mark else key, *cells])
    return rows


@dataclass(frozen=True, slots=True)
class Setup:
    data: Path
    rounds: int
    machine: dict[str, str]


def render(reps: dict[str, Report], result: Run, prices: Pricing, setup: Setup,
           markdown: bool) -> str:
    cols = list(reps.values())
    names = [r.name for r in cols]
    slices = sorted({s for r in cols for s in r.by_slice}, key=lambda s: (s in TRAP_SLICES, s))
    langs = sorted({lang for r in cols for lang in r.by_lang}, key=lambda x: (x != "en", x))
    h = (lambda s: f"### {s}") if markdown else (lambda s: f"\n== {s} ==")
    out = ["## Smart routing" if markdown else "Smart routing: prompt classifier benchmark", ""]
    out += _preamble(prices, result, setup, markdown)
    out += [h("Summary"), "", table(["", *names], summary_rows(cols), markdown), ""]
    for r in cols:
        out += [h(f"Confusion matrix ({r.name}; rows true, columns predicted)"), "",
                table(["", *(f"pred {p}" for p in CLASSES)], confusion_rows(r), markdown), ""]
    out += [h("Accuracy per slice (items in brackets)"), "",
            table(["slice", *names], grouped_rows(cols, "by_slice", slices, TRAP_SLICES),
                  markdown), ""]
    out += [h("Accuracy per language"), "",
            table(["lang", *names], grouped_rows(cols, "by_lang", langs), markdown), ""]
    target_rep = reps.get("holdout") or reps.get("tune") or cols[0]
    label = "holdout" if target_rep.name == "holdout" else (
        f"{target_rep.name} — the official check is on holdout")
    out += [h(f"Targets ({label})"), "",
            table(["target", "measured", "result"], check(target_rep), markdown), ""]
    return "\n".join(out)


def _preamble(prices: Pricing, result: Run, setup: Setup, markdown: bool) -> list[str]:
    models = ", ".join(
        f"{cls} → {m} (${_per_mtok(prices, m, 'in')}/${_per_mtok(prices, m, 'out')} per M in/out)"
        for cls, m in prices.models.items())
    tokens = ", ".join(f"{c} {n}" for c, n in COMPLETION_TOKENS.items())
    lines = [
        f"Set: `{_shown(setup.data)}`. Latency: {setup.rounds} passes over the"
        f" whole set after a warm-up pass, one `perf_counter_ns` pair around each `classify`"
        f" call (an empty pair costs {result.timer_overhead_ns} ns here, included), collector"
        f" on. Predictions that changed between calls: {result.unstable}.",
        f"Pricing: {models}; prompt tokens = len(message text) / {CHARS_PER_TOKEN}; completion"
        f" tokens by the item's true class ({tokens}) on both sides of the ratio.",
        "",
    ]
    if markdown:
        lines += [table(["run", ""], [[k, v] for k, v in setup.machine.items()], True), ""]
    return lines


def _shown(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(benchlib.REPO)) if path.is_relative_to(benchlib.REPO) else str(path)


def _per_mtok(prices: Pricing, model: str, side: str) -> str:
    p = prices.catalog.get(model)
    assert p is not None
    micros = p.input_micros_per_mtok if side == "in" else p.output_micros_per_mtok
    return f"{micros / 1_000_000:g}"


# --- entry point ---------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", choices=("tune", "holdout", "all"),
                    help="report only this split (default: tune, holdout and all)")
    ap.add_argument("--markdown", action="store_true",
                    help="print a Markdown section for bench/RESULTS.md")
    ap.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                    help=f"timed passes over the set (default {DEFAULT_ROUNDS})")
    ap.add_argument("--data", type=Path, default=EVAL_PATH, help="the evaluation set (JSONL)")
    args = ap.parse_args(argv)
    classify = import_classifier()
    _, machine = benchlib.begin()
    items = load(args.data)
    names = [args.split] if args.split else ["tune", "holdout", "all"]
    if args.split in SPLITS:  # --split tune must not even run the holdout items
        items = [it for it in items if it["split"] == args.split]
    result = run(classify, items, max(1, args.rounds))
    prices = pricing()
    reps = reports(items, result, prices, names)
    print(render(reps, result, prices, Setup(args.data, max(1, args.rounds), machine),
                 args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
