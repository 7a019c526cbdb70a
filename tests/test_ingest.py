from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest

from gristmill.common.readers import READERS, Bad, iter_tables, read_table
from gristmill.ingest import IngestError, InputSpec, check_unique_ids, ingest, ingest_counted, ingest_slices
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


def test_parquet_slices_never_cross_a_row_group(tmp_path: Path) -> None:
    path = tmp_path / "g.parquet"
    pl.DataFrame({"text": [f"t{i}" for i in range(8)]}).write_parquet(path, row_group_size=5)
    import pyarrow.parquet as pq

    assert [pq.read_metadata(path).row_group(i).num_rows for i in range(2)] == [5, 3]
    tables = list(iter_tables(path, rows=2))
    assert [t.number.to_list() for t in tables] == [[0, 1], [2, 3], [4], [5, 6], [7]]
    assert [t.frame["text"].to_list() for t in tables][3] == ["t5", "t6"] and tables[3].where(5) == f"{path}:row 5"
    assert [t.number.to_list() for t in iter_tables(path)] == [list(range(8))]  # rows=None: one whole read


def _sliced(spec: InputSpec, path: Path, rows: int) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    parts = list(ingest_slices(spec, path, rows))
    kept = pl.concat([k for k, _, _ in parts if k.height])
    rejects = pl.concat([r for _, r, _ in parts if r.height]) if any(r.height for _, r, _ in parts) else pl.DataFrame()
    return kept, rejects, sum(n for _, _, n in parts)


def test_sliced_ingest_equals_the_whole_read(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    frame = pl.DataFrame({"instruction": ["a", None, "c", "d", "e", "f", None], "output": ["o"] * 7,
                          "n": pl.Series(range(7), dtype=pl.Int32), "meta": [{"k": i} if i != 2 else None for i in range(7)]})
    frame.write_parquet(path, row_group_size=3)
    spec = InputSpec(path="p.parquet", on_error="skip")
    whole, whole_rejects, records = ingest_counted(spec, path)
    kept, rejects, read = _sliced(spec, path, 2)  # the slice of row 2 has only a null meta: still String
    assert kept.schema == whole.schema and kept.equals(whole) and read == records == 7
    assert rejects.equals(whole_rejects) and rejects["id"].to_list() == ["p.parquet:1", "p.parquet:6"]
    assert "p.parquet:row 6: missing field 'instruction'" in rejects["detail"][1]
    with pytest.raises(IngestError, match=r"p.parquet:row 1: missing field 'instruction'.*on_error: skip"):
        list(ingest_slices(InputSpec(path="p.parquet"), path, 2))
    # The yield check counts every slice: 2 of 7 rejected is over 0.2, and a slice keeping nothing is no failure.
    with pytest.raises(IngestError, match=r"2 of 7 records rejected \(29%.*first: .*p.parquet:row 1"):
        list(ingest_slices(InputSpec(path="p.parquet", on_error="skip", max_reject_fraction=0.2), path, 1))


def _ingest_run(tmp_path: Path, inputs: list[dict], slice_rows: int) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    recipe = tmp_path / f"r{slice_rows}.yaml"
    recipe.write_text(json.dumps({"name": "i", "inputs": inputs, "steps": [{"normalize": {}}],
                                  "output": {"dir": str(tmp_path / f"run{slice_rows}"), "formats": ["parquet"]}}))
    from gristmill.recipe import load_recipe
    from gristmill.runner import Runner

    kept, stats, _ = Runner(load_recipe(recipe), slice_rows=slice_rows)._ingest()
    return pl.read_parquet(kept), pl.read_parquet(kept.parent / "dropped.parquet"), stats


def test_runner_ingest_streams_several_inputs_to_the_rows_of_one_read(tmp_path: Path) -> None:
    pl.DataFrame({"id": [f"a{i}" for i in range(9)], "text": [f"row {i}" for i in range(9)],
                  "lang": ["en"] * 9}).write_parquet(tmp_path / "a.parquet", row_group_size=4)
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": f"b {i}", "score": i}) + "\n" for i in range(5))
                                      + "{oops\n")
    inputs = [{"path": "a.parquet", "mapping": "text"}, {"path": "b.jsonl", "mapping": "text", "on_error": "skip"}]
    kept, dropped, stats = _ingest_run(tmp_path, inputs, 4)  # slices of 2 rows
    specs = [(InputSpec(**i), tmp_path / i["path"]) for i in inputs]
    expected = pl.concat([ingest_counted(s, p)[0] for s, p in specs], how="diagonal_relaxed")
    assert kept.schema == expected.schema and kept.equals(expected)
    assert kept.columns[-2:] == ["lang", "score"] and kept["id"].to_list()[-1] == "b.jsonl:5"
    assert dropped["id"].to_list() == ["b.jsonl:6"] and (stats["rows_in"], stats["kept"], stats["dropped"]) == (15, 14, 1)
    import pyarrow.parquet as pq

    meta = pq.read_metadata(tmp_path / "run4" / "steps" / "00-ingest" / "kept.parquet")
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [4, 4, 1, 4, 1]  # joined by slices


