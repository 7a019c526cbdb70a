"""Known answers for the instruction rule set, per-turn judging (field) and the drop details."""

from __future__ import annotations

import polars as pl
import pytest

from gristmill.common.contract import MESSAGES_DTYPE, share_warnings
from gristmill.common.errors import InputError
from gristmill.curation.instruction_rules import echo, truncation
from gristmill.curation.rulesets import HeuristicsParams, heuristics
from tests.conftest import make_frame

ANSWER = ("Heat the oven to 200 C. Toss the potatoes with oil, salt and rosemary, spread them on a tray and roast "
          "them for 40 minutes, turning once, until they are golden and crisp.")


def _frame(rows: dict[str, tuple[str, str]]) -> pl.DataFrame:
    msgs = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in rows.values()]
    texts = [f"{q}\n\n{a}" for q, a in rows.values()]
    return make_frame(texts, ids=list(rows)).with_columns(pl.Series("messages", msgs, dtype=MESSAGES_DTYPE))


def _drops(rows: dict[str, tuple[str, str]], **params: object) -> dict[str, tuple[str, str]]:
    frame = _frame(rows)
    kept, dropped, stats = heuristics(frame, HeuristicsParams(**params))  # type: ignore[arg-type]
    assert kept.height + dropped.height == frame.height and "detail" not in kept.columns
    assert dropped["detail"].null_count() == 0  # every reason carries its detail
    return {r["id"]: (r["reason"], r["detail"]) for r in dropped.iter_rows(named=True)}


Q = "How do I roast potatoes?"
DEFECTS = {
    "empty": (Q, ""),
    "blank": (Q, "  \n\t "),
    "cut": (Q, ANSWER.split(" roast them")[0]),  # "... spread them on a tray and"
    "fence": ("Write hello world in Python.", "Here it is:\n```python\nprint('hello"),
    "bracket": (Q, "Roast them at 200 C (turning them once, and"),
    "echo": ("Explain how photosynthesis turns light into chemical energy in plants.",
             "Sure! Explain how photosynthesis turns light into chemical energy in plants."),
    "refusal": (Q, "I'm sorry, but I cannot help with that request."),
    "ai": (Q, "As an AI language model, I do not cook, but potatoes are usually roasted."),
    "placeholder_in": ("Write a dialogue.\n\nCaesar: <caesar_speech>", "Caesar: I came, I saw, I conquered."),
    "template": ("Summarize the text.", 'Summary of " + input + " follows.'),
    "your_name": ("Write a short thank-you note.", "Thank you for the lovely dinner.\n\nBest regards,\n[Your Name]"),
    "link": (Q, "https://example.com/roast-potatoes"),
    "cite": (Q, "See [1] https://example.org"),
}
NEAR_MISSES = {
    "short": ("What is the capital of France?", "Paris"),
    "digit": ("What is 2 + 2?", "4"),
    "tool": ("Check the free disk space.", "shell('df -h')"),
    "code": ("Write a Jinja greeting.", "```jinja\nHello {{ name }}!\n```"),
    "poem": ("Write a haiku about leaves.", "Whispers in the breeze\nDancing leaves, a life well-lived\nRoots in earth"),
    "signoff": ("Write a letter as Jane Austen.", "Dear reader, I thank you. Yours sincerely, Jane Austen"),
    "persona": ("Pretend to be an AI language model in 2100.", "As an AI language model from 2100, I learn live."),
    "role_ai": ("Role play as an AI life coach.", "As an AI life coach, I suggest breaking the work into steps."),
    "cant": ("Imagine you found water on Mars.", "I can't believe it! Water, right here under the red dust."),
    "quote_then_answer": ("Translate 'bonjour' to English.", "'Bonjour' means hello."),
    "link_with_text": ("Where can I read the Python tutorial?",
                       "The official tutorial at https://docs.python.org/3/tutorial/ covers the basics step by step."),
    "full": (Q, ANSWER),
}


