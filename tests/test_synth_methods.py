"""The generation methods against a scripted engine: structure, provenance, filters and accounting."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from gristmill.audit.lexicon import builtin_lexicon_path
from gristmill.synth.engine import SamplingConfig
from gristmill.synth.methods import run_method
from tests.conftest import make_frame
from tests.helpers import Reply, ScriptedEngine


def chat_frame(pairs: list[tuple[str, str | None]], ids: list[str] | None = None) -> pl.DataFrame:
    """Instruction rows: (user, assistant) pairs; assistant ``None`` leaves the conversation open."""
    msgs = [[{"role": "user", "content": u}] + ([{"role": "assistant", "content": a}] if a is not None else [])
            for u, a in pairs]
    return make_frame([f"{u}\n\n{a or ''}".strip() for u, a in pairs], ids, messages=msgs)


def adds_up(stats: dict[str, Any], kept: pl.DataFrame, dropped: pl.DataFrame) -> None:
    assert stats["rows_in"] + stats.get("rows_added", 0) == kept.height + dropped.height
    assert stats["kept"] == kept.height and stats["dropped"] == dropped.height
    assert sum(stats["dropped_by_reason"].values()) == dropped.height
    assert dropped.height == 0 or dropped["reason"].null_count() == 0


def synth_meta(frame: pl.DataFrame) -> list[dict[str, Any]]:
    return frame["meta"].struct.field("synth").to_list()


def check_provenance(prov: dict[str, Any], method: str) -> None:
    assert prov["method"] == method and prov["model"] == "m" and prov["engine"] == "scripted"
    assert len(prov["template_hash"]) == 16 and json.loads(prov["sampling"])["seed"] == 0
    assert prov["source_ids"]


# --- evolve -----------------------------------------------------------------------------------------------------

LEXICON = str(builtin_lexicon_path())
SOURCES = [
    ("Explain photosynthesis.", "Plants turn light, water and carbon dioxide into sugar and oxygen."),
    ("Name a prime number.", "Seven is a prime number."),
    ("Describe the water cycle.", "Water evaporates, condenses into clouds and falls as rain."),
    ("List three fruits.", "Apple, banana and cherry."),
    ("Summarize the French Revolution.", "From 1789 France overthrew its monarchy and became a republic."),
]


def evolve_reply(user: str, sampling: SamplingConfig) -> Reply:
    rewrite = lambda s: json.dumps({"instruction": s})  # noqa: E731
    if sampling.json_schema is not None:  # stage 1: the rewrite
        if "photosynthesis" in user:
            return rewrite("Explain photosynthesis to a ten-year-old in under 100 words, using one analogy.")
        if "prime number" in user:
            return rewrite("Name a prime number.")  # unchanged -> not_evolved
        if "water cycle" in user:
            return rewrite("#Rewritten Prompt#: Describe the water cycle and the role of the sun in it.")
        if "fruits" in user:
            return "Here you go: list some fruits"  # no JSON -> unparseable
        return rewrite("Compare the causes of the French Revolution with those of the American Revolution.")
    if "photosynthesis" in user:  # stage 2: the answer
        return "Plants are like kitchens: sunlight is the stove, and they cook sugar from air and water."
    return "Sorry, I can't."  # short and sorry -> refusal


def test_evolve_filters_provenance_and_two_batched_calls() -> None:
    from gristmill.synth.methods.evolve import EvolveParams

    engine = ScriptedEngine(evolve_reply)
    frame = chat_frame(SOURCES)
    params = EvolveParams(n=5, oversample=1, max_rounds=1)
    kept, dropped, stats = run_method(frame, params, engine=engine, model_name="m")
    assert engine.calls == [(5, True), (2, False)]  # all rewrites in one call, all surviving answers in one call
    assert stats["rows_added"] == 5 and stats["follow_up_requests"] == 2
    adds_up(stats, kept, dropped)
    assert stats["dropped_by_reason"] == {"not_evolved": 1, "leaked_template": 1, "unparseable": 1, "refusal": 1}
    new = kept.filter(pl.col("source") == "synth:evolve")
    assert kept.height == 6 and kept["id"][:5].to_list() == frame["id"].to_list()  # sources stay
    msgs = new["messages"][0].to_list()
    assert msgs[0]["content"].startswith("Explain photosynthesis to a ten-year-old")
    assert msgs[1]["content"].startswith("Plants are like kitchens")
    prov = synth_meta(new)[0]
    check_provenance(prov, "evolve")
    assert prov["source_ids"] == ["r0"] and prov["operation"] in EvolveParams().operations
    assert 0 < prov["rouge_l_source"] < params.max_rouge_l
    assert json.loads(prov["answer_sampling"])["max_tokens"] == params.answer_max_tokens


def test_evolve_uses_only_the_chosen_operations_and_cycles_sources() -> None:
    from gristmill.synth.methods.evolve import OPERATIONS, EvolveParams

    engine = ScriptedEngine(lambda u, s: json.dumps({"instruction": "Write a haiku about rare deep-sea fish."})
                            if s.json_schema else "Silent lanterns glow / in the crushing midnight deep / "
                                                 "anglers wait for prey.")
    frame = chat_frame(SOURCES[:2])
    kept, dropped, stats = run_method(frame, EvolveParams(n=3, oversample=1, operations=["breadth"]), engine=engine,
                               model_name="m")
    assert engine.calls == [(3, True), (3, False)]
    assert sum(OPERATIONS["breadth"] in p for p in engine.prompts) == 3
    assert {p["operation"] for p in synth_meta(kept.tail(3))} == {"breadth"}
    assert {p["source_ids"][0] for p in synth_meta(kept.tail(3))} == {"r0", "r1"}  # every source used
    adds_up(stats, kept, dropped)


def test_evolve_without_instruction_rows_says_so() -> None:
    from gristmill.synth.methods.evolve import EvolveParams

    with pytest.raises(ValueError, match="no instruction rows"):
        run_method(make_frame(["plain text"]), EvolveParams(), engine=ScriptedEngine(lambda u, s: ""), model_name="m")


# --- paraphrase -------------------------------------------------------------------------------------------------

def test_paraphrase_round_robin_and_filters() -> None:
    from gristmill.synth.methods.paraphrase import ParaphraseParams

    frame = chat_frame([("Explain why the sky is blue.", "Air scatters blue sunlight more than red light."),
                        ("Give a synonym for happy.", "Joyful is a synonym for happy.")])
    seen: dict[str, int] = {}

    def reply(user: str, sampling: SamplingConfig) -> Reply:
        key = "sky" if "sky" in user else "happy"
        seen[key] = seen.get(key, 0) + 1
        pair = lambda i, o: json.dumps({"instruction": i, "output": o})  # noqa: E731
        return {
            ("sky", 1): pair("Why does the sky look blue?", "Sunlight's blue part is scattered by air the most."),
            ("sky", 2): pair("Explain why the sky is blue.", "Air scatters blue sunlight more than red light."),
            ("happy", 1): pair("Tell me a word meaning happy.", "Cheerful " * 40),
            ("happy", 2): pair("What word means the same as happy?", "Joyful means the same as happy."),
        }[key, seen[key]]

    engine = ScriptedEngine(reply)
    kept, dropped, stats = run_method(frame, ParaphraseParams(n=4, oversample=1, max_rounds=1), engine=engine,
                               model_name="m")
    assert engine.calls == [(4, True)] and seen == {"sky": 2, "happy": 2}  # round-robin over the sources
    assert stats["dropped_by_reason"] == {"not_novel": 1, "length_mismatch": 1}
    adds_up(stats, kept, dropped)
    new = kept.filter(pl.col("source") == "synth:paraphrase")
    provs = synth_meta(new)
    for p in provs:
        check_provenance(p, "paraphrase")
    assert sorted(p["source_ids"][0] for p in provs) == ["r0", "r1"]
    assert all(0.5 <= p["length_ratio"] <= 2 and p["rouge_l_source"] < 0.8 for p in provs)
    assert {m[0]["content"] for m in new["messages"].to_list()} == {
        "Why does the sky look blue?", "What word means the same as happy?"}


def test_paraphrase_ratio_bounds_are_validated() -> None:
    from pydantic import ValidationError

    from gristmill.synth.methods.paraphrase import ParaphraseParams

    with pytest.raises(ValidationError, match="swap them"):
        ParaphraseParams(min_length_ratio=3, max_length_ratio=2)


# --- answer -----------------------------------------------------------------------------------------------------

def answer_frame() -> pl.DataFrame:
    msgs: list[list[dict[str, str]] | None] = [
        [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
        [{"role": "user", "content": "Capital of France?"}],
        [{"role": "user", "content": "Colour of grass?"}, {"role": "assistant", "content": "  "}],
        None,
        [{"role": "user", "content": "Tell me a secret."}],
        [{"role": "user", "content": "Largest planet?"}],
    ]
    return make_frame(["What is 2+2?\n\n4", "Capital of France?", "Colour of grass?", "plain", "Tell me a secret.",
                       "Largest planet?"], messages=msgs)


def test_answer_rewrites_rows_in_place_and_retries() -> None:
    from gristmill.synth.methods.answer import AnswerParams

    tries: dict[str, int] = {}

    def reply(user: str, sampling: SamplingConfig) -> Reply:
        assert sampling.json_schema is None
        tries[user] = tries.get(user, 0) + 1
        if "secret" in user:
            return "I'm sorry, I cannot share secrets."
        if "planet" in user:
            return "..." if tries[user] == 1 else "Jupiter."
        return {"Capital of France?": "Paris.", "Colour of grass?": "Green."}[user]

    engine = ScriptedEngine(reply)
    frame = answer_frame()
    kept, dropped, stats = run_method(frame, AnswerParams(max_rounds=2, system="Be brief."), engine=engine,
                               model_name="m")
    assert engine.calls == [(4, False), (2, False)]  # round 2 re-asks only the two failures
    assert "rows_added" not in stats and stats["generated"] == 6  # rows rewritten, none added
    adds_up(stats, kept, dropped)
    assert kept["id"].to_list() == ["r0", "r1", "r2", "r3", "r5"]  # same ids, original order
    assert dropped["id"].to_list() == ["r4"] and stats["dropped_by_reason"] == {"refusal": 1}
    assert stats["attempts_rejected_by_reason"] == {"refusal": 2, "empty": 1}
    by_id = dict(zip(kept["id"].to_list(), kept["messages"].to_list(), strict=True))
    assert by_id["r1"][-1] == {"role": "assistant", "content": "Paris."}
    assert by_id["r2"] == [{"role": "user", "content": "Colour of grass?"}, {"role": "assistant", "content": "Green."}]
    assert by_id["r5"][-1]["content"] == "Jupiter." and by_id["r0"][-1]["content"] == "4"
    assert kept.filter(pl.col("id") == "r1")["text"].item() == "Capital of France?\n\nParis."
    provs = dict(zip(kept["id"].to_list(), synth_meta(kept), strict=True))
    assert provs["r0"] is None and provs["r3"] is None
    check_provenance(provs["r1"], "answer")
    assert provs["r1"]["source_ids"] == ["r1"] and provs["r5"]["round"] == 1
    assert kept["meta"].struct.field("source_line").to_list() == [1, 2, 3, 4, 6]  # other meta fields survive
    assert synth_meta(dropped)[0]["last_output"].startswith("I'm sorry")


def test_answer_cap_leaves_the_rest_untouched() -> None:
    from gristmill.synth.methods.answer import AnswerParams

    engine = ScriptedEngine(lambda u, s: "An answer.")
    kept, dropped, stats = run_method(answer_frame(), AnswerParams(n=1), engine=engine, model_name="m")
    assert engine.calls == [(1, False)] and stats["needed_answer"] == 4 and stats["left_unanswered"] == 3
    assert kept.height == 6 and dropped.height == 0
    adds_up(stats, kept, dropped)


# --- gap_fill ---------------------------------------------------------------------------------------------------

def gap_reply(user: str, sampling: SamplingConfig) -> Reply:
    task = lambda i, o: json.dumps({"instruction": i, "input": "", "output": o})  # noqa: E731
    if "a nonbinary person" in user:
        gap_reply.nb = getattr(gap_reply, "nb", 0) + 1  # type: ignore[attr-defined]
        if gap_reply.nb == 1:  # type: ignore[attr-defined]
            return task("My nonbinary friend is moving; write a checklist for the move.", "1. Book a van. 2. Pack.")
        return task("Write a checklist for moving house.", "1. Book a van. 2. Pack.")  # no group term
    return task("Plan a Diwali dinner menu for a Hindu family of six.", "Samosas, dal, paneer and kheer.")


def test_gap_fill_from_an_audit_report(tmp_path: Path) -> None:
    from gristmill.synth.methods.gap_fill import GapFillParams

    gap_reply.nb = 0  # type: ignore[attr-defined]
    report = tmp_path / "03-audit.json"
    report.write_text(json.dumps({"rows": 9, "gaps": [
        {"axis": "gender", "group": "nonbinary", "rows": 1, "target_rows": 3},
        {"axis": "religion", "group": "hindu", "rows": 0, "target_rows": 4},
    ]}))
    engine = ScriptedEngine(gap_reply)
    frame = chat_frame([("Write a shopping list.", "Milk, eggs, bread.")])
    params = GapFillParams(gaps=str(report), lexicon=LEXICON, n=3, oversample=1, max_rounds=1)
    kept, dropped, stats = run_method(frame, params, engine=engine, model_name="m")
    assert engine.calls == [(3, True)]  # quotas 2 + 1 (n caps 2 + 4) in one call
    assert sum("a nonbinary person" in p for p in engine.prompts) == 2 and "Write a shopping list." in engine.prompts[0]
    assert stats["dropped_by_reason"] == {"group_not_mentioned": 1}
    adds_up(stats, kept, dropped)
    new = kept.filter(pl.col("source") == "synth:gap_fill")
    provs = synth_meta(new)
    assert sorted((p["gap"]["axis"], p["gap"]["group"]) for p in provs) == [("gender", "nonbinary"),
                                                                           ("religion", "hindu")]
    for p in provs:
        check_provenance(p, "gap_fill")
        assert p["source_ids"] == ["r0"]
    assert synth_meta(dropped)[0]["gap"] == {"axis": "gender", "group": "nonbinary"}
    assert [(g["group"], g["quota"], g["generated"]) for g in stats["gaps"]] == [("nonbinary", 2, 1), ("hindu", 1, 1)]


def test_gap_fill_inline_rounds_and_exclusive() -> None:
    from gristmill.synth.methods.gap_fill import GapFillParams

    replies = iter([
        json.dumps({"instruction": "Help my grandmother and her brother plan a trip.", "input": "", "output": "A."}),
        json.dumps({"instruction": "Help my grandmother plan a garden.", "input": "", "output": "Plant tulips."}),
    ])
    engine = ScriptedEngine(lambda u, s: next(replies))
    params = GapFillParams(gaps_inline=[{"axis": "gender", "group": "female", "rows": 1}], exclusive=True, lexicon=LEXICON,
                           oversample=1, group_phrases={"female": "a grandmother"})
    kept, dropped, stats = run_method(make_frame(["x"]), params, engine=engine, model_name="m")
    assert engine.calls == [(1, True), (1, True)]  # round 2 re-asks only for the missing row
    assert "a grandmother" in engine.prompts[0]
    assert stats["dropped_by_reason"] == {"mentions_other_group": 1} and kept.height == 2
    adds_up(stats, kept, dropped)


def test_gap_fill_params_and_helpers() -> None:
    from pydantic import ValidationError

    from gristmill.synth.methods.gap_fill import GapFillParams, phrase, quotas

    with pytest.raises(ValidationError, match="gaps_inline"):
        GapFillParams()
    assert quotas([5, 1, 3], 6) == [3, 1, 2] and quotas([2, 1], 10) == [2, 1]
    assert phrase("older_adult") == "an older adult" and phrase("druid") == "a druid person"
    assert phrase("druid", {"druid": "a Druid"}) == "a Druid"
    with pytest.raises(ValueError, match="not in the lexicon"):
        run_method(make_frame(["x"]), GapFillParams(gaps_inline=[{"axis": "gender", "group": "robot", "rows": 1}],
                                               lexicon=LEXICON),
            engine=ScriptedEngine(lambda u, s: ""), model_name="m")


def test_mentions_agree_with_the_audit_and_phrases_name_their_group() -> None:
    from gristmill.audit.lexicon import lexicon_or_builtin
    from gristmill.common.lexicon import detect, groups_mentioned
    from gristmill.synth.methods.gap_fill import PHRASES, phrase

    lexicon = lexicon_or_builtin(None)
    texts = ["Her grandmothers said he left", "A nonbinary  teen at the Synagogue", "Native Hawaiians and "
             "African-American retirees", "middle-aged Latinas", "the kingdom of kids", "Caucasians; Buddhism",
             *PHRASES.values()]
    hits = detect(pl.Series(texts), lexicon, list(lexicon))
    for i, text in enumerate(texts):
        for axis, groups in lexicon.items():
            assert groups_mentioned(text, groups) == hits[axis][i].to_list(), (text, axis)
    for axis, groups in lexicon.items():
        for group in groups:
            assert group in hits[axis][len(texts) - len(PHRASES) + list(PHRASES).index(group)].to_list()
            assert phrase(group) == PHRASES[group]


# --- multi_turn -------------------------------------------------------------------------------------------------

PRIME = [{"role": "user", "content": "What is a prime?"},
         {"role": "assistant", "content": "A number with exactly two divisors."}]
COLOUR = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Name a colour."},
          {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another one?"},
          {"role": "assistant", "content": "Green."}]


def conversation_frame() -> pl.DataFrame:
    msgs: list[list[dict[str, str]] | None] = [PRIME, COLOUR, [{"role": "user", "content": "Open question?"}], None]
    return make_frame(["prime", "colour", "open", "plain"], messages=msgs)


def test_multi_turn_prompts_answers_and_accounting() -> None:
    from gristmill.synth.methods.multi_turn import SYSTEM, TEMPLATE, MultiTurnParams

    asked: dict[str, int] = {}

    def reply(user: str, sampling: SamplingConfig) -> Reply:
        key = "prime" if "prime" in user else "colour"
        if sampling.json_schema is None:  # stage 2: the answer to the follow-up
            return "2, 3, 5 and 7 are the primes below 10." if key == "prime" else "Blue."  # Blue. -> too_short
        asked[key] = asked.get(key, 0) + 1
        return {("prime", 1): json.dumps({"question": "Which numbers below 10 are prime?"}),
                ("prime", 2): json.dumps({"question": "Is 1 a prime?"}),  # ROUGE-L 0.75 -> not_novel
                ("colour", 1): json.dumps({"question": "Which colour is the sky on a clear day?"}),
                ("colour", 2): "Ask about red next"}[key, asked[key]]  # no JSON -> unparseable

    engine = ScriptedEngine(reply)
    frame = conversation_frame()
    params = MultiTurnParams(n=4, oversample=1, max_rounds=1)
    kept, dropped, stats = run_method(frame, params, engine=engine, model_name="m")
    assert engine.calls == [(4, True), (2, False)] and asked == {"prime": 2, "colour": 2}  # each source twice
    prime_prompt = TEMPLATE.format(transcript="User: What is a prime?\n\n"
                                              "Assistant: A number with exactly two divisors.")
    colour_prompt = TEMPLATE.format(transcript="User: Name a colour.\n\nAssistant: Blue.\n\nUser: Another one?\n\n"
                                               "Assistant: Green.")  # the system turn is not shown
    stage1, stage2 = engine.conversations[:4], engine.conversations[4:]
    assert sorted(c[1]["content"] for c in stage1) == sorted([prime_prompt, colour_prompt] * 2)
    assert all(c[0] == {"role": "system", "content": SYSTEM} for c in stage1)
    assert sorted(stage2, key=len) == [
        [*PRIME, {"role": "user", "content": "Which numbers below 10 are prime?"}],
        [*COLOUR, {"role": "user", "content": "Which colour is the sky on a clear day?"}],  # system turn kept
    ]
    assert stats["rows_added"] == 4 and stats["parsed"] == 3 and stats["follow_up_requests"] == 2
    assert stats["accepted"] == 1 and stats["requested"] == stats["generated"] == 4
    assert stats["dropped_by_reason"] == {"not_novel": 1, "unparseable": 1, "too_short": 1}
    adds_up(stats, kept, dropped)
    assert kept["id"][:4].to_list() == frame["id"].to_list()  # sources stay
    new = kept.filter(pl.col("source") == "synth:multi_turn")
    assert new["messages"].to_list() == [[*PRIME, {"role": "user", "content": "Which numbers below 10 are prime?"},
                                          {"role": "assistant", "content": "2, 3, 5 and 7 are the primes below 10."}]]
    assert new["text"].item() == ("What is a prime?\n\nA number with exactly two divisors.\n\nWhich numbers below 10 "
                                  "are prime?\n\n2, 3, 5 and 7 are the primes below 10.")
    prov = synth_meta(new)[0]
    check_provenance(prov, "multi_turn")
    assert prov["source_ids"] == ["r0"] and prov["round"] == 0 and prov["rouge_l_max"] == 0.2
    assert json.loads(prov["answer_sampling"])["max_tokens"] == params.answer_max_tokens
    short = dropped.filter(pl.col("reason") == "too_short")
    assert short["text"].item().endswith("Green.\n\nWhich colour is the sky on a clear day?\n\nBlue.")
    assert synth_meta(short)[0]["source_ids"] == ["r1"]


def test_multi_turn_needs_conversations() -> None:
    from gristmill.synth.methods.multi_turn import MultiTurnParams

    frame = make_frame(["q"], messages=[[{"role": "user", "content": "Open question?"}]])
    with pytest.raises(ValueError, match="no conversations"):
        run_method(frame, MultiTurnParams(), engine=ScriptedEngine(lambda u, s: ""), model_name="m")
