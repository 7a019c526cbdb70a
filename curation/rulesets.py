"""Named heuristic rule sets (Gopher quality and repetition, C4, FineWeb quality, language id) as one step.

Every rule's default threshold is the one datatrove (huggingface/datatrove, ``src/datatrove/pipeline/filters/``)
ships, which in turn follows the paper named on each table below. A dropped row's ``reason`` is the first rule it
breaks, ``<rule_set>.<rule>`` (e.g. ``gopher_quality.min_words``), in the order of ``rule_sets`` and then of the
tables; ``stats["broken_by_rule"]`` counts every rule every row breaks.

Every dropped row gets a ``detail``: the measured value against the threshold (``alpha_words=0.62 < 0.8``), see
curation/rulebase.py. ``field`` says what is judged: ``text`` (a document), or each ``assistant`` (or ``user``)
turn of ``messages`` on its own, so a response is judged as a response and a Lorem-ipsum input inside an English
task does not make the row Latin; a row breaks a rule when any judged turn does. Turns are judged by their prose
(``code_aware``): a Python function, ``shell('df -h')``, a JSON object or LaTeX math is not a document with too few
alphabetic words, a hash ratio or a curly bracket; junk prose beside code still breaks rules. The ``instruction``
rule set (curation/instruction_rules.py) is built for instruction/chat rows and always reads ``messages``.

Differences from datatrove, all deliberate: words come from one regex instead of NLTK (see curation/textstats.py);
``min_alpha_words`` is the share of *words* holding a letter, as Gopher defines it (datatrove divides by all
tokens, punctuation included, so a 128-word answer whose words are 96% alphabetic could fall under 0.8); a ratio
with a zero denominator (an empty text) breaks no ratio rule instead of raising; and C4 removes no lines (see
:data:`C4`). Metrics are polars expressions; only the n-gram scans and language id run per row in Python.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from gristmill.common.contract import (
    SLICE_ROWS,
    StepResult,
    require,
    run_sliced,
    share_warnings,
    split,
    sum_stats,
    with_meta,
)
from gristmill.curation import language
from gristmill.curation import textstats as ts
from gristmill.curation.instruction_rules import INSTRUCTION, instruction_metrics
from gristmill.curation.rulebase import DETAIL_PREFIX, Rule, breaks, detail

VERSION = "4"  # 4: more refusal/placeholder wordings; 3: code_aware turns; 2: alpha words, detail, field

RuleSet = Literal["gopher_quality", "gopher_repetition", "c4", "fineweb_quality", "language", "instruction"]


# Gopher: Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights from Training Gopher",
# arXiv:2112.11446, App. A (MassiveText quality filters); defaults of datatrove's GopherQualityFilter.
GOPHER_QUALITY = (
    Rule("gopher_quality.min_words", "<", 50, "count"),  # words (no punctuation) in 50 .. 100,000
    Rule("gopher_quality.max_words", ">", 100_000, "count"),
    Rule("gopher_quality.min_mean_word_length", "<", 3, "length"),  # mean word length in 3 .. 10 characters
    Rule("gopher_quality.max_mean_word_length", ">", 10, "length"),
    Rule("gopher_quality.max_hash_ratio", ">", 0.1),  # '#' per token
    Rule("gopher_quality.max_ellipsis_ratio", ">", 0.1),  # '...' or '…' per token
    Rule("gopher_quality.max_bullet_lines", ">", 0.9),  # share of lines starting with '•' or '-'
    Rule("gopher_quality.max_ellipsis_lines", ">", 0.3),  # share of lines ending in '...' or '…'
    Rule("gopher_quality.min_alpha_words", "<", 0.8),  # share of words with an alphabetic character
    Rule("gopher_quality.min_stop_words", "<", 2, "count"),  # of: the, be, to, of, and, that, have, with
)
STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
"""Gopher's stop words, matched case-sensitively as whole words (as datatrove does)."""

