from __future__ import annotations

import polars as pl
import pytest
from pydantic import ValidationError

from gristmill.curation import textstats as ts
from gristmill.curation.language import detect
from gristmill.curation.rulesets import RULES, TUNABLE, HeuristicsParams, heuristics
from tests.conftest import make_frame

GOOD = (
    "The city council met on Tuesday evening to review the budget for the new public library.\n"
    "Members agreed that the project should have stable funding, with support from local families and firms.\n"
    "Construction is expected to begin in early spring, and the building will open to readers next autumn.\n"
    "The architects presented plans for bright reading rooms, a children's corner and a quiet study hall.\n"
    "Several residents asked whether the old branch would stay open during the work, and officials said yes.\n"
)
"""Five one-sentence lines of ordinary English: passes every rule set with the published thresholds."""
LINES = GOOD.splitlines()


def _run(rows: dict[str, str], **params: object) -> tuple[dict[str, str], dict[str, int], dict]:
    """Run ``heuristics`` on rows keyed by id; return {id: reason} of the dropped, broken_by_rule and stats."""
    frame = make_frame(list(rows.values()), ids=list(rows))
    kept, dropped, stats = heuristics(frame, HeuristicsParams(**params))
    _accounted(frame, kept, dropped, stats)
    return dict(zip(dropped["id"], dropped["reason"], strict=True)), stats["broken_by_rule"], stats


def _accounted(frame: pl.DataFrame, kept: pl.DataFrame, dropped: pl.DataFrame, stats: dict) -> None:
    assert stats["rows_in"] == frame.height == kept.height + dropped.height
    assert (stats["kept"], stats["dropped"]) == (kept.height, dropped.height)
    assert sum(stats["dropped_by_reason"].values()) == dropped.height
    assert dropped["reason"].null_count() == 0
    assert sorted(kept["id"].to_list() + dropped["id"].to_list()) == sorted(frame["id"].to_list())


def _only(broken: dict[str, int], **counts: int) -> dict[str, int]:
    """``broken`` restricted to its non-zero entries, keyed by the rule's short name (after the dot)."""
    assert {k.split(".")[1]: v for k, v in broken.items() if v} == counts
    return broken


# ---- metric helpers: the worked examples of their docstrings ----


def _eval(expr_fn: object, *texts: str) -> list[object]:
    return pl.DataFrame({"t": list(texts)}).select(expr_fn(pl.col("t"))).to_series().to_list()  # type: ignore[operator]


def test_token_and_word_metrics_known_answer() -> None:
    assert _eval(ts.token_count, "Hello, world...") == [4]
    assert _eval(ts.word_count, "Hello, world...") == [2]
    assert _eval(ts.mean_word_length, "a bb, ccc!", "...") == [2.0, None]
    assert _eval(ts.alpha_word_ratio, "abc 123 4x ,") == [2 / 3]
    assert _eval(ts.alpha_word_count, "abc 123 4x ,") == [2]
    assert pl.select(ts.safe_ratio(pl.lit(1), pl.lit(4)), ts.safe_ratio(pl.lit(1), pl.lit(0)).alias("z")).row(0) == (
        0.25, None)


def test_line_metrics_known_answer() -> None:
    assert _eval(ts.line_count, "a\nb\n", "a\n\nb", "") == [2, 3, 1]
    assert _eval(ts.bullet_line_count, " - a\nb\n• c") == [2]
    assert _eval(ts.ellipsis_line_count, "a...\nb…  \nc.") == [2]
    assert _eval(ts.ellipsis_count, "a.... b… c......") == [4]
    assert _eval(ts.split_lines, "a\n\nb") == [["a", "", "b"]]
    assert _eval(ts.split_line_runs, "a\n\nb\n") == [["a", "b", ""]]
    assert _eval(ts.split_paragraphs, " a\nb\n\n\nc\n") == [["a\nb", "c"]]
    assert _eval(ts.sentence_count, "It rained. We left! OK.", "Mr. Smith left.") == [3, 2]


