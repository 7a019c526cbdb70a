from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml

from gristmill.curation.decontam import (
    DecontamParams,
    EvalGrams,
    contamination_hits,
    decontaminate,
    detect_header,
    eval_ngrams,
    load_eval_items,
)
from gristmill.recipe import load_recipe
from gristmill.runner import Runner
from tests.conftest import make_frame

# 18 words; ids are "evals.jsonl:<row>".
LONG_Q = "Which of these processes lets green plants turn sunlight water and carbon dioxide into sugar and oxygen gas?"
SHORT_Q = "Where would you store fresh milk overnight?"  # 7 words
WORDS = LONG_Q.split()


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _accounted(frame: pl.DataFrame, kept: pl.DataFrame, dropped: pl.DataFrame) -> None:
    assert kept.height + dropped.height == frame.height
    assert dropped["reason"].null_count() == 0
    assert sorted(kept["id"].to_list() + dropped["id"].to_list()) == sorted(frame["id"].to_list())


@pytest.fixture
def evals(tmp_path: Path) -> Path:
    return _jsonl(tmp_path / "evals.jsonl", [
        {"question": "A filler question about nothing in particular that nobody will ever copy anywhere", "n": 1},
        {"question": LONG_Q, "answer": "photosynthesis", "n": 2},
        {"question": SHORT_Q, "n": 3},
        {"question": "Too short", "n": 4},
    ])


def _contamination(frame: pl.DataFrame) -> dict[str, list[str] | None]:
    return dict(zip(frame["id"], frame["meta"].struct.field("contamination").to_list(), strict=True))


def test_thirteen_word_span_is_caught_and_twelve_is_not(evals: Path) -> None:
    frame = make_frame([
        "Notes: " + " ".join(WORDS[3:16]) + " is the topic.",  # 13 consecutive words of LONG_Q
        "Notes: " + " ".join(WORDS[3:15]) + " is the topic.",  # 12 words: no 13-gram in common
        "Totally unrelated text about the stock market and its many ups and downs over a long time.",
        LONG_Q.upper(),  # case and punctuation do not matter
    ])
    params = DecontamParams(eval_sets=[str(evals)], text_fields=["question"])
    result = decontaminate(frame, params)
    kept, dropped, stats = result
    _accounted(frame, kept, dropped)
    assert dropped["id"].to_list() == ["r0", "r3"]
    assert set(dropped["reason"]) == {"contaminated"}
    assert _contamination(dropped) == {"r0": ["evals.jsonl:1"], "r3": ["evals.jsonl:1"]}
    assert _contamination(kept) == {"r1": None, "r2": None}
    assert stats["rows_hit"] == 2 and stats["dropped_by_reason"] == {"contaminated": 2}
    assert result.report is not None and "report" not in stats
    assert result.report["items_hit"] == {"evals.jsonl:1": 2}
    assert result.report["eval_sets"] == {"evals.jsonl": {"items": 4, "items_hit": 1}}


def test_short_eval_items_match_when_contained_whole(evals: Path) -> None:
    frame = make_frame([
        "Quick question: where would you store fresh milk overnight? Asking for a friend.",
        "Where would you store fresh milk?",  # 6 of its 7 words
        "It is too short to matter.",  # contains "too short", but that item is under min_item_words
    ])
    kept, dropped, stats = decontaminate(frame, DecontamParams(eval_sets=[str(evals)], text_fields=["question"]))
    _accounted(frame, kept, dropped)
    assert _contamination(dropped) == {"r0": ["evals.jsonl:2"]}
    assert stats["eval_items"] == 4 and stats["eval_items_skipped_short"] == 1
    kept, dropped, _ = decontaminate(
        frame, DecontamParams(eval_sets=[str(evals)], text_fields=["question"], min_item_words=2)
    )
    assert _contamination(dropped) == {"r0": ["evals.jsonl:2"], "r2": ["evals.jsonl:3"]}


def test_flag_keeps_rows_and_annotates_them(evals: Path) -> None:
    frame = make_frame([LONG_Q, "clean row with nothing from the eval set in it at all, honestly"])
    kept, dropped, stats = decontaminate(
        frame, DecontamParams(eval_sets=[str(evals)], text_fields=["question"], action="flag")
    )
    _accounted(frame, kept, dropped)
    assert dropped.height == 0 and stats["rows_hit"] == 1
    assert _contamination(kept) == {"r0": ["evals.jsonl:1"], "r1": None}
    assert kept["meta"].struct.field("source_line").to_list() == [1, 2]  # earlier meta survives