# Gopher, Table A1 (arXiv:2112.11446); datatrove's GopherRepetitionFilter. All fractions are of the text's
# characters except the two ``*_frac`` of lines/paragraphs, which are of the line/paragraph count.
_TOP_NGRAMS = ((2, 0.20), (3, 0.18), (4, 0.16))  # characters in the most frequent n-gram (times its count)
_DUP_NGRAMS = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))  # characters in repeated n-grams
GOPHER_REPETITION = (
    Rule("gopher_repetition.max_dup_para_frac", ">", 0.30),
    Rule("gopher_repetition.max_dup_para_char_frac", ">", 0.20),
    Rule("gopher_repetition.max_dup_line_frac", ">", 0.30),
    Rule("gopher_repetition.max_dup_line_char_frac", ">", 0.20),
    *(Rule(f"gopher_repetition.max_top_{n}gram_frac", ">", f) for n, f in _TOP_NGRAMS),
    *(Rule(f"gopher_repetition.max_dup_{n}gram_frac", ">", f) for n, f in _DUP_NGRAMS),
)

# C4: Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer",
# JMLR 21(140), sec. 2.2; datatrove's C4QualityFilter (after TFDS c4_utils). Lines are stripped, citations
# ("[1]", "[edit]", "[citation needed]") cut, then a line is left out when it has a word over
# `c4.max_word_length` (1000) characters, does not end in . ? ! " ' (or ends in "..."), has fewer than
# `c4.min_words_per_line` (3) words, or mentions javascript or a cookie/terms-of-use/privacy phrase. Among the
# lines not left out before those last two checks, "lorem ipsum" or "{" drops the row. A row keeping fewer than 5
# sentences is dropped. datatrove also rewrites the text without the left-out lines: here rows are only kept or
# dropped and the text is never changed (run a line cleaner for that); `stats["c4_lines"]` counts the lines.
C4 = (
    Rule("c4.lorem_ipsum", "flag", note="a line contains 'lorem ipsum'"),
    Rule("c4.curly_bracket", "flag", note="a line contains '{'"),
    Rule("c4.min_sentences", "<", 5, "count"),
)

# FineWeb: Penedo et al. 2024, "The FineWeb Datasets: Decanting the Web for the Finest Text Data at Scale",
# arXiv:2406.17557 (its custom heuristic filters); datatrove's FineWebQualityFilter. Lines are split on "\n".
FINEWEB_QUALITY = (
    Rule("fineweb_quality.min_line_punct_ratio", "<=", 0.12),  # share of lines ending in . ' " ! ?
    Rule("fineweb_quality.max_short_line_ratio", ">=", 0.67),  # share of lines of <= short_line_length characters
    Rule("fineweb_quality.max_char_dup_ratio", ">=", 0.01),  # chars in repeated non-empty lines / chars (no "\n")
    Rule("fineweb_quality.max_list_ratio", ">", 0.3),  # newlines per token
)

# Language id: datatrove's LanguageFilter keeps languages=["en"] above a 0.65 score (with fastText lid.176);
# here py3langid (curation/language.py), with `languages` and `min_language_score` as params.
LANGUAGE = (Rule("language.wrong_language", "flag"), Rule("language.low_score", "flag"))

RULES: dict[str, tuple[Rule, ...]] = {
    "gopher_quality": GOPHER_QUALITY,
    "gopher_repetition": GOPHER_REPETITION,
    "c4": C4,
    "fineweb_quality": FINEWEB_QUALITY,
    "language": LANGUAGE,
    "instruction": INSTRUCTION,
}
SETTINGS: dict[str, Rule] = {
    r.name: r
    for r in (
        Rule("c4.min_words_per_line", "<", 3, "count"),
        Rule("c4.max_word_length", ">", 1000, "count"),
        Rule("fineweb_quality.short_line_length", "<=", 30, "count"),
    )
}
"""Line-level settings that are not rules themselves but can be overridden like thresholds (C4, FineWeb)."""
TUNABLE: dict[str, Rule] = {r.name: r for rules in RULES.values() for r in rules if r.default is not None} | SETTINGS