def test_duplicate_metrics_known_answer() -> None:
    parts = pl.Series([["a", "b", "a", "a"], ["ab", "c", "ab", "ab"], []], dtype=pl.List(pl.String))
    assert pl.select(ts.duplicate_count(pl.lit(parts))).to_series().to_list() == [2, 2, 0]
    assert pl.select(ts.duplicate_chars(pl.lit(parts))).to_series().to_list() == [2, 4, 0]


def test_ngram_metrics_known_answer() -> None:
    assert ts.top_ngram_chars(["a", "b", "a", "b", "a"], 2) == 6
    assert ts.top_ngram_chars(["one"], 2) == 0
    assert ts.top_ngram_chars(["xx", "y", "z", "xx", "y"], 2) == 4 * 2
    assert ts.dup_ngram_chars(["a", "b", "c", "a", "b", "c", "a", "b"], 3) == 3
    assert ts.dup_ngram_chars(["ab", "c", "a", "bc"], 2) == 0  # datatrove's "".join would call "abc" a repeat
    assert ts.dup_ngram_chars_many(["a", "b", "c", "a", "b", "c"], (2, 3, 4)) == [2, 3, 0]
    assert ts.dup_ngram_chars_many(["a", "b", "c", "d"], (2, 3)) == [0, 0]


# ---- rule sets ----


def test_gopher_quality_rules() -> None:
    rows = {
        "good": GOOD,
        "empty": "",
        "few": "The tired horse and the young dog slept.",
        "short_words": " ".join(["we go to it and be on the up of a ox"] * 5),
        "long_words": " ".join(["the internationalization of telecommunications infrastructure accountability"] * 10),
        "hashes": GOOD + " ".join(["##tag"] * 8),
        "ellipses": GOOD + " ".join(["so......"] * 8) + " end.",
        "bullets": "\n".join("- " + line for line in LINES),
        "ellipsis_lines": "\n".join([*LINES[:3], LINES[3][:-1] + "...", LINES[4][:-1] + "…"]),
        "numbers": GOOD + " ".join(["2024"] * 40),
        "no_stop_words": " ".join(["Bright reading rooms delight curious children every single morning."] * 6),
    }
    reasons, broken, _ = _run(rows, rule_sets=["gopher_quality"])
    assert reasons == {
        "empty": "gopher_quality.min_words",
        "few": "gopher_quality.min_words",
        "short_words": "gopher_quality.min_mean_word_length",
        "long_words": "gopher_quality.max_mean_word_length",
        "hashes": "gopher_quality.max_hash_ratio",
        "ellipses": "gopher_quality.max_ellipsis_ratio",
        "bullets": "gopher_quality.max_bullet_lines",
        "ellipsis_lines": "gopher_quality.max_ellipsis_lines",
        "numbers": "gopher_quality.min_alpha_words",
        "no_stop_words": "gopher_quality.min_stop_words",
    }
    # the empty text has no words: its ratios are undefined and break nothing, its counts break two rules
    _only(broken, min_words=2, min_mean_word_length=1, max_mean_word_length=1, max_hash_ratio=1,
          max_ellipsis_ratio=1, max_bullet_lines=1, max_ellipsis_lines=1, min_alpha_words=1, min_stop_words=2)
    assert set(broken) == {r.name for r in RULES["gopher_quality"]}  # zeros are listed too