def test_runner_ingest_finds_an_id_repeated_across_slices_and_inputs(tmp_path: Path) -> None:
    pl.DataFrame({"id": ["x", "y", "z", "w"], "text": ["1", "2", "3", "4"]}).write_parquet(tmp_path / "a.parquet")
    pl.DataFrame({"id": ["v", "z"], "text": ["5", "6"]}).write_parquet(tmp_path / "b.parquet")
    inputs = [{"path": "a.parquet", "mapping": "text"}, {"path": "b.parquet", "mapping": "text"}]
    with pytest.raises(IngestError, match=r"id 'z' occurs 2 times \(1 ids repeat\)"):
        _ingest_run(tmp_path, inputs, 2)
    kept, _, _ = _ingest_run(tmp_path, inputs[:1], 2)
    assert kept["id"].to_list() == ["x", "y", "z", "w"]


def test_runner_ingest_falls_back_to_the_whole_read_on_schema_drift(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from gristmill import runner
    from gristmill.checkpoint import SchemaDrift

    pl.DataFrame({"id": [f"a{i}" for i in range(6)], "text": [f"row {i}" for i in range(6)]}).write_parquet(
        tmp_path / "a.parquet", row_group_size=2)
    real = runner.SliceWriter.write

    def drifting(self: runner.SliceWriter, frame: pl.DataFrame) -> None:
        if self.rows:  # what a slice of other types raises from the second slice on
            raise SchemaDrift("test")
        real(self, frame)

    monkeypatch.setattr(runner.SliceWriter, "write", drifting)
    kept, _, stats = _ingest_run(tmp_path, [{"path": "a.parquet", "mapping": "text"}], 4)
    assert kept["id"].to_list() == [f"a{i}" for i in range(6)] and stats["kept"] == 6
    assert not [p for p in (tmp_path / "run4" / "steps").iterdir() if p.name.startswith(".")]  # no staging left


def test_jsonl_lines_are_those_of_the_whole_text_at_any_block_size(tmp_path: Path) -> None:
    from gristmill.common.readers import _jsonl_lines, read_text

    path = tmp_path / "l.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{}\r\n\r\n {} \r{}')  # the docstring's example
    assert list(_jsonl_lines(path)) == [(1, "{}"), (3, " {} "), (4, "{}")]
    # Line ends of every kind at every block boundary: a b"\r\n" split across two blocks is one line end.
    data = b'{"a": 1}\r\n\r\n\r{"b": "\xc3\xa9"}\r\r\n  \n\x0c\n{"c": 3}\r\n'
    for body in (data, b"\xef\xbb\xbf" + data, data.rstrip(b"\r\n")):
        path.write_bytes(body)
        lines = read_text(path).split("\n")
        expected = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
        assert expected[1] == (4, '{"b": "é"}') and expected[-1][0] == 8
        for block in range(1, len(body) + 2):
            assert list(_jsonl_lines(path, block)) == expected, block
    # A byte that is not UTF-8: read_text's error (its line counts b"\n"; its column counts a BOM on line 1).
    for body in (b"\xef\xbb\xbf{\xe9}\n", b"{}\r\n{}\r\n{\"x\": \"caf\xe9\"}\n", b"{}\r{\xe9}"):
        path.write_bytes(body)
        with pytest.raises(Exception) as whole:
            read_text(path)
        for block in range(1, len(body) + 2):
            with pytest.raises(type(whole.value), match=re.escape(str(whole.value))):
                list(_jsonl_lines(path, block))


# Blank lines, a BOM, CRLF line ends, a malformed line, a non-object line and a text that is not a string.
_JSONL_LINES = ['{"text": "alpha", "score": 1}', "", '{"text": "beta", "score": 2}', "{oops", "[1, 2]", "   ",
                '{"text": "gamma", "score": 3}', '{"text": 5, "score": 4}', '{"text": "delta", "score": 5}',
                '{"text": "eps", "score": 6}']


def _jsonl_fixture(path: Path, lines: list[str]) -> Path:
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    return path


def test_streamed_jsonl_ingest_equals_the_whole_read(tmp_path: Path) -> None:
    path = _jsonl_fixture(tmp_path / "s.jsonl", _JSONL_LINES)
    spec = InputSpec(path="s.jsonl", mapping="text", on_error="skip")
    whole, whole_rejects, records = ingest_counted(spec, path)
    tables = list(iter_tables(path, rows=3))
    assert [t.number.to_list() + [b.number for b in t.bad] for t in tables] == [[1, 3, 4], [7, 8, 5], [9, 10]]
    assert tables[1].raw(5) == "[1, 2]" and tables[1].raw(4) is None  # a slice knows its own lines
    kept, rejects, read = _sliced(spec, path, 3)
    assert kept.schema == whole.schema and kept.equals(whole) and read == records == 8
    assert rejects.equals(whole_rejects)
    assert rejects["id"].to_list() == ["s.jsonl:4", "s.jsonl:5", "s.jsonl:8"]
    assert rejects["text"].to_list() == ["{oops", "[1, 2]", '{"text": 5, "score": 4}']
    assert [d.split(": ")[0] for d in rejects["detail"]] == [f"{path}:4", f"{path}:5", f"{path}:8"]
    assert kept["meta"].struct.field("source_line").to_list() == [1, 3, 7, 9, 10]
    with pytest.raises(IngestError, match=re.escape(f"{path}:4: invalid JSON")):
        list(ingest_slices(InputSpec(path="s.jsonl", mapping="text"), path, 3))


def test_runner_jsonl_ingest_with_types_differing_between_slices_equals_the_whole_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gristmill.checkpoint import SchemaDrift
    from gristmill.runner import Runner

    whole_reads = []
    real = Runner._ingest_whole

    def counted(specs: list) -> tuple:
        whole_reads.append(len(specs))
        return real(specs)

    monkeypatch.setattr(Runner, "_ingest_whole", staticmethod(counted))
    inputs = [{"path": "d.jsonl", "mapping": "text", "on_error": "skip"}]
    # score: Int64 in the first slices, String in the last (the whole read: String "1", ..., "high").
    # id: Boolean in the first slice ("True"), String in the second (the whole read: "true" throughout).
    drifting = [(_JSONL_LINES[:9] + ['{"text": "eps", "score": "high"}'], "d.jsonl:1"),
                (['{"text": "a", "id": true}', '{"text": "b"}', '{"text": "c"}', '{"text": "d", "id": "x"}'], "true")]
    for lines, first_id in drifting:
        path = _jsonl_fixture(tmp_path / "d.jsonl", lines)
        whole, whole_rejects, records = ingest_counted(InputSpec(**inputs[0]), path)
        if first_id == "true":  # what ingest_slices checks: slices that map to the same types, other ids
            with pytest.raises(SchemaDrift, match="the id field is Boolean in one slice, String in another"):
                list(ingest_slices(InputSpec(**inputs[0]), path, 3))
        whole_reads.clear()
        kept, dropped, stats = _ingest_run(tmp_path, inputs, 6)  # slices of 3 lines
        assert whole_reads == [1]
        assert kept.schema == whole.schema and kept.equals(whole) and stats["rows_in"] == records
        assert dropped.select(whole_rejects.columns).equals(whole_rejects)
        assert whole["id"][0] == first_id
        for run in tmp_path.glob("run*"):  # the next fixture's run starts afresh
            import shutil

            shutil.rmtree(run)
    # Without a difference between slices it streams: the checkpoint holds the whole read's rows.
    _jsonl_fixture(tmp_path / "d.jsonl", _JSONL_LINES)
    whole_reads.clear()
    kept, dropped, _ = _ingest_run(tmp_path, inputs, 6)
    assert whole_reads == [] and kept.equals(ingest_counted(InputSpec(**inputs[0]), tmp_path / "d.jsonl")[0])
    import pyarrow.parquet as pq

    meta = pq.read_metadata(tmp_path / "run6" / "steps" / "00-ingest" / "kept.parquet")
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [2, 1, 2]  # a slice's kept lines