def test_min_overlap_counts_distinct_ngrams_per_item(evals: Path) -> None:
    frame = make_frame([" ".join(WORDS[0:13]), " ".join(WORDS[0:15]), SHORT_Q])  # 1 and 3 shared 13-grams
    params = DecontamParams(eval_sets=[str(evals)], text_fields=["question"], min_overlap=3)
    _, dropped, _ = decontaminate(frame, params)
    # The short item has a single n-gram: containing it whole always counts.
    assert _contamination(dropped) == {"r1": ["evals.jsonl:1"], "r2": ["evals.jsonl:2"]}


def test_csv_with_and_without_header_and_default_text_fields(tmp_path: Path) -> None:
    no_header = tmp_path / "arc.csv"
    no_header.write_text(f'"{SHORT_Q}","fridge","oven","B"\n"Which gas do plants take in from the air?","CO2","O2","A"\n')
    header = tmp_path / "qa.csv"
    header.write_text(f'id,question,answerKey\n7,"{LONG_Q}",A\n')
    assert not detect_header(no_header) and detect_header(header)
    assert detect_header(header, ["question"]) and not detect_header(no_header, ["column_1"])

    items = load_eval_items([str(no_header), str(header)])
    # All string columns joined; the numeric id column of qa.csv is not text, it names the item.
    assert items["item_id"].to_list() == ["arc.csv:0", "arc.csv:1", "qa.csv:7"]
    assert items["text"][0] == f"{SHORT_Q} fridge oven B"
    assert items["text"][2] == f"{LONG_Q} A"
    assert load_eval_items([str(no_header)], text_fields=["column_1"])["text"][1].startswith("Which gas")
    assert load_eval_items([str(header)], has_header=False)["item_id"].to_list() == ["qa.csv:0", "qa.csv:1"]

    frame = make_frame([f"Copied: {LONG_Q}", f"Copied: {SHORT_Q}", f"Copied: {SHORT_Q} fridge oven b"])
    result = decontaminate(frame, DecontamParams(eval_sets=[str(no_header), str(header)]))
    dropped = result.dropped
    # With joined columns the short question alone is no longer a whole item; with the question column it is.
    assert _contamination(dropped) == {"r0": ["qa.csv:7"], "r2": ["arc.csv:0"]}
    _, dropped, _ = decontaminate(frame, DecontamParams(eval_sets=[str(no_header)], text_fields=["column_1"]))
    assert _contamination(dropped) == {"r1": ["arc.csv:0"], "r2": ["arc.csv:0"]}
    assert result.report is not None and result.report["eval_sets"] == {"arc.csv": {"items": 2, "items_hit": 1},
                                            "qa.csv": {"items": 1, "items_hit": 1}}


def test_a_row_can_hit_items_of_several_files_and_same_names_are_told_apart(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = _jsonl(tmp_path / "a" / "test.jsonl", [{"q": LONG_Q}])
    b = _jsonl(tmp_path / "b" / "test.jsonl", [{"q": "unrelated"}, {"q": SHORT_Q}])
    frame = make_frame([f"{LONG_Q} and also {SHORT_Q}"])
    _, dropped, stats = decontaminate(frame, DecontamParams(eval_sets=[str(a), str(b)], min_item_words=3))
    assert _contamination(dropped) == {"r0": ["a/test.jsonl:0", "b/test.jsonl:1"]}
    assert stats["eval_items_hit"] == 2


def test_missing_text_field_names_the_columns(evals: Path) -> None:
    with pytest.raises(ValueError, match=r"no column\(s\) \['prompt'\].*question"):
        decontaminate(make_frame(["x"]), DecontamParams(eval_sets=[str(evals)], text_fields=["prompt"]))


def test_params_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="min_item_words"):
        DecontamParams(eval_sets=["x.csv"], ngram=4, min_item_words=5)
    with pytest.raises(ValueError):
        DecontamParams(eval_sets=[])
    with pytest.raises(ValueError):
        DecontamParams(eval_sets=["x.csv"], action="delete")


def test_ngram_functions_known_answer() -> None:
    index = eval_ngrams(pl.Series(["the quick brown fox", "a b", "x"]), 3, min_item_words=2)
    # "the quick brown", "quick brown fox" (n=3) and "a b" (n=2); "x" is under min_item_words.
    assert index.grams.select("item", "n").rows() == [(0, 3), (0, 3), (1, 2)]
    assert index.prefix.height == 4  # 2-word windows of the checked items: the quick, quick brown, brown fox, a b
    texts = pl.Series(["see the quick brown dog", "quick brown", "so a b c", None, "", "The QUICK, brown fox!"])
    hits = contamination_hits(texts, index, batch_rows=2)  # tiny batches: row numbers stay global
    assert hits.rows() == [(0, 0, 1), (2, 1, 1), (5, 0, 2)]
    assert contamination_hits(texts, EvalGrams(index.grams.head(0), index.prefix)).height == 0


