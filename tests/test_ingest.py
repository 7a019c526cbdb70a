from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from gristmill.ingest import IngestError, InputSpec, check_unique_ids, ingest
from gristmill.mappings import map_alpaca, map_messages, map_sharegpt, map_text

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