def test_every_defect_is_dropped_with_its_reason_and_detail() -> None:
    got = _drops(DEFECTS | NEAR_MISSES, rule_sets=["instruction"])
    reasons = {k: v[0].split(".")[1] for k, v in got.items()}
    assert reasons == {
        "empty": "min_response_chars", "blank": "min_response_chars", "cut": "truncated", "fence": "truncated",
        "bracket": "truncated", "echo": "max_echo", "refusal": "refusal", "ai": "refusal",
        "placeholder_in": "placeholder", "template": "placeholder", "your_name": "placeholder",
        "link": "min_words_outside_links", "cite": "min_words_outside_links",
    }
    assert got["empty"][1] == "response_chars=0 < 1"
    assert got["cut"][1] == "ends mid-sentence: '...and rosemary, spread them on a tray and'"
    assert got["fence"][1] == "unclosed code block (1 fences)"
    assert got["echo"][1] == "echo=0.89 > 0.6"
    assert got["ai"][1] == "refusal phrase 'As an AI language model'"
    assert got["placeholder_in"][1] == "placeholder '<caesar_speech>' in user turn 1"
    assert got["link"][1] == "words_outside_links=0 < 5"


def test_thresholds_are_tunable_and_reported() -> None:
    rows = {"echo": DEFECTS["echo"], "link": (Q, "Roast them, see https://example.com")}
    assert set(_drops(rows, rule_sets=["instruction"])) == {"echo", "link"}
    assert _drops(rows, rule_sets=["instruction"], thresholds={"instruction.max_echo": 0.9,
                                                               "instruction.min_words_outside_links": 2}) == {}


def test_known_answers_of_the_helpers() -> None:
    assert truncation("Mix the flour and the") == "ends mid-sentence: '...Mix the flour and the'"
    assert truncation("Done. Then we") == "ends mid-sentence: '...Then we'"
    assert (truncation("Paris"), truncation("shell('df -h')"), truncation(ANSWER)) == (None, None, None)
    assert truncation("He said “wait") == "unclosed '“' (1 opened, 0 closed)"
    assert echo("How do I boil an egg?", "How do I boil an egg?") == 1.0
    assert echo("Boil it for nine minutes.", "How do I boil an egg?") == 0.0
    assert echo("a b c d", "a b c x") == 0.5  # grams (a b c), (b c d): one in the prompt


def test_field_assistant_judges_each_response_turn_on_its_own() -> None:
    lorem = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore."
    rows = {
        "lorem_input": (f"Count the words of this placeholder text.\n\n{lorem}", "The text has fifteen words in it."),
        "french_answer": ("Describe your morning.", "Je me lève tôt, je bois un café et je lis le journal."),
    }
    got = _drops(rows, rule_sets=["language"], field="assistant")
    assert set(got) == {"french_answer"}
    assert got["french_answer"][0] == "language.wrong_language"
    assert got["french_answer"][1].startswith("turn 2: language=fr (")
    assert got["french_answer"][1].endswith("not in ['en']")
    # judging the whole text instead, the Latin input takes over the row
    assert "lorem_input" in _drops(rows, rule_sets=["language"])


def test_field_turns_with_document_rules_and_gopher_detail() -> None:
    long_answer = " ".join(["The council, the mayor and the residents (all 12) agreed, for now."] * 8)
    rows = {"long": (Q, long_answer), "numbers": (Q, "Numbers: " + " ".join(["2024"] * 60) + " and the end.")}
    got = _drops(rows, rule_sets=["gopher_quality"], field="assistant")
    assert set(got) == {"numbers"}  # punctuation is no word: "long" has 96% alphabetic words
    assert got["numbers"] == ("gopher_quality.min_alpha_words", "turn 2: alpha_words=0.0625 < 0.8")


def test_instruction_rules_need_messages() -> None:
    with pytest.raises(InputError, match="instruction rule set"):
        heuristics(make_frame(["x"]), HeuristicsParams(rule_sets=["instruction"]))
    with pytest.raises(InputError, match="messages"):
        heuristics(make_frame(["x"]), HeuristicsParams(rule_sets=["c4"], field="assistant"))


def test_share_warning_names_the_rule() -> None:
    assert share_warnings({"a.b": 3, "c.d": 2}, 10, "rule") == [
        "rule a.b hits 3 of 10 input rows (30%, over 20%): check that it fits this data"]
    assert share_warnings({"a.b": 3}, 0) == []
    frame = _frame({"a": (Q, ""), "b": (Q, ANSWER)})
    stats = heuristics(frame, HeuristicsParams(rule_sets=["instruction"])).stats
    assert stats["warnings"] == ["rule instruction.min_response_chars hits 1 of 2 input rows (50%, over 20%): "
                                 "check that it fits this data"]


