"""The runner streams row-local steps (normalize, filter, heuristics, scrub_pii, decontaminate) a slice at a time
from one checkpoint into the next, and global steps with a two-pass plan (dedup_exact, dedup_minhash, audit) in
two streamed passes: the kept and dropped rows, the stats, reports, the rejects and the dataset must be exactly
those of the same steps run on the whole frame. A tiny ``slice_rows`` makes the quickstart sample (332 rows) many
slices.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import pytest
import yaml

from gristmill import steps as steps_mod
from gristmill.checkpoint import SchemaDrift, SliceWriter, compact, iter_slices
from gristmill.common.contract import StepResult, no_drops, run_sliced, split, sum_stats
from gristmill.curation.normalize import NormalizeParams, normalize
from gristmill.curation.rulesets import HeuristicsParams, heuristics
from gristmill.recipe import load_recipe
from gristmill.runner import Runner
from tests.conftest import make_frame

STEPS = [
    {"normalize": {}},
    {"filter": {"min_words": 5, "max_words": 2000, "max_repeated_line_fraction": 0.5}},
    {"heuristics": {"rule_sets": ["instruction"]}},
    {"heuristics": {"rule_sets": ["language", "gopher_repetition", "gopher_quality"], "field": "assistant",
                    "min_words_judged": 30}},
    {"scrub_pii": {}},
    {"dedup_exact": {}},
    {"dedup_minhash": {"threshold": 0.7, "ngram": 3}},
    {"filter": {"min_chars": 10}},
    {"audit": {"axes": ["gender", "age"], "associations": {"min_count": 1, "alpha": 0.5}, "n_boot": 20}},
]
_TIMING = ("seconds", "rows_per_s", "fingerprint", "kept_sha256")


def _recipe(tmp_path: Path, data: Path, name: str, steps: list[dict[str, Any]] | None = None) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name,
        "inputs": [{"path": str(data / "sample.jsonl"), "mapping": "alpaca", "on_error": "skip"}],
        "steps": steps or [*STEPS, {"decontaminate": {"eval_sets": [str(data / "eval_set.jsonl")],
                                                       "text_fields": ["question"]}}],
        "output": {"dir": str(tmp_path / name), "formats": ["parquet", "jsonl"]},
    }, sort_keys=False))
    return path


def _stats(step_dir: Path) -> dict[str, Any]:
    return {k: v for k, v in json.loads((step_dir / "stats.json").read_text()).items() if k not in _TIMING}


def test_streamed_run_equals_in_memory_run(tmp_path: Path, sample_dir: Path) -> None:
    whole = Runner(load_recipe(_recipe(tmp_path, sample_dir, "whole"))).run(train=False)
    streamed = Runner(load_recipe(_recipe(tmp_path, sample_dir, "streamed")), slice_rows=23).run(train=False)
    a, b = whole.run_dir, streamed.run_dir
    names = sorted(p.name for p in (a / "steps").iterdir())
    assert names == sorted(p.name for p in (b / "steps").iterdir()) and len(names) == len(STEPS) + 2
    for name in names:
        for part in ("kept.parquet", "dropped.parquet"):
            x, y = pl.read_parquet(a / "steps" / name / part), pl.read_parquet(b / "steps" / name / part)
            assert x.schema == y.schema and x.equals(y), (name, part)
        assert _stats(a / "steps" / name) == _stats(b / "steps" / name), name
    decontam = json.loads((b / "steps" / names[-1] / "stats.json").read_text())
    # Its report is merged over the slices too (stats.json holds it; compared above).
    assert decontam["dropped_by_reason"] == {"contaminated": 2} and decontam["eval_items_hit"] == 2
    assert sum(v["items_hit"] for v in decontam["report"]["eval_sets"].values()) == 2
    # The row-local and two-pass steps really were streamed: a row group per slice of 23 rows.
    for name in ("01-normalize", "06-dedup_exact", "07-dedup_minhash", "09-audit"):
        rows_in = json.loads((b / "steps" / name / "stats.json").read_text())["rows_in"]
        assert pq.ParquetFile(b / "steps" / name / "kept.parquet").metadata.num_row_groups == -(-rows_in // 23) >= 5
    # The global steps did something to compare: duplicates dropped, groups and associations found.
    minhash = json.loads((b / "steps" / "07-dedup_minhash" / "stats.json").read_text())
    assert minhash["dropped"] > 0 and minhash["clusters"] > 0
    audit = json.loads((b / "steps" / "09-audit" / "stats.json").read_text())["report"]
    assert audit["axes"]["gender"]["rows_with_any"] > 0 and audit["associations"]["axes"]
    assert (a / "reports" / "09-audit.json").read_bytes() == (b / "reports" / "09-audit.json").read_bytes()
    assert pl.read_parquet(b / "steps" / "09-audit" / "kept.parquet")["meta"].struct.field("demographics").struct \
        .field("gender").list.len().sum() > 0
    # Something was dropped by each kind of rule, so the comparison means something.
    dropped = {json.loads((a / "steps" / n / "stats.json").read_text())["dropped"] for n in names[1:]}
    assert len(dropped) > 2
    for name in ("data.parquet", "data.jsonl"):
        assert (a / "dataset" / name).read_bytes() == (b / "dataset" / name).read_bytes(), name
    assert (a / "rejects.parquet").read_bytes() == (b / "rejects.parquet").read_bytes()
    # Rejects are complete: every row that went in is in the dataset or dropped once, with its step and reason.
    rejects = pl.read_parquet(b / "rejects.parquet")
    data = pl.read_parquet(b / "dataset" / "data.parquet")
    ingested = [*pl.read_parquet(b / "steps" / "00-ingest" / "kept.parquet")["id"],
                *pl.read_parquet(b / "steps" / "00-ingest" / "dropped.parquet")["id"]]
    assert rejects["reason"].null_count() == 0 and rejects["id"].is_unique().all()
    assert sorted([*rejects["id"], *data["id"]]) == sorted(ingested)
    assert streamed.manifest["rows_final"] == data.height == whole.manifest["rows_final"]
    # No staging directory is left behind.
    assert not [p for p in (b / "steps").iterdir() if p.name.startswith(".")]


def test_streamed_run_resumes_and_recomputes_from_a_missing_step(tmp_path: Path, sample_dir: Path) -> None:
    recipe = _recipe(tmp_path, sample_dir, "r")
    first = Runner(load_recipe(recipe), slice_rows=23).run(train=False)
    again = Runner(load_recipe(recipe), slice_rows=23).run(train=False)
    assert again.recomputed == []
    assert [s["resumed"] for s in again.manifest["steps"]] == [True] * (len(STEPS) + 2)
    # Lose the heuristics checkpoint: it and everything after it recompute, to the same bytes.
    before = {p.name: (p / "kept.parquet").read_bytes() for p in (first.run_dir / "steps").iterdir()}
    rejects = (first.run_dir / "rejects.parquet").read_bytes()
    import shutil

    shutil.rmtree(first.run_dir / "steps" / "04-heuristics")
    third = Runner(load_recipe(recipe), slice_rows=23).run(train=False)
    assert third.recomputed == ["heuristics"]  # later steps' inputs are byte-identical, so they resume
    after = {p.name: (p / "kept.parquet").read_bytes() for p in (first.run_dir / "steps").iterdir()}
    assert after == before and (first.run_dir / "rejects.parquet").read_bytes() == rejects


def _flaky_stage(frame: pl.DataFrame, params: Any) -> StepResult:
    """A row-local stage that fails on one row (a bug half-way through a streamed step)."""
    if "boom" in frame["id"].to_list():
        raise RuntimeError("boom")
    return StepResult(frame, no_drops(frame), {}, frame.height)


def _drifting_stage(frame: pl.DataFrame, params: Any) -> StepResult:
    """A row-local stage whose new column is all null (typed Null) in slices where no row has a value."""
    marked = frame.with_columns(pl.when(pl.col("id").str.ends_with("7")).then(pl.col("id")).alias("mark"))
    if marked["mark"].null_count() == marked.height:
        marked = marked.with_columns(pl.lit(None).alias("mark"))
    kept, dropped = split(marked, pl.when(pl.col("id").str.ends_with("3")).then(pl.lit("three")))
    return StepResult(kept, dropped, {"marked": int(marked["mark"].is_not_null().sum())}, frame.height)


@pytest.fixture
def extra_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two test-only row-local steps beside the real ones (the runner and checkpoints stay real)."""
    params = steps_mod.STEPS["normalize"].params
    monkeypatch.setitem(steps_mod.STEPS, "flaky", steps_mod.StepDef(params, "1", stage=_flaky_stage, row_local=True))
    monkeypatch.setitem(steps_mod.STEPS, "drifting",
                        steps_mod.StepDef(params, "1", stage=_drifting_stage, row_local=True))