def test_gopher_repetition_rules() -> None:
    rows = {
        "good": GOOD,
        "lines": GOOD + "Read more.\n" * 5,  # 11 lines (\n+ split, trailing ""), 4 repeats: 0.36 > 0.30
        "paras": f"{LINES[0]}\n\n{LINES[1]}\n\n{LINES[0]}\n\n{LINES[0]}",  # half the paragraphs repeat
        "short": "hello world",  # its one 2-gram covers all of it: short texts fail Gopher repetition
        "ngrams": GOOD + LINES[0] + " " + LINES[1],  # two sentences again, on one new line
    }
    reasons, broken, _ = _run(rows, rule_sets=["gopher_repetition"])
    assert reasons == {
        "lines": "gopher_repetition.max_dup_line_frac",
        "paras": "gopher_repetition.max_dup_para_frac",
        "short": "gopher_repetition.max_top_2gram_frac",
        "ngrams": "gopher_repetition.max_dup_5gram_frac",
    }
    dup_ngrams = {f"max_dup_{n}gram_frac": 2 for n in range(5, 11)}  # paras and ngrams
    _only(broken, max_dup_para_frac=1, max_dup_para_char_frac=1, max_dup_line_frac=2, max_dup_line_char_frac=1,
          max_top_2gram_frac=1, max_top_4gram_frac=1, **dup_ngrams)


def test_c4_rules() -> None:
    rows = {
        "good": GOOD,
        "cited": "\n".join(line + "[1]" for line in LINES),  # citations are cut before the punctuation check
        "four": "\n".join(LINES[:4]),
        "lorem": GOOD + "Lorem ipsum dolor sit amet.",
        "lorem_in_a_left_out_line": GOOD + "lorem ipsum",  # no terminal punctuation: never looked at
        "curly": GOOD + "The settings file uses {braces} here.",
        "javascript": "\n".join(LINES[:4]) + "\nPlease enable JavaScript {now} to read this.",
        "policy": "\n".join(LINES[:4]) + "\nRead our privacy policy before you go.",
        "one_line": "It rained. We left early. The end came soon. Then it snowed! Would it stop? Nobody knew.",
    }
    reasons, broken, stats = _run(rows, rule_sets=["c4"])
    assert reasons == {
        "four": "c4.min_sentences",
        "lorem": "c4.lorem_ipsum",
        "curly": "c4.curly_bracket",
        "javascript": "c4.min_sentences",  # its line is left out (before the curly check), 4 sentences remain
        "policy": "c4.min_sentences",
    }
    _only(broken, lorem_ipsum=1, curly_bracket=1, min_sentences=3)
    assert stats["c4_lines"] == {
        "total": 43, "too_long_word": 0, "no_terminal_punct": 1, "too_few_words": 0, "lorem_ipsum": 1,
        "javascript": 1, "curly_bracket": 1, "policy": 1, "kept": 38,
    }


def test_c4_line_settings_and_long_words() -> None:
    long_word = "x" * 1001
    rows = {"good": GOOD, "long": GOOD.replace("budget", long_word), "two_word_lines": "Go now.\n" * 6}
    reasons, _, stats = _run(rows, rule_sets=["c4"])
    assert reasons == {"long": "c4.min_sentences", "two_word_lines": "c4.min_sentences"}
    assert stats["c4_lines"]["too_long_word"] == 1 and stats["c4_lines"]["too_few_words"] == 6
    reasons, _, _ = _run(rows, rule_sets=["c4"], thresholds={"c4.max_word_length": 2000, "c4.min_words_per_line": 2})
    assert reasons == {}


def test_fineweb_quality_rules() -> None:
    rows = {
        "good": GOOD,
        "no_punct": "\n".join(line.rstrip(".") for line in LINES),
        "short_lines": "\n".join(f"Short line number {w}." for w in ["one", "two", "three", "four", "five", "six"]),
        "dup_line": GOOD + LINES[0],
        "list": "".join(f"{a} {b}.\n" for a, b in [
            ("Internationalization", "characterization"), ("Telecommunications", "institutionalization"),
            ("Counterrevolutionary", "misunderstandings"), ("Disproportionately", "uncharacteristically"),
            ("Electroencephalography", "interdisciplinary"), ("Overintellectualization", "incomprehensibility")]),
    }
    reasons, broken, _ = _run(rows, rule_sets=["fineweb_quality"])
    assert reasons == {
        "no_punct": "fineweb_quality.min_line_punct_ratio",
        "short_lines": "fineweb_quality.max_short_line_ratio",
        "dup_line": "fineweb_quality.max_char_dup_ratio",
        "list": "fineweb_quality.max_list_ratio",
    }
    _only(broken, min_line_punct_ratio=1, max_short_line_ratio=1, max_char_dup_ratio=1, max_list_ratio=1)
    reasons, _, _ = _run(rows, rule_sets=["fineweb_quality"], thresholds={"fineweb_quality.short_line_length": 10})
    assert "short_lines" not in reasons