def test_short_turns_are_not_judged_by_document_rules() -> None:
    rows = {"paris": ("What is the capital of France?", "Paris"), "tool": ("List files.", "shell('ls -la')"),
            "french": ("Describe your morning.", "Je me lève tôt, je bois un café et je lis le journal du matin.")}
    assert set(_drops(rows, rule_sets=["language"], field="assistant", code_aware=False)) == set(rows)
    assert set(_drops(rows, rule_sets=["language"], field="assistant")) == {"paris", "french"}  # a call: no prose
    got = _drops(rows, rule_sets=["language", "gopher_repetition"], field="assistant", min_words_judged=8)
    assert set(got) == {"french"}
    frame = make_frame(["Paris", "Je me lève tôt, je bois un café et je lis le journal du matin."])
    _, dropped, _ = heuristics(frame, HeuristicsParams(rule_sets=["language"], min_words_judged=8))
    assert dropped["id"].to_list() == ["r1"] and dropped["detail"][0].startswith("language=fr (")


# ---- code-, tool-call- and math-aware character classes (code_aware, textstats.prose) ----

PY_ANSWER = ("Here is a function that returns the square of a number:\n\n```python\ndef square(x: float) -> float:\n"
             "    # multiply the number by itself\n    return x * x\n```\n\nCall it as `square(3)` to get 9.")
NEAR_MISSES = {  # answers the document rule sets must keep when they judge each assistant turn
    "python": ("Write a Python function that squares a number.", PY_ANSWER),
    "python_bare": ("Write a Python function that squares a number.",
                    "def square(x):\n    # the square, for ints and floats alike\n    return x * x"),
    "tool": ("Check how much disk space is free.", "shell('df -h')"),
    "tool_json": ("What is the weather in Paris?",
                  '{"tool": "get_weather", "arguments": {"city": "Paris", "unit": "celsius", "days": 3}}'),
    "json": ("Convert the list to a JSON object with counts.", '{"apples": 3, "pears": 5, "plums": [1, 2, {"x": 0}]}'),
    "shell": ("How do I list hidden files and check disk usage?",
              "$ ls -la ~\n$ du -sh ~/.cache\n$ df -h /"),
    "latex": ("Give the quadratic formula.",
              "The roots of $ax^2 + bx + c = 0$ are\n\n$$x = \\frac{-b \\pm \\sqrt{b^2 - 4ac}}{2a}$$\n\n"
              "and they are real when the discriminant $b^2 - 4ac \\ge 0$."),
}
JUNK = {  # must still drop: junk prose is judged even beside code
    "symbols": ("Explain recursion.", "### ### ### !!! ??? $$$ %%% &&& *** 123 456 789 000 ... ;;; @@@ +++ === --- 111 "
                "222 333 444 555 666 777 888 999 12 34 56 78 90 13 24 35 46 57 68 79 80 91 a b c"),
    "lorem_beside_code": ("Write a Python function that squares a number.",
                          "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt "
                          "ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation.\n\n"
                          "```python\ndef square(x):\n    return x * x\n```"),
    "repeated_beside_json": ("Convert the list to JSON.", "Here is the JSON you asked for. " * 8 + '\n\n{"a": 1}'),
}
DOCUMENT_SETS = ["gopher_quality", "gopher_repetition", "c4", "fineweb_quality", "language"]
TURNS = {"rule_sets": DOCUMENT_SETS, "field": "assistant", "min_words_judged": 20,
         "thresholds": {"gopher_quality.min_words": 20, "c4.min_sentences": 1}}
"""Every document rule set on each answer, as recipes/instruct.yaml judges turns (short texts are not judged)."""


