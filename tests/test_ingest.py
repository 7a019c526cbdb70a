from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest

from gristmill.common.readers import READERS, Bad, read_table
from gristmill.ingest import IngestError, InputSpec, check_unique_ids, ingest
from gristmill.mappings import MAPPINGS, map_alpaca, map_messages, map_sharegpt, map_text

ALPACA = [
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "lang": "en"},
    {"instruction": "Name a colour.", "output": "Blue."},
]


def test_alpaca_mapping_known_answer() -> None:
    text, messages = map_alpaca({"instruction": "Add.", "input": "2 3", "output": "5"})
    assert text == "Add.\n\n2 3\n\n5"
    assert messages == [{"role": "user", "content": "Add.\n\n2 3"}, {"role": "assistant", "content": "5"}]
    text, messages = map_alpaca({"instruction": "Hi", "output": "Hello"})
    assert text == "Hi\n\nHello" and messages[0]["content"] == "Hi"


def test_sharegpt_mapping_roles() -> None:
    rec = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                             {"from": "gpt", "value": "Hello"}]}
    text, messages = map_sharegpt(rec)
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert text == "Hi\n\nHello"
    with pytest.raises(ValueError, match=r"conversations\[0\].from = 'robot'"):
        map_sharegpt({"conversations": [{"from": "robot", "value": "x"}]})


def test_messages_and_text_mappings() -> None:
    text, messages = map_messages({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]})
    assert text == "Q\n\nA" and len(messages) == 2
    with pytest.raises(ValueError, match=r"messages\[0\]"):
        map_messages({"messages": [{"role": "bot", "content": "x"}]})
    assert map_text({"text": "plain"}) == ("plain", None)
    with pytest.raises(ValueError, match="missing field 'text'"):
        map_text({"body": "x"})


def _write(path: Path, fmt: str, rows: list[dict]) -> Path:
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "csv":
        pl.DataFrame(rows).write_csv(path)
    elif fmt == "parquet":
        pl.DataFrame(rows).write_parquet(path)
    elif fmt == "hf_disk":
        from datasets import Dataset

        Dataset.from_list(rows).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("fmt,name", [("jsonl", "d.jsonl"), ("json", "d.json"), ("csv", "d.csv"),
                                      ("parquet", "d.parquet"), ("hf_disk", "d_hf")])
def test_every_format_reads_the_same_rows(tmp_path: Path, fmt: str, name: str) -> None:
    rows = [dict(r, input=r.get("input", ""), lang=r.get("lang", "")) for r in ALPACA]
    path = _write(tmp_path / name, fmt, rows)
    frame, rejects = ingest(InputSpec(path=str(path)), path)
    assert rejects.height == 0
    assert frame["text"].to_list() == ["Add the numbers.\n\n2 and 3\n\n5", "Name a colour.\n\nBlue."]
    assert frame["messages"][1].to_list()[1] == {"role": "assistant", "content": "Blue."}
    assert frame["lang"].to_list() == ["en", ""]  # unmapped fields pass through
    assert frame["source"][0] == str(path)
    assert {"id", "text", "messages", "source", "meta"} <= set(frame.columns)


def test_ids_are_file_and_line_and_stable(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.jsonl", "jsonl", ALPACA)
    first, _ = ingest(InputSpec(path=str(path)), path)
    again, _ = ingest(InputSpec(path=str(path)), path)
    assert first["id"].to_list() == ["a.jsonl:1", "a.jsonl:2"] == again["id"].to_list()
    own = _write(tmp_path / "b.jsonl", "jsonl", [dict(ALPACA[0], id=7)])
    assert ingest(InputSpec(path=str(own)), own)[0]["id"].to_list() == ["7"]


def test_malformed_line_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ALPACA[0]) + "\n{not json\n" + json.dumps({"instruction": "x"}) + "\n")
    with pytest.raises(IngestError, match=r"bad.jsonl:2: invalid JSON.*on_error: skip"):
        ingest(InputSpec(path=str(path)), path)


def test_on_error_skip_counts_rejects_with_reason(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ALPACA[0]) + "\n{not json\n" + json.dumps({"instruction": "x"}) + "\n")
    frame, rejects = ingest(InputSpec(path=str(path), on_error="skip"), path)
    assert frame.height == 1
    assert rejects["reason"].to_list() == ["malformed_input", "malformed_input"]
    assert rejects["id"].to_list() == ["bad.jsonl:2", "bad.jsonl:3"]
    assert "missing field 'output'" in rejects["detail"][1]