def _id_data(tmp_path: Path, ids: list[str]) -> Path:
    data = tmp_path / "data"
    data.mkdir(parents=True)
    pl.DataFrame({"id": ids, "text": [f"row {i} has some words" for i in ids]}).write_parquet(data / "in.parquet")
    return data


def _id_recipe(tmp_path: Path, data: Path, steps: list[dict[str, Any]]) -> Path:
    path = tmp_path / "ids.yaml"
    path.write_text(yaml.safe_dump({"name": "ids", "inputs": [{"path": str(data / "in.parquet"), "mapping": "text"}],
                                    "steps": steps, "output": {"dir": str(tmp_path / "run"), "formats": ["parquet"]}}))
    return path


def test_a_failing_slice_leaves_no_checkpoint_and_a_rerun_completes(tmp_path: Path, extra_steps: None) -> None:
    ids = [f"r{i:03d}" for i in range(60)]
    data = _id_data(tmp_path, [*ids[:40], "boom", *ids[40:]])
    recipe = _id_recipe(tmp_path, data, [{"normalize": {}}, {"flaky": {}}])
    with pytest.raises(RuntimeError, match="boom"):
        Runner(load_recipe(recipe), slice_rows=8).run(train=False)
    steps = tmp_path / "run" / "steps"
    assert sorted(p.name for p in steps.iterdir()) == ["00-ingest", "01-normalize"]  # no half step, no staging
    (steps / ".tmp-stream-02-flaky-x").mkdir()  # what a SIGKILLed streamed step leaves: the next run removes it
    _id_data(tmp_path / "fixed", ids)
    fixed = _id_recipe(tmp_path, tmp_path / "fixed" / "data", [{"normalize": {}}, {"flaky": {}}])
    result = Runner(load_recipe(fixed), slice_rows=8).run(train=False)
    assert result.frame["id"].to_list() == ids
    assert not list(steps.glob(".*"))