SENTENCES = {
    "en": "The weather was lovely this morning, so we walked along the river to the old market.",
    "fr": "Le temps était magnifique ce matin, alors nous avons marché le long de la rivière jusqu'au marché.",
    "de": "Das Wetter war heute Morgen herrlich, also sind wir am Fluss entlang zum alten Markt gelaufen.",
    "blank": "   ",
}


def test_language_rule_set_writes_meta_and_keeps_listed_languages() -> None:
    frame = make_frame(list(SENTENCES.values()), ids=list(SENTENCES))
    kept, dropped, stats = heuristics(frame, HeuristicsParams(rule_sets=["language"], languages=["en", "fr"]))
    _accounted(frame, kept, dropped, stats)
    assert kept["id"].to_list() == ["en", "fr"]
    assert dict(zip(dropped["id"], dropped["reason"], strict=True)) == {
        "de": "language.wrong_language", "blank": "language.wrong_language"}
    assert stats["broken_by_rule"] == {"language.wrong_language": 2, "language.low_score": 1}
    meta = pl.concat([kept, dropped.drop("reason", "detail")]).sort("id")["meta"]
    assert meta.struct.field("language").to_list() == ["und", "de", "en", "fr"]
    scores = meta.struct.field("language_score").to_list()
    assert scores[0] == 0.0 and all(s > 0.9 for s in scores[1:])
    assert meta.struct.field("source_line").to_list() == [4, 3, 1, 2]  # other meta fields survive
    assert stats["detected_languages"] == {"en": 1, "fr": 1, "de": 1, "und": 1}


def test_language_any_language_and_min_score() -> None:
    reasons, broken, _ = _run(SENTENCES, rule_sets=["language"], languages=[])
    assert reasons == {"blank": "language.low_score"}
    reasons, _, _ = _run(SENTENCES, rule_sets=["language"], languages=[], min_language_score=0.999999)
    assert set(reasons) == set(SENTENCES) and set(reasons.values()) == {"language.low_score"}
    assert detect(["Le chat est assis sur le tapis et regarde les oiseaux.", None])[0] == ["fr", "und"]


def test_language_code_unknown_to_the_model() -> None:
    with pytest.raises(ValueError, match=r"unknown language code\(s\) \['qq'\]"):
        heuristics(make_frame(["Hello there, friend."]), HeuristicsParams(rule_sets=["language"], languages=["qq"]))


# ---- params ----


def test_threshold_overrides_take_effect() -> None:
    assert _run({"good": GOOD}, rule_sets=["gopher_quality"])[0] == {}
    reasons, _, stats = _run({"good": GOOD}, rule_sets=["gopher_quality"],
                             thresholds={"gopher_quality.max_words": 60})
    assert reasons == {"good": "gopher_quality.max_words"}
    assert stats["thresholds"]["gopher_quality.max_words"] == 60
    assert stats["thresholds"]["gopher_quality.min_words"] == 50  # published default where not overridden