def test_duplicate_ids_across_inputs_are_an_error(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.jsonl", "jsonl", [dict(ALPACA[0], id="x")])
    b = _write(tmp_path / "b.jsonl", "jsonl", [dict(ALPACA[1], id="x")])
    frame = pl.concat([ingest(InputSpec(path=str(p)), p)[0] for p in (a, b)], how="diagonal_relaxed")
    with pytest.raises(IngestError, match="id 'x' occurs 2 times"):
        check_unique_ids(frame)


def test_unknown_extension_asks_for_format(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("x")
    with pytest.raises(IngestError, match="set `format:`"):
        ingest(InputSpec(path=str(path)), path)


def test_jsonl_reader_known_answer(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n\n{oops\n{"a": 2}\n')
    table = read_table(path)
    assert table.frame["a"].to_list() == [1, 2] and table.number.to_list() == [1, 4]
    assert table.bad == [Bad(3, "invalid JSON (Expecting property name enclosed in double quotes at column 2)")]
    assert table.where(4) == f"{path}:4" and not table.exact_types and table.record(1) == {"a": 2}
    assert set(READERS) == {"jsonl", "json", "csv", "parquet", "hf_disk"}


def _expected(mapping: str, records: list[dict], name: str, first: int) -> tuple[list, list]:
    """What the record mapper says: ``(id, text, messages)`` of the rows it maps, ``(id, error)`` of the others."""
    rows, errors = [], []
    for line, rec in enumerate(records, first):
        try:
            text, messages = MAPPINGS[mapping].row(rec)
            rows.append((f"{name}:{line}", text, messages))
        except ValueError as err:
            errors.append((f"{name}:{line}", str(err)))
    return rows, errors


def _check_against_record_mapper(path: Path, mapping: str, records: list[dict]) -> None:
    frame, rejects = ingest(InputSpec(path=str(path), mapping=mapping, on_error="skip"), path)
    rows, errors = _expected(mapping, records, path.name, 1 if path.suffix == ".jsonl" else 0)
    assert list(zip(frame["id"], frame["text"], frame["messages"].to_list(), strict=True)) == rows
    details = rejects.to_dicts() if rejects.height else []
    got = [(r["id"], r["detail"].split(": ", 1)[1].rsplit(" (mapping:", 1)[0]) for r in details]
    assert got == errors


SHAREGPT = [
    {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                       {"from": "gpt", "value": ""}, {"from": "GPT", "value": "Hello"}]},
    {"conversations": [{"from": "robot", "value": "x"}]},
    {"conversations": [{"from": "human", "value": "a"}, {"from": "it's", "value": "b"}]},  # repr needs "..."
    {"conversations": [{"from": "human", "value": "a"}, {"from": "röbot", "value": "b"}]},
    {"conversations": [{"from": None, "value": "a"}]},
    {"conversations": [{"from": "human", "value": None}]},
    {"conversations": []},
    {"other": 1},
    {"conversations": [{"from": "human", "value": 5}]},  # a number polars reads as "5"
    {"conversations": [{"from": "human", "value": "5"}, {"from": "gpt", "value": "[1]"}]},  # strings that look coerced
]
MESSAGES = [
    {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
    {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "  "}, {"role": "tool", "content": "T"}]},
    {"messages": [{"role": "user", "content": "Q"}, {"role": "bot", "content": "A"}]},
    {"messages": [{"role": "user", "content": None}]},
    {"messages": []},
    {"messages": "not a list"},  # a string among lists: polars makes the column text
]


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_conversation_mappings_equal_the_record_mappers(tmp_path: Path, fmt: str) -> None:
    _check_against_record_mapper(_write(tmp_path / f"s.{fmt}", fmt, SHAREGPT), "sharegpt", SHAREGPT)
    _check_against_record_mapper(_write(tmp_path / f"m.{fmt}", fmt, MESSAGES), "messages", MESSAGES)


def test_conversation_mappings_on_parquet(tmp_path: Path) -> None:
    typed = [r for r in SHAREGPT[:8] if r != {"other": 1}]
    _check_against_record_mapper(_write(tmp_path / "s.parquet", "parquet", typed), "sharegpt", typed)
    typed = MESSAGES[:5]
    path = _write(tmp_path / "m.parquet", "parquet", typed)
    frame, rejects = ingest(InputSpec(path=str(path), mapping="messages", on_error="skip"), path)
    assert frame["text"].to_list() == ["Q\n\nA", "T"]  # system and blank turns are not text
    assert rejects["detail"].str.contains(r"row \d: messages\[1\] must be").to_list() == [True, False, False]


def test_alpaca_on_columnar_formats_checks_every_row_with_the_same_messages(tmp_path: Path) -> None:
    frame = pl.DataFrame({"instruction": ["a", None, "c", "d", "e"], "input": ["", "x", None, "  ", "\x1c"],
                          "output": ["o", "o", None, "p", "q"], "n": pl.Series([1, 2, 3, 4, 5], dtype=pl.Int32)})
    for name in ("a.parquet", "a.csv"):
        path = tmp_path / name
        frame.write_parquet(path) if name.endswith("parquet") else frame.write_csv(path)
        rows, rejects = ingest(InputSpec(path=str(path), on_error="skip"), path)
        # \x1c is whitespace to Python's strip(), so that input is left out as the record mapper leaves it out.
        assert rows["text"].to_list() == ["a\n\no", "d\n\np", "e\n\nq"]
        assert rows["messages"][2].to_list()[0] == {"role": "user", "content": "e"}
        assert [re.search(r":(row \d|\d): ", d).group(1) for d in rejects["detail"]] == (  # type: ignore[union-attr]
            ["row 1", "row 2"] if name.endswith("parquet") else ["3", "4"])
        assert [d.split(": ", 1)[1] for d in rejects["detail"]] == [
            "missing field 'instruction' (mapping: alpaca)", "missing field 'output' (mapping: alpaca)"]
    assert rows["n"].dtype == pl.String  # csv cells are strings
    path = tmp_path / "typed.parquet"
    pl.DataFrame({"instruction": [1, None], "output": ["o", "o"]}).write_parquet(path)
    _, rejects = ingest(InputSpec(path=str(path), on_error="skip"), path)
    assert [d.split(": ", 1)[1] for d in rejects["detail"]] == [
        "field 'instruction' must be a string, got int (mapping: alpaca)", "missing field 'instruction' (mapping: alpaca)"]


def test_jsonl_values_of_mixed_types_are_checked_as_written(tmp_path: Path) -> None:
    records = [{"instruction": 5, "output": "x"}, {"instruction": "5", "output": "x"},
               {"instruction": "ok", "output": ["a"]}, {"instruction": "true", "input": "{}", "output": "y"}]
    path = _write(tmp_path / "mixed.jsonl", "jsonl", records)
    _check_against_record_mapper(path, "alpaca", records)


def test_pass_through_and_raw_source_meta_keep_the_old_schema(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pl.DataFrame({"instruction": ["a", "b"], "output": ["x", "y"], "n": pl.Series([1, 2], dtype=pl.Int32),
                  "source": ["web", None], "meta": [{"k": 1}, {"k": 2}], "id": [True, None]}).write_parquet(path)
    frame, _ = ingest(InputSpec(path=str(path)), path)
    assert frame.schema["n"] == pl.Int64  # rows used to be rebuilt from Python values
    assert frame["raw_source"].to_list() == ["web", None] and frame["raw_meta"].to_list() == ['{"k": 1}', '{"k": 2}']
    assert frame["id"].to_list() == ["True", "p.parquet:1"] and frame["meta"][1] == {"source_line": 1}
    path = _write(tmp_path / "p.jsonl", "jsonl", [{"instruction": "a", "output": "x", "meta": {"k": 1, "j": "z"}},
                                                  {"instruction": "b", "output": "y", "meta": {"j": "w"}}])
    frame, _ = ingest(InputSpec(path=str(path)), path)
    assert frame["raw_meta"].to_list() == ['{"k": 1, "j": "z"}', '{"j": "w"}']  # as written, not merged


def test_records_whose_types_clash_become_rejects(tmp_path: Path) -> None:
    records = [{"messages": [{"role": "user", "content": "Q"}]}, {"messages": {"role": "user", "content": "Q"}}]
    path = _write(tmp_path / "clash.jsonl", "jsonl", records)
    _check_against_record_mapper(path, "messages", records)
    with pytest.raises(IngestError, match=r"clash.jsonl:2: field 'messages' must be a non-empty list"):
        ingest(InputSpec(path=str(path), mapping="messages"), path)