def test_a_slice_with_other_column_types_falls_back_to_the_whole_frame(tmp_path: Path, extra_steps: None) -> None:
    ids = [f"r{i:03d}" for i in range(100)]
    data = _id_data(tmp_path, ids)
    recipe = _id_recipe(tmp_path, data, [{"drifting": {}}])
    result = Runner(load_recipe(recipe), slice_rows=5).run(train=False)  # r000-r004 have no "7": mark is Null
    frame = pl.read_parquet(data / "in.parquet")
    expected = _drifting_stage(frame, None)
    kept = pl.read_parquet(tmp_path / "run" / "steps" / "01-drifting" / "kept.parquet")
    assert kept.schema["mark"] == pl.String and kept.select("id", "text", "mark").equals(expected.kept)
    assert result.manifest["steps"][1]["marked"] == 10 and result.manifest["steps"][1]["dropped"] == 10


def test_run_sliced_equals_one_call_on_heuristics_and_normalize() -> None:
    texts = ["The cat sat on the mat and looked at the birds in the garden, then it went to sleep by the fire.",
             "We have to be sure that the answer comes with a reason and a source for each of the claims.",
             "Le chat est assis sur le tapis et regarde les oiseaux dans le jardin. " * 3,
             "buy buy buy buy buy buy buy buy buy buy buy buy buy buy buy buy",
             "Ｆｕｌｌ\u200b width   text " * 5, "   ", "# # # # # # # # # # # # # # # # # # # #",
             "Die Katze sitzt auf der Matte und schaut die Vögel im Garten an. " * 3] * 5
    frame = make_frame(texts)
    params = HeuristicsParams(rule_sets=["language", "gopher_repetition", "gopher_quality"],
                              thresholds={"gopher_quality.min_words": 5})
    one, sliced = heuristics(frame, params, slice_rows=10**6), heuristics(frame, params, slice_rows=3)
    assert one.kept.equals(sliced.kept) and one.dropped.equals(sliced.dropped)
    assert one.stats == sliced.stats and list(one.stats["detected_languages"]) == list(
        sliced.stats["detected_languages"]) and list(one.stats["detected_languages"])[:2] == ["en", "fr"]
    assert one.stats["warnings"] == sliced.stats["warnings"] and one.dropped.height == 30
    one, sliced = normalize(frame, NormalizeParams(), slice_rows=10**6), normalize(frame, NormalizeParams(), 4)
    assert one.kept.equals(sliced.kept) and one.dropped.equals(sliced.dropped) and one.stats == sliced.stats
    assert one.stats == {"rows_changed": 20} and one.dropped["reason"].to_list() == ["empty_after_normalize"] * 5