def test_prose_view_known_answers() -> None:
    from gristmill.curation.textstats import prose, prose_of

    cases = {
        "shell('df -h')": "",
        '{"a": 1, "b": [1, 2]}': "",
        "Run `ls -la` now.": "Run   now.",
        "$x^2 + 1$ is positive.": "  is positive.",
        "def f(x):\n    return x": " \n ",
        "The cost is $5 and $10 today.": "The cost is $5 and $10 today.",  # money is no math
        "Ingredients:\n- flour\n- water": "Ingredients:\n- flour\n- water",
        "I think (maybe) so.": "I think (maybe) so.",
    }
    assert {t: prose_of(t) for t in cases} == cases
    vectorized = pl.DataFrame({"t": list(cases)}).select(prose(pl.col("t")).alias("t"))["t"].to_list()
    assert vectorized == list(cases.values())  # one set of regexes, two engines, the same answer


def test_code_tool_json_and_math_answers_are_kept_by_document_rules() -> None:
    raw = _drops(NEAR_MISSES, **TURNS, code_aware=False)  # code counted as prose
    assert raw == {"python": ("fineweb_quality.min_line_punct_ratio", "turn 2: line_punct_ratio=0.1111 <= 0.12"),
                   "latex": ("gopher_quality.min_mean_word_length", "turn 2: mean_word_length=2.6667 < 3")}
    assert _drops(NEAR_MISSES, **TURNS) == {}  # code_aware is the default on turns
    assert _drops(NEAR_MISSES, **{**TURNS, "min_words_judged": 0, "thresholds": {}}) == {  # judged without a floor,
        k: ("gopher_quality.min_words", d) for k, d in (  # only the prose answers are judged (and too short):
            ("python", "turn 2: words=17 < 50"), ("latex", "turn 2: words=11 < 50"))}  # no code, call or JSON
    assert _drops(NEAR_MISSES, rule_sets=["instruction"]) == {}


def test_junk_still_drops_with_code_aware_rules() -> None:
    assert _drops(JUNK, **TURNS) == {
        "symbols": ("gopher_quality.min_mean_word_length", "turn 2: mean_word_length=2.3333 < 3"),
        "lorem_beside_code": ("gopher_quality.min_stop_words", "turn 2: stop_words=0 < 2"),
        "repeated_beside_json": ("gopher_repetition.max_top_2gram_frac", "turn 2: top_2gram_frac=0.2162 > 0.2")}


def test_code_aware_defaults_by_field_and_a_link_inside_code_is_no_link_only_answer() -> None:
    assert HeuristicsParams(rule_sets=["c4"]).judges_prose is False  # web documents: datatrove's counts
    assert HeuristicsParams(rule_sets=["c4"], field="assistant").judges_prose is True
    rows = {"browse": ("Open the Python tutorial.", 'browse("https://docs.python.org/3/tutorial/")'),
            "link": ("Where is the tutorial?", "See https://docs.python.org/3/tutorial/")}
    assert {k: v[0] for k, v in _drops(rows, rule_sets=["instruction"]).items()} == {
        "link": "instruction.min_words_outside_links"}


def test_refusal_and_placeholder_wordings_beyond_the_evaluation_set() -> None:
    """Wordings the bench's held-out split showed the first patterns missed (curation_quality.py heldout)."""
    defects = {
        "wont": (Q, "I won't be able to take part in this role-play."),
        "not_able": (Q, "I'm not able to help with this one."),
        "like_to": (Q, "As much as I'd like to, I can't write that for you."),
        "not_something": (Q, "That's not something I can help with, sorry."),
        "artificial": (Q, "As an artificial intelligence, I do not have a kitchen, but roast them at 200 C."),
        "customer": ("Write a reply to a customer.", "Hi [Customer Name],\n\nThank you for your order."),
        "astronaut": ("Greet the aliens.", "Greetings from Earth.\n\nSincerely,\n[Astronaut Name]"),
    }
    near = {
        "help_but": ("Imagine you see the sea.", "I can't help but smile at the sight of the waves."),
        "stage": ("Act out a scene.", "[Sighs] Well then, let us begin the long journey home."),
        "in_character": ("Role play as a guard.", "You cannot pass, traveler, the gate is closed at night."),
    }
    got = _drops(defects | near, rule_sets=["instruction"])
    assert {k: v[0] for k, v in got.items()} == {
        **{k: "instruction.refusal" for k in ("wont", "not_able", "like_to", "not_something", "artificial")},
        "customer": "instruction.placeholder", "astronaut": "instruction.placeholder"}
    assert got["customer"][1] == "placeholder '[Customer Name]' in assistant turn 2"