class HeuristicsParams(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    rule_sets: list[RuleSet] = Field(min_length=1)
    """Rule sets to apply, in order (the first broken rule names the drop reason): gopher_quality,
    gopher_repetition, c4, fineweb_quality, language (web-document rules) and instruction (rules for
    instruction/chat rows: empty, truncated, echoing, refusing, placeholder and link-only answers)."""
    field: Literal["text", "assistant", "user"] = "text"
    """What the document rule sets judge: text (the whole row as one document), assistant or user (each turn of
    that role in ``messages``, on its own; a row breaks a rule when one of its turns does). The instruction rule
    set always reads every turn of ``messages``."""
    thresholds: dict[str, float] = Field(default_factory=dict)
    """Overrides of published thresholds, by rule name, e.g. {"gopher_quality.min_words": 20,
    "c4.min_sentences": 3}; the rule's set must be in rule_sets."""
    min_words_judged: int = Field(0, ge=0)
    """Texts (or turns) with fewer words than this are not judged by the document rule sets: n-gram shares and
    language scores of a few words are noise ("Paris", "shell('ls -la')"). 0 judges everything."""
    code_aware: bool | None = None
    """The document rule sets judge only the prose of each text: code blocks, inline code, LaTeX math and
    code/shell lines are left out, and a text that is wholly a tool call (``shell('df -h')``), a JSON value or
    markup is not judged (curation/textstats.py ``prose``). None: on for field assistant/user, off for field
    text (web documents, where the published rules count code as what it is)."""
    languages: list[str] = Field(default_factory=lambda: ["en"])
    """language rule set: ISO 639-1 codes to keep (e.g. [en, fr]); empty keeps any language."""
    min_language_score: float = Field(0.65, ge=0, le=1)
    """language rule set: drop rows whose detected language's probability is below this (datatrove: 0.65)."""

    @field_validator("rule_sets")
    @classmethod
    def _no_repeats(cls, value: list[str]) -> list[str]:
        repeated = sorted(k for k, n in Counter(value).items() if n > 1)
        if repeated:
            raise ValueError(f"rule set(s) listed more than once: {', '.join(repeated)}")
        return value

    @field_validator("languages")
    @classmethod
    def _codes(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not (v.isascii() and v.isalpha() and v.islower() and 2 <= len(v) <= 3)]
        if bad:
            raise ValueError(f"not ISO 639 codes: {bad}; write lower-case codes such as 'en', 'fr', 'de'")
        return value

    @field_validator("thresholds")
    @classmethod
    def _known_thresholds(cls, value: dict[str, float], info: ValidationInfo) -> dict[str, float]:
        enabled = set(info.data.get("rule_sets") or [])
        errors = []
        for name, v in value.items():
            rule = TUNABLE.get(name)
            if rule is None:
                close = difflib.get_close_matches(name, list(TUNABLE), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                errors.append(f"unknown rule {name!r}{hint}; known rules: {', '.join(TUNABLE)}")
            elif enabled and name.split(".")[0] not in enabled:
                errors.append(f"{name!r} belongs to rule set {name.split('.')[0]!r}, which is not in rule_sets")
            elif rule.kind == "ratio" and not 0 <= v <= 1:
                errors.append(f"{name!r} is a ratio and must be in [0, 1] (got {v})")
            elif rule.kind == "count" and (v < 0 or v != int(v)):
                errors.append(f"{name!r} is a count and must be a whole number >= 0 (got {v})")
            elif v < 0:
                errors.append(f"{name!r} must be >= 0 (got {v})")
        if errors:
            raise ValueError("; ".join(errors))
        return value

    @property
    def judges_prose(self) -> bool:
        """Whether the document rule sets judge the prose view (``code_aware``, defaulted by ``field``)."""
        return self.field != "text" if self.code_aware is None else self.code_aware

    def threshold(self, name: str) -> float:
        """The threshold in force for ``name``: the override if given, else the published default."""
        default = TUNABLE[name].default
        assert default is not None
        return self.thresholds.get(name, default)

    def thresholds_in_force(self) -> dict[str, float]:
        """Every tunable threshold (and line setting) with its value in force."""
        return {k: self.threshold(k) for k in TUNABLE}


Metrics = tuple[pl.DataFrame, dict[str, Any]]
"""Per rule set: one column per rule (its metric, or its flag), one row per input row; extra stats."""
TEXT = pl.col("text").fill_null("")


def _gopher_quality(frame: pl.DataFrame, params: HeuristicsParams) -> Metrics:
    stop_re = r"\b(?:" + "|".join(STOP_WORDS) + r")\b"
    counts = frame.select(  # each count once; the rules below are ratios of them
        tokens=ts.token_count(TEXT), words=ts.word_count(TEXT), word_chars=TEXT.str.count_matches(r"\w"),
        alpha=ts.alpha_word_count(TEXT), stop=TEXT.str.count_matches(stop_re),
        hashes=TEXT.str.count_matches("#", literal=True), ellipses=ts.ellipsis_count(TEXT),
        lines=ts.line_count(TEXT), bullets=ts.bullet_line_count(TEXT), ellipsis_lines=ts.ellipsis_line_count(TEXT),
    )
    c = pl.col
    mean_len = ts.safe_ratio(c("word_chars"), c("words"))  # = textstats.mean_word_length
    metrics = [c("words"), c("words"), mean_len, mean_len, ts.safe_ratio(c("hashes"), c("tokens")),
               ts.safe_ratio(c("ellipses"), c("tokens")), c("bullets") / c("lines"), c("ellipsis_lines") / c("lines"),
               ts.safe_ratio(c("alpha"), c("words")), c("stop")]  # alpha / words = textstats.alpha_word_ratio
    return counts.select(m.alias(r.name) for m, r in zip(metrics, GOPHER_QUALITY, strict=True)), {}


def _gopher_repetition(frame: pl.DataFrame, params: HeuristicsParams, batch: int = 2_000) -> Metrics:
    chars = TEXT.str.len_chars()
    paras, lines = ts.split_paragraphs(TEXT), ts.split_line_runs(TEXT)
    out = frame.select(
        ts.safe_ratio(ts.duplicate_count(paras), paras.list.len()).alias(GOPHER_REPETITION[0].name),
        ts.safe_ratio(ts.duplicate_chars(paras), chars).alias(GOPHER_REPETITION[1].name),
        ts.safe_ratio(ts.duplicate_count(lines), lines.list.len()).alias(GOPHER_REPETITION[2].name),
        ts.safe_ratio(ts.duplicate_chars(lines), chars).alias(GOPHER_REPETITION[3].name),
        chars.alias("_chars"),
    )
    tops, dups = [n for n, _ in _TOP_NGRAMS], [n for n, _ in _DUP_NGRAMS]
    schema = dict.fromkeys((r.name for r in GOPHER_REPETITION[4:]), pl.Int64)
    texts = frame.select(TEXT.alias("text"))
    parts = [pl.DataFrame(schema=schema)]
    # Per-row Python token lists (~5 KB a row) a small batch at a time: streaming 6 slices of bench/scale.py's 1M
    # rows through the step peaked at 407-414 MB with 2,000, 442-446 with 5,000 (same CPU seconds, same output).
    for start in range(0, frame.height, batch):
        tokens = texts.slice(start, batch).select(TEXT.str.extract_all(ts.TOKEN_RE)).to_series().to_list()
        rows = [[ts.top_ngram_chars(t, n) for n in tops] + ts.dup_ngram_chars_many(t, dups) for t in tokens]
        parts.append(pl.DataFrame(rows, schema=schema, orient="row"))
    counts = pl.concat(parts)
    ratios = pl.concat([out, counts], how="horizontal").select(
        *(pl.col(r.name) for r in GOPHER_REPETITION[:4]),
        *(ts.safe_ratio(pl.col(n), pl.col("_chars")).alias(n) for n in schema),
    )
    return ratios, {}


def _c4(frame: pl.DataFrame, params: HeuristicsParams) -> Metrics:
    max_len, min_words = int(params.threshold("c4.max_word_length")), params.threshold("c4.min_words_per_line")
    lines = frame.select(
        pl.int_range(pl.len()).alias("row"), ts.split_lines(TEXT.str.strip_suffix("\n")).alias("line")
    ).explode("line").with_columns(pl.col("line").fill_null("").str.strip_chars())
    line = pl.col("line")
    long = lines.with_row_index("i").filter(line.str.len_chars() > max_len)
    long = long.filter(line.str.extract_all(r"\S+").list.eval(pl.element().str.len_chars()).list.max() > max_len)
    clean = line.str.replace_all(r"\[\d*\]|\[edit\]|\[citation needed\]", "")
    lower = clean.str.to_lowercase()
    policy = "|".join(("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
                       "use cookies"))
    flags = lines.select(
        "row",
        too_long_word=pl.Series([False] * lines.height, dtype=pl.Boolean).scatter(long["i"], True),
        no_terminal_punct=~clean.str.contains(r"[.?!\"']$") | clean.str.ends_with("..."),
        too_few_words=line.str.count_matches(r"\S+") < min_words,
        lorem_ipsum=lower.str.contains("lorem ipsum", literal=True),
        javascript=lower.str.contains("javascript", literal=True),
        curly_bracket=clean.str.contains("{", literal=True),
        policy=lower.str.contains(policy),
        sentences=ts.sentence_count(clean),
    )
    # datatrove's order: each check sees only the lines that passed the checks before it; a lorem ipsum or
    # curly bracket line drops the whole row, the other checks only leave the line out.
    left_out = pl.lit(False)
    hits: dict[str, pl.Expr] = {}
    for name in ("too_long_word", "no_terminal_punct", "too_few_words", "lorem_ipsum", "javascript",
                 "curly_bracket", "policy"):
        hits[name] = pl.col(name) & ~left_out
        if name not in ("lorem_ipsum", "curly_bracket"):
            left_out = left_out | pl.col(name)
    kept = ~left_out & ~pl.col("lorem_ipsum") & ~pl.col("curly_bracket")
    per_row = flags.group_by("row", maintain_order=True).agg(
        hits["lorem_ipsum"].any().alias(C4[0].name),
        hits["curly_bracket"].any().alias(C4[1].name),
        pl.when(kept).then(pl.col("sentences")).otherwise(0).sum().alias(C4[2].name),
    )
    line_stats = flags.select(
        pl.len().alias("total"), *(e.sum().alias(n) for n, e in hits.items()), kept.sum().alias("kept")
    ).row(0, named=True)
    return per_row.drop("row"), {"c4_lines": line_stats}


def _fineweb_quality(frame: pl.DataFrame, params: HeuristicsParams) -> Metrics:
    short = int(params.threshold("fineweb_quality.short_line_length"))
    lines = ts.split_lines(TEXT)
    n_lines = lines.list.len()
    non_empty = lines.list.eval(pl.element().filter(pl.element().str.strip_chars() != ""))
    metrics = [
        lines.list.eval(pl.element().str.contains(r"[.'\"!?]$")).list.sum() / n_lines,
        lines.list.eval(pl.element().str.len_chars() <= short).list.sum() / n_lines,
        ts.safe_ratio(ts.duplicate_chars(non_empty), TEXT.str.replace_all("\n", "", literal=True).str.len_chars()),
        ts.safe_ratio(TEXT.str.count_matches("\n", literal=True), ts.token_count(TEXT)),
    ]
    return frame.select(m.alias(r.name) for m, r in zip(metrics, FINEWEB_QUALITY, strict=True)), {}


def _language(frame: pl.DataFrame, params: HeuristicsParams) -> Metrics:
    if params.languages:
        language.check_languages(params.languages)
    langs, scores = language.detect(frame["text"].to_list())
    detected = pl.DataFrame({"language": pl.Series(langs, dtype=pl.String),
                             "language_score": pl.Series(scores, dtype=pl.Float64)})
    wrong = pl.col("language").is_in(params.languages).not_() if params.languages else pl.lit(False)
    shown = pl.format("language={} ({})", pl.col("language"), pl.col("language_score").round(2))
    metrics = detected.select(
        wrong.alias(LANGUAGE[0].name), (pl.col("language_score") < params.min_language_score).alias(LANGUAGE[1].name),
        pl.format("{} not in {}", shown, pl.lit(str(params.languages))).alias(DETAIL_PREFIX + LANGUAGE[0].name),
        pl.format("{} < {}", shown, pl.lit(params.min_language_score)).alias(DETAIL_PREFIX + LANGUAGE[1].name),
    )
    return metrics, {"detected": detected, "detected_languages": dict(Counter(langs).most_common())}


METRICS: dict[str, Callable[[pl.DataFrame, HeuristicsParams], Metrics]] = {
    "gopher_quality": _gopher_quality,
    "gopher_repetition": _gopher_repetition,
    "c4": _c4,
    "fineweb_quality": _fineweb_quality,
    "language": _language,
    "instruction": lambda frame, params: (instruction_metrics(frame, params.thresholds_in_force()), {}),
}


def _judged(frame: pl.DataFrame, field: str) -> pl.DataFrame:
    """The texts the document rule sets judge: ``_row`` (position in ``frame``), ``_turn`` and ``text``.

    field text: one per row; field assistant/user: one per turn of that role (a row without one has none).
    """
    if field == "text":
        require(frame, ["text"], "heuristics")
        return frame.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_row"), pl.lit(0).alias("_turn"),
                            pl.col("text"))
    require(frame, ["messages"], f"heuristics (field: {field})")
    if frame.schema["messages"] == pl.Null:
        return pl.DataFrame(schema={"_row": pl.UInt32, "_turn": pl.Int64, "text": pl.String})
    turns = frame.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_row"), pl.col("messages")).explode(
        "messages").with_columns(pl.int_range(pl.len()).over("_row").alias("_turn"))
    turns = turns.filter(pl.col("messages").struct.field("role") == field)
    return turns.select("_row", "_turn", pl.col("messages").struct.field("content").alias("text"))