def test_sum_stats_adds_counts_and_refuses_what_does_not_add_up() -> None:
    assert sum_stats([{"n": 1, "by": {"a": 1}}, {"n": 0, "by": {"b": 2}, "late": 3}]) == {
        "n": 1, "by": {"a": 1, "b": 2}, "late": 3}
    assert sum_stats([{"t": {"x": 5}}, {"t": {"x": 5}}], keep=("t",)) == {"t": {"x": 5}}
    with pytest.raises(ValueError, match="'mean'"):
        sum_stats([{"mean": 0.5}, {"mean": 0.25}])
    frame = pl.DataFrame({"x": [1, 2, 3]})
    kept, dropped = split(frame, pl.lit(None, pl.String))
    assert kept is frame and dropped.height == 0 and dropped.columns == ["x", "reason"]
    kept, dropped = split(frame, pl.lit("all"))
    assert kept.height == 0 and dropped["reason"].to_list() == ["all"] * 3
    assert run_sliced(lambda f, p: StepResult(f, no_drops(f), {}, f.height), frame, None, 1).kept.equals(frame)


def test_slice_writer_and_reader_round_trip(tmp_path: Path) -> None:
    frame = pl.DataFrame({"id": ["a", "b", "c"], "meta": [{"s": 1}, None, {"s": 3}],
                          "messages": [[{"role": "user", "content": "hi"}], None, []]})
    writer = SliceWriter(tmp_path / "x.parquet")
    for start in range(3):
        writer.write(frame.slice(start, 1))
    writer.close()
    assert writer.rows == 3 and pl.read_parquet(tmp_path / "x.parquet").equals(frame)
    back = list(iter_slices(tmp_path / "x.parquet", 2))
    assert [f.height for f in back] == [2, 1] and pl.concat(back).equals(frame)
    drift = SliceWriter(tmp_path / "y.parquet")
    drift.write(frame)
    with pytest.raises(SchemaDrift):
        drift.write(frame.with_columns(pl.col("id").cast(pl.Categorical)))
    drift.close(complete=False)


def _string_bytes(series: pl.Series) -> int:
    """Bytes of the buffers behind a string column (views and the data buffers they point into)."""
    return series.to_arrow(compat_level=pl.CompatLevel.newest()).nbytes


def test_compact_keeps_rows_and_types_but_not_the_slice_they_came_from(tmp_path: Path) -> None:
    big = pl.DataFrame({"id": [f"row-{i:06d}" for i in range(2_000)], "text": [f"{i} " + "word " * 50
                                                                             for i in range(2_000)],
                        "meta": [{"n": i} for i in range(2_000)]})
    dropped = big.filter(pl.int_range(pl.len()) % 100 == 0).with_columns(reason=pl.lit("x"))
    own = _string_bytes(pl.Series(dropped["text"].to_list()))  # 20 texts built afresh: ~5 KB
    assert _string_bytes(dropped["text"]) > 50 * own  # the filtered views still reach all 2,000 texts
    small = compact(dropped)
    assert small.equals(dropped) and small.schema == dropped.schema
    assert _string_bytes(small["text"]) < 2 * own
    writer = SliceWriter(tmp_path / "d.parquet", hold=True)
    writer.write(dropped)
    writer.close()
    assert pl.read_parquet(tmp_path / "d.parquet").equals(dropped)


def test_run_index_written_in_slices_equals_the_whole_sketch(tmp_path: Path) -> None:
    from gristmill import lineage
    from gristmill.curation import minhash

    run = tmp_path / "run"
    (run / "dataset").mkdir(parents=True)
    (run / "manifest.json").write_text("{}")
    texts = [f"row {i} says the same few words about gardens and rivers {i % 7}" for i in range(40)] + ["", "a b"]
    data = run / "dataset" / "data.parquet"
    pl.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "text": texts}).write_parquet(data)
    params = minhash.MinhashParams(ngram=3, num_perm=32)
    meta = lineage.write_index(run, data, params, slice_rows=9)
    table = pl.read_parquet(meta["index"])
    whole = minhash.sketch_frame(pl.Series("id", [f"r{i}" for i in range(len(texts))]),
                                 minhash.sketch(pl.Series(texts), params))
    assert meta["rows"] == len(texts) and table.equals(whole)
    assert pq.ParquetFile(meta["index"]).metadata.num_row_groups == 5
    back = minhash.frame_sketch(table, 32)
    assert back.sig.shape == (len(texts), 32) and not back.has_shingles[40]


