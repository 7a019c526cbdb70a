"""Hostile inputs and recipes: every one is either read (each record kept or rejected with a reason, the counts
adding up) or refused with a user error naming the file (and line) or recipe key and the fix. Never a traceback.

Hypothesis generates random bytes, random JSON records and random recipe trees; the listed cases are the ones a
new user tripped over (latin-1 CSV, output.dir under a file, a directory as a jsonl input, an empty input, sharegpt
mapping on alpaca rows)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gristmill.cli import main
from gristmill.common.errors import UserError
from gristmill.ingest import InputSpec, ingest_counted
from gristmill.recipe import RecipeError, load_recipe, parse_recipe

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ALPACA = {"instruction": "Name a colour of the sky", "input": "", "output": "Blue, on a clear day."}


def _recipe(tmp_path: Path, inputs: list[dict[str, Any]], out: str | None = None) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "inputs": inputs, "steps": [{"normalize": {}}],
                                    "output": {"dir": out or str(tmp_path / "run"), "formats": ["parquet"]}}))
    return path


def _fails_cleanly(capsys: pytest.CaptureFixture[str], recipe: Path, *needles: str) -> str:
    assert main(["run", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


# -- the cases a new user hit ---------------------------------------------------------------------------------------

def test_latin1_csv_names_the_line_and_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "latin.csv"
    data.write_bytes("instruction,input,output\ncafé au lait,,réponse\n".encode("latin-1"))
    _fails_cleanly(capsys, _recipe(tmp_path, [{"path": str(data)}]), "latin.csv:2: not UTF-8", "iconv")


def test_output_dir_under_a_regular_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps(ALPACA) + "\n")
    (tmp_path / "afile").write_text("x")
    _fails_cleanly(capsys, _recipe(tmp_path, [{"path": str(data)}], out=str(tmp_path / "afile" / "run")),
                   "output.dir", "afile is a file", "choose another `output.dir`")


def test_a_directory_given_as_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "data.jsonl").mkdir()
    _fails_cleanly(capsys, _recipe(tmp_path, [{"path": str(tmp_path / "data.jsonl")}]),
                   "data.jsonl: is a directory, not a jsonl file", "name the file inside it")
    (tmp_path / "plain").mkdir()
    _fails_cleanly(capsys, _recipe(tmp_path, [{"path": str(tmp_path / "plain")}]),
                   "not a `datasets` save_to_disk directory")


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_an_empty_input_stops_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes) -> None:
    (tmp_path / "empty.jsonl").write_bytes(content)
    _fails_cleanly(capsys, _recipe(tmp_path, [{"path": str(tmp_path / "empty.jsonl")}]),
                   "empty.jsonl: the input holds no records")


def test_sharegpt_mapping_on_alpaca_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "alpaca.jsonl"
    data.write_text("".join(json.dumps(dict(ALPACA, output=f"answer {i}")) + "\n" for i in range(5)))
    spec = {"path": str(data), "mapping": "sharegpt", "on_error": "skip"}
    _fails_cleanly(capsys, _recipe(tmp_path, [spec]), "5 of 5 records rejected", "max_reject_fraction",
                   "the records look like `mapping: alpaca`")
    _fails_cleanly(capsys, _recipe(tmp_path, [{**spec, "on_error": "raise"}]), "alpaca.jsonl:1",
                   "the record looks like `mapping: alpaca`")


def test_max_reject_fraction_lets_a_mostly_good_input_through(tmp_path: Path) -> None:
    data = tmp_path / "mixed.jsonl"
    data.write_text(json.dumps(ALPACA) + "\n{broken\n" + json.dumps(dict(ALPACA, output="other")) + "\n")
    rows, rejects, read = ingest_counted(InputSpec(path=str(data), on_error="skip"), data)
    assert (rows.height, rejects.height, read) == (2, 1, 3)
    with pytest.raises(UserError, match=r"1 of 3 records rejected \(33%, more than max_reject_fraction 0.2\)"):
        ingest_counted(InputSpec(path=str(data), on_error="skip", max_reject_fraction=0.2), data)


# -- named hostile files --------------------------------------------------------------------------------------------

def _deep(n: int) -> str:
    return '{"instruction": ' + "[" * n + "]" * n + ', "output": "x"}'


@pytest.mark.parametrize("name, content", [
    ("bom.jsonl", b"\xef\xbb\xbf" + json.dumps(ALPACA).encode() + b"\n"),
    ("crlf.jsonl", json.dumps(ALPACA).encode() + b"\r\n" + json.dumps(dict(ALPACA, output="b")).encode() + b"\r\n"),
    ("nul.jsonl", json.dumps(ALPACA).encode() + b"\n\x00\x00\n" + json.dumps(dict(ALPACA, output="c")).encode()),
    ("nul_in_string.jsonl", json.dumps(dict(ALPACA, output="a\x00b")).encode() + b"\n"),
    ("deep.jsonl", json.dumps(ALPACA).encode() + b"\n" + _deep(100_000).encode() + b"\n"),
    ("deep.json", ("[" + _deep(100_000) + "]").encode()),
    ("long.jsonl", json.dumps(dict(ALPACA, output="y" * 10_000_000)).encode() + b"\n"),
    ("types.jsonl", b'{"instruction": 5, "output": ["a"]}\n{"instruction": {"a": 1}, "output": null}\n'
                    + json.dumps(ALPACA).encode()),
    ("dup.jsonl", json.dumps(dict(ALPACA, id="same")).encode() + b"\n" + json.dumps(dict(ALPACA, id="same")).encode()),
    ("ragged.csv", b"instruction,input,output\na,b\nc,d,e,f\n"),
    ("bom.csv", b"\xef\xbb\xbfinstruction,input,output\nName it,,Blue\n"),
    ("truncated.parquet", b"PAR1\x15\x04\x15"),
    ("data.jsonl.gz", gzip.compress(json.dumps(ALPACA).encode())[:20]),
    ("notalist.json", b'{"instruction": "x"}'),
])
def test_hostile_files_are_read_or_refused_with_the_file_named(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    for on_error in ("raise", "skip"):
        spec = InputSpec(path=str(path), on_error=on_error, max_reject_fraction=1.0)
        try:
            rows, rejects, read = ingest_counted(spec, path)
        except UserError as err:
            assert name in str(err)
            continue
        assert rows.height + rejects.height == read and rejects["reason"].null_count() == 0 if rejects.height \
            else rows.height == read
        if name == "bom.jsonl" or name == "bom.csv":
            assert rows["text"][0].startswith("Name") or rows["text"][0].startswith("Name a colour")


# -- fuzz -----------------------------------------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
_keys = st.sampled_from(["id", "instruction", "input", "output", "conversations", "messages", "text", "from",
                         "value", "role", "content", "meta", "source"])
_record = st.dictionaries(_keys, _json | st.lists(st.dictionaries(_keys, _json, max_size=3), max_size=3), max_size=5)


@FUZZ
@given(records=st.lists(_record | _json, max_size=8),
       mapping=st.sampled_from(["alpaca", "sharegpt", "messages", "text"]),
       fmt=st.sampled_from(["jsonl", "json", "parquet", "csv"]))
def test_fuzzed_records_are_kept_or_rejected_with_a_reason(tmp_path: Path, records: list[Any], mapping: str,
                                                           fmt: str) -> None:
    path = tmp_path / f"fuzz.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif fmt == "json":
        path.write_text(json.dumps(records))
    else:
        try:  # what polars can hold as a table; other shapes are not a parquet/csv file anyone could have
            frame = pl.DataFrame([r for r in records if isinstance(r, dict)], infer_schema_length=None)
            frame.write_parquet(path) if fmt == "parquet" else frame.select(
                [c for c, t in frame.schema.items() if t.is_numeric() or t == pl.String]).write_csv(path)
        except Exception:
            return
    spec = InputSpec(path=str(path), mapping=mapping, on_error="skip", max_reject_fraction=1.0)
    try:
        rows, rejects, read = ingest_counted(spec, path)
    except UserError as err:
        assert path.name in str(err)
        return
    assert rows.height + rejects.height == read
    if rejects.height:
        assert rejects["reason"].null_count() == 0 and rejects["detail"].null_count() == 0


@FUZZ
@given(data=st.binary(max_size=300), fmt=st.sampled_from(["jsonl", "json", "csv", "parquet"]))
def test_random_bytes_never_crash(tmp_path: Path, data: bytes, fmt: str) -> None:
    path = tmp_path / f"bytes.{fmt}"
    path.write_bytes(data)
    try:
        rows, rejects, read = ingest_counted(InputSpec(path=str(path), on_error="skip", max_reject_fraction=1.0),
                                             path)
    except UserError as err:
        assert "bytes." in str(err)
        return
    assert rows.height + rejects.height == read


_scalar = st.none() | st.booleans() | st.integers(min_value=-10**30, max_value=10**30) | st.floats() | st.text(
    max_size=12)
_tree = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["name", "inputs", "steps", "output", "train", "path", "dir", "mapping", "formats", "normalize",
                     "filter", "dedup_minhash", "threshold", "synthesize", "method", "n", "min_words", "quality",
                     "on_error", "max_reject_fraction", "../../etc", "model"]), inner, max_size=4), max_leaves=12)


@FUZZ
@given(tree=_tree)
def test_fuzzed_recipes_are_valid_or_a_recipe_error(tmp_path: Path, tree: Any) -> None:
    try:
        text = yaml.safe_dump(tree)
    except yaml.YAMLError:
        return
    try:
        parse_recipe(text, tmp_path / "r.yaml")
    except RecipeError as err:
        assert all(e.startswith(str(tmp_path / "r.yaml")) for e in err.errors), err.errors


@pytest.mark.parametrize("text, needle", [
    ("name: t\ninputs: [{path: a.jsonl}]\noutput: {dir: run}\nsteps: [{nosuch: {}}]\n", "unknown step"),
    ("name: t\ninputs: [{path: a.jsonl}]\noutput: {dir: run}\nsteps: [{dedup_minhash: {threshold: 1e999}}]\n",
     "threshold"),
    ("name: t\ninputs: [{path: a.jsonl}]\noutput: {dir: run}\nsteps: [{filter: {min_words: [1]}}]\n", "min_words"),
    ("name: ../../x\ninputs: [{path: a.jsonl}]\noutput: {dir: run}\n", "name"),
    ("name: t\ninputs: [{path: a.jsonl}]\noutput: {dir: run}\nsteps: !!python/object/apply:os.system [ls]\n",
     "not valid YAML"),
    ("a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b]\n"
     "d: &d [*c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d]\n"
     "f: [*e, *e, *e, *e, *e, *e, *e, *e]\n", "YAML nodes through its aliases"),
])
def test_hostile_recipes(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(RecipeError, match=needle):
        parse_recipe(text, tmp_path / "r.yaml")


def test_a_non_utf8_recipe(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_bytes(b"name: caf\xe9\n")
    with pytest.raises(RecipeError, match=r"r.yaml:1: not UTF-8"):
        load_recipe(tmp_path / "r.yaml")


def test_rejected_lines_keep_their_original_text(tmp_path: Path) -> None:
    broken = '{"instruction": "café",  "output": 5, "extra": "' + "x" * 3000 + '"}'
    unparsable = '{oops "not json'
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(ALPACA) + "\n" + broken + "\n" + unparsable + "\n", encoding="utf-8")
    _, rejects, _ = ingest_counted(InputSpec(path=str(path), on_error="skip", max_reject_fraction=1.0), path)
    assert rejects["text"].to_list() == [broken, unparsable]


def test_rejected_rows_of_every_format_keep_what_the_file_held(tmp_path: Path) -> None:
    """csv: the record's text as in the file (quotes, commas and an embedded newline included); json items and
    parquet rows: the record as JSON with its own values (these formats have no line to keep)."""
    spec = {"on_error": "skip", "max_reject_fraction": 1.0}
    csv_line = ',"two\nlines","an, answer"'
    (tmp_path / "in.csv").write_text(f'instruction,input,output\nSay hi,,"hello, there"\n{csv_line}\r\nBye,,see you\n')
    _, rejects, _ = ingest_counted(InputSpec(path="in.csv", **spec), tmp_path / "in.csv")
    assert rejects["text"].to_list() == [csv_line] and rejects["id"].to_list() == ["in.csv:3"]

    bad = {"instruction": None, "input": "x", "output": "y", "n": 3}
    rows = [ALPACA | {"n": 1}, bad, ALPACA | {"n": 2}]
    (tmp_path / "in.json").write_text(json.dumps(rows, indent=2))
    pl.DataFrame(rows).write_parquet(tmp_path / "in.parquet")
    for name in ("in.json", "in.parquet"):
        _, rejects, _ = ingest_counted(InputSpec(path=name, **spec), tmp_path / name)
        assert [json.loads(t) for t in rejects["text"]] == [bad], name