def test_threshold_validation_reports_every_problem() -> None:
    with pytest.raises(ValidationError) as err:
        HeuristicsParams(rule_sets=["c4", "fineweb_quality"], thresholds={
            "c4.min_sentense": 3, "gopher_quality.min_words": 10, "fineweb_quality.max_list_ratio": 1.5,
            "c4.min_sentences": 2.5})
    msg = str(err.value)
    assert "unknown rule 'c4.min_sentense' (did you mean 'c4.min_sentences'?); known rules: " in msg and "c4.min_sentences" in msg
    assert "'gopher_quality.min_words' belongs to rule set 'gopher_quality', which is not in rule_sets" in msg
    assert "'fineweb_quality.max_list_ratio' is a ratio and must be in [0, 1] (got 1.5)" in msg
    assert "'c4.min_sentences' is a count and must be a whole number >= 0 (got 2.5)" in msg
    assert all(r.default is not None for r in TUNABLE.values()) and "c4.lorem_ipsum" not in TUNABLE


@pytest.mark.parametrize("bad", [
    {"rule_sets": []},
    {"rule_sets": ["c4", "c4"]},
    {"rule_sets": ["gopher"]},
    {"rule_sets": ["language"], "languages": ["EN"]},
    {"rule_sets": ["language"], "min_language_score": 1.5},
    {"rule_sets": ["c4"], "min_words": 3},
])
def test_params_rejected(bad: dict) -> None:
    with pytest.raises(ValidationError):
        HeuristicsParams(**bad)


# ---- the step as a whole ----


def test_order_of_rule_sets_names_the_reason_and_columns_pass_through() -> None:
    frame = make_frame(["short text here", GOOD, None], extra=[1.5, 2.5, 3.5])  # type: ignore[list-item]
    kept, dropped, stats = heuristics(frame, HeuristicsParams(rule_sets=["fineweb_quality", "gopher_quality"]))
    _accounted(frame, kept, dropped, stats)
    assert dict(zip(dropped["id"], dropped["reason"], strict=True)) == {
        "r0": "fineweb_quality.min_line_punct_ratio", "r2": "fineweb_quality.min_line_punct_ratio"}
    _, dropped, _ = heuristics(frame, HeuristicsParams(rule_sets=["gopher_quality", "fineweb_quality"]))
    assert dropped["reason"].to_list() == ["gopher_quality.min_words"] * 2
    assert kept.columns == frame.columns and kept["extra"].to_list() == [2.5]
    assert dropped.columns == [*frame.columns, "detail", "reason"] and dropped["extra"].to_list() == [1.5, 3.5]


def test_all_rule_sets_account_for_every_row_and_empty_frames() -> None:
    every = ["gopher_quality", "gopher_repetition", "c4", "fineweb_quality", "language"]
    texts = [GOOD, "", "hello world", GOOD + "Lorem ipsum dolor sit amet.", SENTENCES["fr"] * 8]
    frame = make_frame(texts)
    kept, dropped, stats = heuristics(frame, HeuristicsParams(rule_sets=every))  # type: ignore[arg-type]
    _accounted(frame, kept, dropped, stats)
    assert kept["id"].to_list() == ["r0"]
    assert set(stats["broken_by_rule"]) == {r.name for name in every for r in RULES[name]}
    assert all(v > 0 for v in stats["dropped_by_reason"].values())
    empty = frame.clear()
    kept, dropped, stats = heuristics(empty, HeuristicsParams(rule_sets=every))  # type: ignore[arg-type]
    assert (kept.height, dropped.height, stats["rows_in"]) == (0, 0, 0)
    assert set(stats["broken_by_rule"].values()) == {0}


def test_registered_as_a_step() -> None:
    from gristmill.steps import STEPS

    step = STEPS["heuristics"]
    assert step.params is HeuristicsParams
    kept, _, _ = step.run(make_frame([GOOD]), HeuristicsParams(rule_sets=["c4"]), None)  # type: ignore[arg-type]
    assert kept.height == 1


def test_gopher_repetition_batches_agree() -> None:
    from gristmill.curation.rulesets import _gopher_repetition

    frame = make_frame([GOOD, "hello world", "", GOOD * 2, "a b " * 30])
    params = HeuristicsParams(rule_sets=["gopher_repetition"])
    assert _gopher_repetition(frame, params, batch=2)[0].equals(_gopher_repetition(frame, params)[0])
