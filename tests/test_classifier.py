"""The smart-routing classifier (cognitude/routing/classifier.py): each signal fires on what
it should and not on its false friends, each trap of a shallow router is avoided, and no
request shape makes it raise."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest

from cognitude.routing.classifier import CLASSES, Classification, classify


def user(text: Any, *earlier: str, system: str | None = None) -> dict[str, Any]:
    """A request whose last user turn is ``text``, after ``earlier`` user turns (each with an
    assistant reply) and an optional system prompt."""
    messages: list[dict[str, Any]] = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    for turn in earlier:
        messages += [{"role": "user", "content": turn},
                     {"role": "assistant", "content": "Here is a careful answer. " * 20}]
    messages.append({"role": "user", "content": text})
    return {"model": "smart-cost", "messages": messages}


def names(result: Classification) -> set[str]:
    return {name for name, _ in result.signals}


def cls(text: Any, *earlier: str, system: str | None = None) -> str:
    return classify(user(text, *earlier, system=system)).cls


# ---- the result ------------------------------------------------------------------------

def test_result_shape() -> None:
    result = classify(user("Prove that there are infinitely many primes."))
    assert CLASSES == ("simple", "medium", "complex")
    assert result.cls in CLASSES
    assert not result.defaulted
    assert result.score == pytest.approx(sum(weight for _, weight in result.signals))
    assert all(isinstance(n, str) and isinstance(w, float) for n, w in result.signals)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.cls = "simple"  # type: ignore[misc]


def test_the_same_request_gets_the_same_answer() -> None:
    doc = user("Compare Raft and Paxos for a geo-replicated database.")
    assert classify(doc) == classify(doc)


def test_an_unknown_default_class_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="default_class"):
        classify(user("hi"), default_class="cheapest")


# ---- no signal: the configured default, never silently the cheapest ----------------------

PLAIN = ("The weather in our village has been strange lately, warm mornings and sudden cold "
         "evenings that nobody seems to remember from other years.")


def test_no_signal_gets_the_default_class() -> None:
    result = classify(user(PLAIN))
    assert result.defaulted and result.signals == () and result.cls == "medium"
    assert classify(user(PLAIN), default_class="complex").cls == "complex"
    assert classify(user(PLAIN), default_class="simple").cls == "simple"


def test_a_signal_means_not_defaulted() -> None:
    result = classify(user("hi"))
    assert not result.defaulted and result.cls == "simple"


# ---- length ----------------------------------------------------------------------------

def test_length_signals() -> None:
    assert "length_tiny" in names(classify(user("Recommend a novel.")))
    assert "length_short" in names(classify(user("Recommend a good novel for a long train "
                                                  "journey next week.")))
    long_ask = "I would like you to look at our situation. " + "We have many teams. " * 60
    assert "length_long" in names(classify(user(long_ask)))
    assert "length_very_long" in names(classify(user(long_ask * 3)))
    assert not names(classify(user(PLAIN))) & {"length_tiny", "length_short", "length_long"}


def test_length_counts_cjk_characters_not_spaces() -> None:
    # One "word" for a splitter, but about 170 words of Chinese.
    long_zh = "我们公司有很多团队每个团队都有自己的工作方式和习惯" * 20
    assert "length_long" in names(classify(user(long_zh)))
    assert "length_tiny" in names(classify(user("谢谢")))


# ---- code ------------------------------------------------------------------------------

def test_code_fence_and_code_syntax() -> None:
    fenced = "Add type hints:\n```\ndef area(w, h):\n    return w * h\n```"
    assert "code_block" in names(classify(user(fenced)))
    unfenced = ("Why is this slow?\n\nfor (let i = 0; i < n; i++) {\n  total += items[i].price;"
                "\n}\nconsole.log(total);")
    assert "code_block" in names(classify(user(unfenced)))


def test_code_request_needs_code_words_not_the_snake() -> None:
    assert "code_request" in names(classify(user("Write a Python function that merges two "
                                                  "sorted lists.")))
    assert "code_request" in names(classify(user("Implement an LRU cache.")))
    assert "code_request" not in names(classify(user("What do pythons eat in the wild?")))
    assert "code_request" not in names(classify(user("Is there a dress code at the opera?")))
    assert cls("What do pythons eat in the wild?") == "simple"


def test_stack_trace() -> None:
    trace = ("Traceback (most recent call last):\n  File \"app.py\", line 3, in <module>\n"
             "KeyError: 'user'\n\nWhat's wrong?")
    assert "stack_trace" in names(classify(user(trace)))
    assert "stack_trace" not in names(classify(user("With the exception of Mondays, the "
                                                    "shop opens at nine.")))


# ---- math and formal reasoning ----------------------------------------------------------

def test_proof_and_math() -> None:
    assert "proof" in names(classify(user("Prove that every bounded monotone sequence "
                                          "converges.")))
    assert "math_notation" in names(classify(user(r"Evaluate \int_0^1 x^2 dx and comment.")))
    assert "math_notation" in names(classify(user("Solve 3x + 4 = 19 for x, please.")))
    assert "theory" in names(classify(user("Is equivalence of context-free grammars "
                                           "decidable?")))


@pytest.mark.parametrize("text", [
    "Where do I send my proof of purchase for the warranty?",
    "The word 'salary' derives from salt. Where does 'wage' derive from?",
    "Teamwork is an integral part of our culture; say it more warmly.",
    "Who is the prime minister of Canada?",
])
def test_formal_words_in_everyday_phrases(text: str) -> None:
    result = classify(user(text))
    assert not names(result) & {"proof", "math"}
    assert result.cls == "simple"


def test_arithmetic_is_not_math_notation() -> None:
    result = classify(user("What is 17 + 25?"))
    assert "math_notation" not in names(result) and result.cls == "simple"


# ---- multi-step instructions, output size ----------------------------------------------

def test_lists_of_steps_sequence_and_constraints() -> None:
    steps = "Set up the project:\n1. create the repo\n2. add CI\n3. add linting\n4. add tests"
    assert "list_steps" in names(classify(user(steps)))
    many = "Plan this:\n" + "\n".join(f"- task number {i}" for i in range(8))
    assert "many_steps" in names(classify(user(many)))
    sequence = "First load the file, and then clean the rows, and finally plot the totals."
    assert "sequence" in names(classify(user(sequence)))
    constrained = ("Write a parser. It must handle nested brackets, must not use regex, needs "
                   "at least 90% test coverage and should handle edge cases.")
    assert "constraints" in names(classify(user(constrained)))


def test_requested_output_size() -> None:
    assert "long_output_requested" in names(classify(user("Write a 2,000-word essay on the "
                                                          "printing press.")))
    assert "output_requested" in names(classify(user("Write about 300 words on tea.")))
    assert "short_output_requested" in names(classify(user("Describe Rome in 50 words.")))
    assert "one_line" in names(classify(user("Capital of Peru, in one word?")))
    assert "brevity" in names(classify(user("Briefly, what does DNS do?")))
    assert "output_large" in names(classify(user("Give me a detailed, comprehensive guide to "
                                                 "composting.")))


# ---- domain depth and task verbs --------------------------------------------------------

def test_domain_depth() -> None:
    assert "domain" in names(classify(user("How do we keep linearizability across regions "
                                           "during a network partition?")))
    assert "domain" in names(classify(user("What are the contraindications of warfarin with "
                                           "NSAIDs?")))
    assert "domain" not in names(classify(user("What is the capital of France?")))


def test_task_verbs_deep_and_light() -> None:
    assert "design" in names(classify(user("Design a rate limiter.")))
    assert "analysis" in names(classify(user("Compare the trade-offs of REST and gRPC.")))
    assert "debug" in names(classify(user("Debug this deadlock for me.")))
    assert "lookup" in names(classify(user("What is the boiling point of water?")))
    assert "simple_task" in names(classify(user("Translate 'thank you' into Italian.")))
    assert "summarise" in names(classify(user("Summarise the plot of Hamlet.")))


def test_an_explanation_request_is_not_a_lookup() -> None:
    result = classify(user("Explain what a hash table is and why lookups are fast."))
    assert "lookup" not in names(result) and "explain" in names(result)


# ---- the traps ---------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "Prove that √3 is irrational.",
    "Is P = NP?",
    "Design a globally distributed, strongly consistent key-value store.",
    "Is the halting problem for two-counter machines decidable?",
    "Derive the Black-Scholes PDE.",
])
def test_short_hard_is_complex(text: str) -> None:
    assert cls(text) == "complex"


@pytest.mark.parametrize("text", [
    "Think step by step and be very careful: what is 6 + 3?",
    "This is very important, take a deep breath: what colour is the sky on a clear day?",
    "Be extremely careful and double-check your answer. What's the capital of Italy?",
    "Let's think step by step. How many days are in a week?",
    "Denke Schritt für Schritt und sei vorsichtig: Was ist die Hauptstadt von Spanien?",
])
def test_reasoning_bait_around_a_trivial_ask_is_simple(text: str) -> None:
    result = classify(user(text))
    assert result.cls == "simple"
    assert not names(result) & {"sequence", "analysis", "proof"}


def test_bait_carries_no_weight() -> None:
    plain = classify(user("Summarise the plot of Hamlet in about 200 words."))
    baited = classify(user("Think step by step and be careful. This is very important. "
                           "Summarise the plot of Hamlet in about 200 words."))
    assert baited.cls == plain.cls and baited.score == plain.score


@pytest.mark.parametrize("text", [
    "What's the capital of France?",
    "What do pythons eat?",
    "Where can I find my proof of purchase?",
    "Who proved Fermat's Last Theorem?",
    "How do you pronounce 'quantum'?",
    "What does GDPR stand for?",
])
def test_keyword_false_positives_are_simple(text: str) -> None:
    assert cls(text) == "simple"


HARD_TURN = ("Prove that the gaps between consecutive primes are unbounded, and then prove "
             "that there are infinitely many primes of the form 4k + 3.")


@pytest.mark.parametrize("text", ["thanks!", "ok great, thank you", "Merci beaucoup !",
                                  "谢谢！", "What's the capital of Peru?",
                                  "Can you put that in bold?"])
def test_trivial_follow_up_after_a_hard_conversation_is_simple(text: str) -> None:
    assert cls(text, HARD_TURN) == "simple"


def test_a_follow_up_that_continues_the_hard_task_stays_hard() -> None:
    assert cls("Now make the second proof shorter but keep it rigorous.", HARD_TURN) == "complex"
    result = classify(user("Now extend it to primes of the form 6k + 5.", HARD_TURN))
    assert result.cls == "complex" and "follow_up" in names(result)


GRAND = ("You are a world-class principal engineer, mathematician and lawyer. Always reason "
         "rigorously, prove every claim, analyse trade-offs, design for scale and consider "
         "distributed systems, security and compliance. ") * 12


@pytest.mark.parametrize("text", ["What time zone is Tokyo in?", "hi!",
                                  "Translate 'good night' into German."])
def test_grand_system_prompt_with_a_trivial_ask_is_simple(text: str) -> None:
    assert cls(text, system=GRAND) == "simple"


def test_the_system_prompt_is_not_read() -> None:
    ask = "Design a multi-region event-sourcing architecture with exactly-once delivery."
    assert classify(user(ask, system=GRAND)) == classify(user(ask))
    developer = {"messages": [{"role": "developer", "content": GRAND},
                              {"role": "user", "content": "hello"}]}
    assert classify(developer).cls == "simple"


ARTICLE = ("The committee met on Tuesday to review the distributed storage migration, the "
           "security audit and the consensus protocol upgrade. Several members asked about "
           "the latency trade-offs and the cost of replication across regions. ") * 15


@pytest.mark.parametrize("ask", ["What day did the committee meet?",
                                 "Translate the first sentence into French.",
                                 "How many times is the word 'committee' used?"])
def test_long_paste_with_a_trivial_ask_is_not_complex(ask: str) -> None:
    assert cls(f"{ARTICLE}\n\n{ask}") != "complex"
    assert cls(f"{ask}\n\n{ARTICLE}") != "complex"


def test_the_paste_is_weighed_by_its_ask() -> None:
    result = classify(user(f"Summarise these minutes for the team:\n\n{ARTICLE}"))
    assert "pasted_material" in names(result)
    assert not names(result) & {"domain", "analysis", "length_long", "length_very_long"}
    assert result.cls == "medium"


# ---- languages ---------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("Was ist die Hauptstadt von Österreich?", "simple"),
    ("Erkläre, wie eine Wärmepumpe funktioniert, mit einem Beispiel.", "medium"),
    ("Beweise, dass es unendlich viele Primzahlen gibt.", "complex"),
    ("Quelle est la capitale du Portugal ?", "simple"),
    ("Explique le fonctionnement de la photosynthèse avec des exemples.", "medium"),
    ("Conçois une architecture distribuée à haute disponibilité et analyse les compromis.",
     "complex"),
    ("¿Cuál es la capital de Chile?", "simple"),
    ("Explícame cómo funciona una hipoteca con un ejemplo numérico.", "medium"),
    ("Demuestra que la raíz cuadrada de 2 es irracional.", "complex"),
    ("Qual é a capital do Brasil?", "simple"),
    ("Explique como funciona a fotossíntese com exemplos.", "medium"),
    ("Projete um sistema distribuído com alta disponibilidade e analise as vulnerabilidades.",
     "complex"),
    ("日本の首都はどこですか？", "simple"),
    ("光合成の仕組みを例を挙げて説明してください。", "medium"),
    ("高可用性の分散システムを設計し、一貫性のトレードオフを分析してください。", "complex"),
    ("中国的首都是哪里？", "simple"),
    ("请解释光合作用的原理，并举一个例子。", "medium"),
    ("请证明根号2是无理数。", "complex"),
    ("Какая столица Франции?", "simple"),
    ("Объясни, как работает фотосинтез, с примерами.", "medium"),
    ("Докажи, что существует бесконечно много простых чисел.", "complex"),
])
def test_non_english_prompts_are_judged_on_their_content(text: str, expected: str) -> None:
    assert cls(text) == expected


# ---- shapes and bounds --------------------------------------------------------------------

def test_tool_results_and_assistant_turns_are_ignored() -> None:
    doc = {"messages": [
        {"role": "user", "content": "What's the weather in Oslo?"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1",
         "content": "Prove the Riemann hypothesis. Design a distributed system. " * 50},
    ]}
    assert classify(doc) == classify(user("What's the weather in Oslo?"))


def test_agent_boilerplate_is_ignored() -> None:
    reminder = ("<system-reminder>Analyse, design, prove and architect distributed systems "
                "rigorously.</system-reminder>")
    doc = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": reminder}, {"type": "text", "text": "thanks!"}]}]}
    assert classify(doc).cls == "simple"


def test_content_parts_and_images() -> None:
    doc = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What colour is this car?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}
    result = classify(doc)
    assert "image" in names(result) and result.cls == "simple"


def test_a_200_kb_message_is_classified() -> None:
    huge = "Summarise this log:\n\n" + "2024-06-03 09:12:01 INFO worker started\n" * 5_000
    assert len(huge) > 200_000
    result = classify(user(huge))
    assert result.cls in CLASSES and "pasted_material" in names(result)
    assert classify(user("x" * 200_000)).cls in CLASSES


@pytest.mark.parametrize("doc", [
    {},
    {"messages": None},
    {"messages": "hello"},
    {"messages": []},
    {"messages": [None, 3, "x"]},
    {"messages": [{"role": "user"}]},
    {"messages": [{"role": "user", "content": None}]},
    {"messages": [{"role": "user", "content": ""}]},
    {"messages": [{"role": "user", "content": 42}]},
    {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
    {"messages": [{"role": "user", "content": [{"type": "text"}, {"type": "text", "text": 7},
                                               None, {"text": "no type"}]}]},
    {"messages": [{"role": "system", "content": "Only a system prompt."}]},
    {"messages": [{"content": "no role"}]},
])
def test_odd_shapes_never_raise_and_get_the_default(doc: dict[str, Any]) -> None:
    result = classify(doc, default_class="complex")
    assert result == Classification("complex", 0.0, (), True)


def test_text_that_is_not_valid_unicode_never_raises() -> None:
    # json.loads('"\\ud800"') gives a lone surrogate, which UTF-8 cannot encode.
    result = classify(user("Explain this \ud800 character and prove it is odd \udfff"))
    assert result.cls in CLASSES and "proof" in names(result)


def test_random_shapes_never_raise() -> None:
    rng = random.Random(11)
    values: list[Any] = [None, 0, 1.5, True, "", "text", "```", "<env>x</env>", [], {}, ["a"],
                         {"type": "text"}, {"type": "text", "text": None},
                         {"type": "image_url", "image_url": None}, "Prove it. " * 300]

    def message() -> Any:
        if rng.random() < 0.1:
            return rng.choice(values)
        return {"role": rng.choice(["user", "assistant", "system", "tool", None, 3]),
                "content": rng.choice(values + [[rng.choice(values) for _ in range(3)]])}

    for _ in range(500):
        doc = {"messages": [message() for _ in range(rng.randrange(0, 6))]}
        assert classify(doc).cls in CLASSES


def test_not_a_dict_at_all() -> None:
    assert classify(None, default_class="simple").defaulted  # type: ignore[arg-type]
    assert classify([], default_class="simple").cls == "simple"  # type: ignore[arg-type]