def test_empty_frame_and_no_hits(evals: Path) -> None:
    frame = make_frame(["nothing to see"]).head(0)
    result = decontaminate(frame, DecontamParams(eval_sets=[str(evals)]))
    assert result.kept.height == result.dropped.height == 0 and result.stats["rows_hit"] == 0
    assert result.report is not None and result.report["items_hit"] == {}


def test_eval_files_in_any_format_and_malformed_lines_name_the_line(tmp_path: Path) -> None:
    rows = [{"question": LONG_Q}, {"question": SHORT_Q}]
    pq = tmp_path / "evals.parquet"
    pl.DataFrame(rows).write_parquet(pq)
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": rows}))
    items = load_eval_items([str(pq), str(wrapped)])
    assert items["item_id"].to_list() == ["evals.parquet:0", "evals.parquet:1", "wrapped.json:0", "wrapped.json:1"]
    assert items["text"].to_list() == [LONG_Q, SHORT_Q, LONG_Q, SHORT_Q]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n\n{oops\n")
    with pytest.raises(ValueError, match=r"decontaminate.eval_sets: .*bad.jsonl:3: invalid JSON"):
        load_eval_items([str(bad)])
    with pytest.raises(ValueError, match=r"unsupported file type '.txt'"):
        load_eval_items([str(_jsonl(tmp_path / "evals.txt", rows))])


def test_runner_resolves_eval_set_lists_and_writes_the_report(
    tmp_path: Path, evals: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRISTMILL_CACHE", str(tmp_path / "cache"))
    (tmp_path / "evals").mkdir()
    evals.rename(tmp_path / "evals" / "evals.jsonl")
    (tmp_path / "evals" / "more.csv").write_text(f'"{SHORT_Q}","fridge"\n')
    rows = [{"instruction": f"Answer this: {LONG_Q}", "output": "Photosynthesis."},
            {"instruction": "Write a haiku about autumn leaves falling.", "output": "Leaves drift down slowly."}]
    _jsonl(tmp_path / "data.jsonl", rows)
    recipe = {
        "name": "t",
        "inputs": [{"path": "data.jsonl", "mapping": "alpaca"}],
        "steps": [{"decontaminate": {"eval_sets": ["evals/evals.jsonl", "evals/more.csv"]}}],
        "output": {"dir": str(tmp_path / "run"), "formats": ["parquet"]},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = Runner(load_recipe(path)).run()
    step = result.manifest["steps"][1]
    assert step["dropped_by_reason"] == {"contaminated": 1} and result.frame.height == 1
    report = json.loads((result.run_dir / "reports" / "01-decontaminate.json").read_text())
    assert list(report["items_hit"]) == ["evals.jsonl:1"]

    assert Runner(load_recipe(path)).run().recomputed == []
    (tmp_path / "evals" / "more.csv").write_text(f'"{SHORT_Q} (edited)","fridge"\n')
    assert Runner(load_recipe(path)).run().recomputed == ["decontaminate"]

    recipe["steps"] = [{"decontaminate": {"eval_sets": ["evals/missing.jsonl"]}}]
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(FileNotFoundError, match=r"steps.decontaminate.eval_sets: .*missing.jsonl"):
        Runner(load_recipe(path)).run()


def test_slices_merge_as_one_pass_counts() -> None:
    from gristmill.curation.decontam import merge_slices

    base = {"ngram": 13, "min_overlap": 1, "action": "drop", "eval_sets": {"a.jsonl": {"items": 4, "items_hit": 0}}}
    stats = {"eval_items": 4, "eval_items_checked": 4, "eval_items_skipped_short": 0, "eval_ngrams": 9}
    merged, report = merge_slices(
        [stats | {"dropped": 1}, stats | {"dropped": 4}],
        [base | {"items_hit": {"a.jsonl:3": 1}}, base | {"items_hit": {"a.jsonl:3": 2, "a.jsonl:1": 2}}], 10)
    assert report["items_hit"] == {"a.jsonl:3": 3, "a.jsonl:1": 2}
    assert list(report["items_hit"]) == ["a.jsonl:3", "a.jsonl:1"]
    assert report["eval_sets"]["a.jsonl"] == {"items": 4, "items_hit": 2}
    assert merged["eval_items_hit"] == 2 and merged["dropped"] == 5 and merged["eval_items"] == 4