def test_export_from_the_checkpoint_file_equals_export_from_the_frame(tmp_path: Path) -> None:
    """export_dataset reads the last checkpoint a slice at a time; the files and the card are those of the frame
    (the card from each row's source, meta.language and meta.synth only)."""
    from types import SimpleNamespace

    from gristmill.export import data_card, export_dataset

    synth = pl.struct(pl.lit("self_instruct").alias("method"), pl.lit("tiny").alias("model"))
    frame = pl.DataFrame({"id": ["1", "2", "3"], "text": ["a", "b", "c"], "source": ["in.jsonl", "in.jsonl", "synth:x"],
                          "lang": ["en", "de", "en"], "messages": [None, [{"role": "user", "content": "hi"}], None]}
                         ).select("id", "text", pl.col("messages").cast(pl.List(pl.Struct({"role": pl.String,
                                                                                           "content": pl.String}))),
                                  "source", pl.struct(pl.col("lang").alias("language"), synth.alias("synth"),
                                                      pl.lit(0.5).alias("score")).alias("meta"))
    recipe = SimpleNamespace(name="crafted", path="r.yaml", raw={}, inputs=[SimpleNamespace(path="in.jsonl",
                                                                                            mapping="alpaca")],
                             output=SimpleNamespace(formats=["parquet", "jsonl"]))
    manifest = {"versions": {"gristmill": "0"}, "steps": [{"step": "ingest", "rows_in": 3, "kept": 3, "dropped": 0}]}
    frame.write_parquet(tmp_path / "kept.parquet")
    a = export_dataset(frame, tmp_path / "a", recipe, manifest)
    b = export_dataset(tmp_path / "kept.parquet", tmp_path / "b", recipe, manifest)
    assert a == {**b, "files": {k: v.replace("/b/", "/a/") for k, v in b["files"].items()}}
    assert a["rows"] == 3 and a["columns"] == frame.columns
    for name in ("data.parquet", "data.jsonl", "README.md"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert pl.read_parquet(tmp_path / "b" / "data.parquet").equals(frame)
    lines = [json.loads(line) for line in (tmp_path / "b" / "data.jsonl").read_text().splitlines()]
    assert lines[1] == {"id": "2", "messages": [{"role": "user", "content": "hi"}], "source": "in.jsonl"}
    assert (tmp_path / "b" / "README.md").read_text() == data_card(frame, recipe, manifest)
    empty = export_dataset(frame.clear(), tmp_path / "c", recipe, manifest)
    assert empty["rows"] == 0 and pl.read_parquet(tmp_path / "c" / "data.parquet").schema == frame.schema


def test_rejects_are_written_a_slice_at_a_time_with_their_counts(tmp_path: Path) -> None:
    from gristmill.export import write_rejects

    a, b, none = tmp_path / "a", tmp_path / "b", tmp_path / "none"
    for folder in (a, b, none):
        folder.mkdir()
    pl.DataFrame({"id": ["1", "2"], "reason": ["short", "long"], "meta": [{"n": 1}, None]}).write_parquet(
        a / "dropped.parquet")
    pl.DataFrame({"id": ["3"], "text": ["t"], "reason": ["short"]}).write_parquet(b / "dropped.parquet")
    pl.DataFrame(schema={"id": pl.String, "reason": pl.String}).write_parquet(none / "dropped.parquet")
    out = write_rejects(tmp_path / "rejects.parquet", [("x", a), ("empty", none), ("y", b)])
    frame = pl.read_parquet(tmp_path / "rejects.parquet")
    assert frame.columns == ["id", "step", "reason", "source", "text", "detail", "meta"]
    assert frame.select("id", "step", "text", "meta").rows() == [("1", "x", None, '{"n": 1}'), ("2", "x", None, "null"),
                                                                 ("3", "y", "t", None)]
    assert out["rows"] == 3 and out["by_step_reason"] == [{"step": "x", "reason": "long", "len": 1},
                                                          {"step": "x", "reason": "short", "len": 1},
                                                          {"step": "y", "reason": "short", "len": 1}]
    nothing = write_rejects(tmp_path / "r0.parquet", [("empty", none)])
    assert nothing["rows"] == 0 and pl.read_parquet(tmp_path / "r0.parquet").columns == frame.columns