def _long_enough(judged: pl.DataFrame, min_words: int) -> pl.DataFrame:
    """``judged`` without the texts of fewer than ``min_words`` words (they break no document rule)."""
    if min_words <= 0:
        return judged
    return judged.filter(ts.word_count(pl.col("text").fill_null("")) >= min_words)


def _prose_only(judged: pl.DataFrame) -> pl.DataFrame:
    """``judged`` with each text replaced by its prose; texts that had words and have no prose (all code, a
    tool call, JSON) are left out, so they break no document rule. An empty text stays (and is judged empty)."""
    text = pl.col("text").fill_null("")
    judged = judged.with_columns(ts.prose(text).alias("_prose"))
    keep = (ts.word_count(pl.col("_prose")) > 0) | (ts.word_count(text) == 0)
    return judged.filter(keep).with_columns(pl.col("_prose").alias("text")).drop("_prose")


def _per_row(judged: pl.DataFrame, rows: int, flags: pl.DataFrame, details: pl.DataFrame,
             rules: list[str], turns: bool) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Turn-level flags and details -> row-level (a row breaks a rule when any of its turns does)."""
    both = pl.concat([judged.select("_row", "_turn"), flags, details.rename(lambda c: DETAIL_PREFIX + c)],
                     how="horizontal")
    agg = both.group_by("_row").agg(
        *(pl.col(r).any() for r in rules),
        *((pl.format("turn {}: {}", pl.col("_turn") + 1, pl.col(DETAIL_PREFIX + r)) if turns
           else pl.col(DETAIL_PREFIX + r)).filter(pl.col(r)).first().alias(DETAIL_PREFIX + r) for r in rules))
    full = pl.DataFrame({"_row": pl.arange(0, rows, dtype=pl.UInt32, eager=True)}).join(agg, on="_row", how="left")
    return (full.select(pl.col(r).fill_null(False) for r in rules),
            full.select(pl.col(DETAIL_PREFIX + r).alias(r) for r in rules))


def heuristics(frame: pl.DataFrame, params: HeuristicsParams, slice_rows: int = SLICE_ROWS) -> StepResult:
    """Apply ``params.rule_sets``; drop each row breaking a rule, reason ``<rule_set>.<rule>`` (first broken),
    and ``detail`` the measured value against the threshold (e.g. ``alpha_words=0.62 < 0.8``).

    With the language rule set, every row (kept or dropped) gets ``meta.language`` and ``meta.language_score``
    (with a ``field`` of turns: those of the role's first turn). Every rule reads its row only, so a large frame
    is judged a slice at a time (its list columns and token lists exist for one slice) and the stats merged.
    """
    return run_sliced(_heuristics, frame, params, slice_rows, merge_stats)


def merge_stats(parts: list[dict[str, Any]], rows_in: int) -> dict[str, Any]:
    """The step's stats on a whole frame from those of its slices: rule and line counts added, the detected
    languages re-ranked by their summed counts (ties in order of first appearance, as ``Counter.most_common``
    ranks them over the whole frame) and the share warnings measured against all ``rows_in`` rows.

    >>> merge_stats([{"broken_by_rule": {"r": 1}, "thresholds": {"r": 5}, "detected_languages": {"en": 2, "fr": 1}},
    ...              {"broken_by_rule": {"r": 0}, "thresholds": {"r": 5}, "detected_languages": {"fr": 2}}], 10)
    {'broken_by_rule': {'r': 1}, 'thresholds': {'r': 5}, 'detected_languages': {'fr': 3, 'en': 2}}
    """
    stats = sum_stats([{k: v for k, v in p.items() if k != "warnings"} for p in parts], rows_in, keep=("thresholds",))
    if "detected_languages" in stats:
        stats["detected_languages"] = dict(Counter(stats["detected_languages"]).most_common())
    warnings = share_warnings(stats["broken_by_rule"], rows_in, "rule")
    if warnings:
        stats["warnings"] = warnings
    return stats


def _heuristics(frame: pl.DataFrame, params: HeuristicsParams) -> StepResult:
    rows_in = frame.height
    document_sets = [n for n in params.rule_sets if n != "instruction"]
    judged = None
    if document_sets:
        judged = _judged(frame, params.field)
        judged = _long_enough(_prose_only(judged) if params.judges_prose else judged, params.min_words_judged)
    flag_parts: dict[str, pl.DataFrame] = {}
    detail_parts: dict[str, pl.DataFrame] = {}
    extra: dict[str, Any] = {}
    for name in params.rule_sets:
        target = frame if name == "instruction" or judged is None else judged
        metrics, more = METRICS[name](target, params)
        detected = more.pop("detected", None)
        rules = RULES[name]
        flags = metrics.select(breaks(r, _threshold(params, r)).alias(r.name) for r in rules)
        details = metrics.select(detail(r, _threshold(params, r), metrics.columns).alias(r.name) for r in rules)
        if target is judged and (params.field != "text" or params.min_words_judged or params.judges_prose):
            names = [r.name for r in rules]
            flags, details = _per_row(target, rows_in, flags, details, names, params.field != "text")
            if detected is not None:
                first = pl.concat([target.select("_row"), detected], how="horizontal").group_by("_row").first()
                detected = pl.DataFrame({"_row": pl.arange(0, rows_in, dtype=pl.UInt32, eager=True)}).join(
                    first, on="_row", how="left").drop("_row")
        if detected is not None:
            frame = with_meta(frame, language=detected["language"], language_score=detected["language_score"])
        flag_parts[name], detail_parts[name] = flags, details
        extra |= more
    rules = [rule.name for name in params.rule_sets for rule in RULES[name]]
    flags = pl.concat(list(flag_parts.values()), how="horizontal")
    details = pl.concat(list(detail_parts.values()), how="horizontal")
    both = pl.concat([flags, details.rename(lambda c: DETAIL_PREFIX + c)], how="horizontal")
    why = both.select(
        pl.coalesce(pl.when(pl.col(r)).then(pl.lit(r)) for r in rules).alias("reason"),
        pl.coalesce(pl.when(pl.col(r)).then(pl.col(DETAIL_PREFIX + r)) for r in rules).alias("detail"))
    kept, dropped = split(frame.with_columns(why["detail"]), why["reason"])
    kept = kept.drop("detail")
    broken = {r: int(flags[r].sum()) for r in rules}
    used = {k: v for k, v in params.thresholds_in_force().items() if k.split(".")[0] in params.rule_sets}
    if "language" in params.rule_sets:
        used |= {"language.languages": params.languages, "language.min_language_score": params.min_language_score}
    stats: dict[str, Any] = {"broken_by_rule": broken, "thresholds": used, **extra}
    warnings = share_warnings(broken, rows_in, "rule")
    if warnings:
        stats["warnings"] = warnings
    return StepResult(kept, dropped, stats, rows_in=rows_in)


def _threshold(params: HeuristicsParams, rule: Rule) -> float | None:
    return None if rule.default is None else params.threshold(rule.name)

