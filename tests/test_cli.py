"""The command line on tiny real runs (``--no-train``): inspect, explain, show, diff, batch runs, validate's file
checks, init, and the portable outputs (relative ``source``, umask permissions, a stale adapter named)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
import yaml

from gristmill.cli import main
from gristmill.runinfo import diff, explain, rows, summary

STEPS = [
    {"normalize": {}},
    {"filter": {"min_words": 5, "max_words": 2000}},
    {"dedup_exact": {}},
    {"dedup_minhash": {"threshold": 0.8}},
    {"audit": {"axes": ["gender", "religion"], "label_column": "accepted",
               "gate": {"max_representation_ratio": 1000.0}}},
]


def _recipe(tmp_path: Path, name: str = "recipe", steps: list | None = None, run: str = "run",
            inputs: str = "data/sample.jsonl") -> Path:
    """A recipe beside the sample data, naming its input relative to itself (as a user writes it)."""
    recipe = {"name": "t", "inputs": [{"path": inputs, "mapping": "alpaca", "on_error": "skip"}],
              "steps": steps or STEPS, "output": {"dir": str(tmp_path / run), "formats": ["parquet", "jsonl"]}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def run_dir(tmp_path: Path, sample_dir: Path, umask_022: None) -> Path:
    assert main(["-q", "run", str(_recipe(tmp_path)), "--no-train"]) == 0
    return tmp_path / "run"


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("run", "validate", "init", "inspect", "explain", "show", "diff", "report", "train", "ablate",
                    "eval", "review", "models", "runs", "--install-completion"):
        assert command in out, command
    assert main(["review", "--help"]) == 0
    out = capsys.readouterr().out
    assert "export" in out and "import" in out
    assert main(["eval", "--help"]) == 0 and "--adapter" in capsys.readouterr().out


def test_eval_runs_the_evaluation_module(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The command reaches gristmill.evaluation (scoring itself is covered by its own, model-loading tests): a run
    whose recipe has no eval sets is a user error naming the fix."""
    assert main(["eval", str(run_dir)]) == 2
    assert "has no `eval:` section" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run"]) == 2
    assert main(["no-such-command"]) == 2
    assert "No such command" in capsys.readouterr().err


def test_inspect_shows_steps_reasons_and_gate(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    info = summary(run_dir)
    assert [s["step"] for s in info["steps"]] == ["00-ingest", "01-normalize", "02-filter", "03-dedup_exact",
                                                 "04-dedup_minhash", "05-audit"]
    assert info["steps"][0] | {"seconds": None} == {
        "step": "00-ingest", "rows_in": 332, "added": 0, "kept": 330, "dropped": 2,
        "reasons": {"malformed_input": 2}, "seconds": None, "resumed": False}
    assert info["steps"][2]["reasons"] == {"too_few_words": 5}
    assert info["rows_final"] == 330 - 5 - 30 - 20
    assert info["gate"] == {"status": "ok", "passed": True} and info["adapter"] is None
    assert main(["inspect", str(run_dir)]) == 0
    err = capsys.readouterr().err
    assert "03-dedup_exact" in err and "exact_duplicate" in err and "audit gate: passed" in err


def test_explain_a_duplicate_names_the_kept_row(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rejects = pl.read_parquet(run_dir / "rejects.parquet").filter(pl.col("reason") == "exact_duplicate")
    row = rejects.row(0, named=True)
    kept_id = json.loads(row["meta"])["duplicate_of"]
    info = explain(run_dir, row["id"])
    assert [(h["step"], h["outcome"]) for h in info["history"]] == [
        ("00-ingest", "kept"), ("01-normalize", "kept"), ("02-filter", "kept"), ("03-dedup_exact", "dropped")]
    assert info["history"][-1]["reason"] == "exact_duplicate"
    assert info["source"] == "data/sample.jsonl" and info["line"] == json.loads(row["meta"])["source_line"]
    kept = pl.read_parquet(run_dir / "steps" / "03-dedup_exact" / "kept.parquet").filter(pl.col("id") == kept_id)
    assert info["duplicate"] == {"id": kept_id, "step": "03-dedup_exact", "text": kept["text"][0]}
    assert main(["explain", str(run_dir), row["id"]]) == 0
    err = capsys.readouterr().err
    assert f"duplicate of {kept_id}" in err and f"data/sample.jsonl:{info['line']}" in err


def test_explain_a_kept_row_and_a_changed_one(run_dir: Path) -> None:
    before = pl.read_parquet(run_dir / "steps" / "00-ingest" / "kept.parquet").select("id", "text")
    after = pl.read_parquet(run_dir / "steps" / "01-normalize" / "kept.parquet").select("id", "text")
    changed = before.join(after, on="id", suffix="_n").filter(pl.col("text") != pl.col("text_n"))
    final = pl.read_parquet(run_dir / "dataset" / "data.parquet")
    row_id = changed.filter(pl.col("id").is_in(final["id"].implode()))["id"][0]
    info = explain(run_dir, row_id)
    assert info["outcome"] == "in the dataset"
    assert [h["step"] for h in info["history"] if h.get("changed")] == ["01-normalize"]
    assert info["history"][1]["before"] == changed.filter(pl.col("id") == row_id)["text"][0]
    meta = final.filter(pl.col("id") == row_id)["meta"][0]
    assert info["scores"] == {k: v for k, v in meta.items() if v is not None and k != "source_line"}


def test_explain_an_unknown_id_exits_2(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", str(run_dir), "no-such-row"]) == 2
    assert "no row with id 'no-such-row'" in capsys.readouterr().err
    assert main(["explain", str(run_dir.parent / "nowhere"), "x"]) == 2


def test_show_browses_kept_and_dropped_rows(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frame, _ = rows(run_dir, "dedup_minhash", dropped=True, limit=3)
    assert frame.height == 3 and set(frame["reason"]) == {"near_duplicate"}
    frame, path = rows(run_dir, reason="too_few_words", limit=100)
    assert frame.height == 5 and path.endswith("rejects.parquet")
    assert rows(run_dir, limit=7)[0].height == 7
    assert main(["show", str(run_dir), "--step", "03-dedup_exact", "--dropped", "-n", "2"]) == 0
    assert "exact_duplicate" in capsys.readouterr().err
    assert main(["show", str(run_dir), "--step", "nope"]) == 2
    assert "this run's steps: 00-ingest" in capsys.readouterr().err


def test_diff_two_runs(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stricter = [STEPS[0], {"filter": {"min_words": 25, "max_words": 2000}}, *STEPS[2:]]
    assert main(["-q", "run", str(_recipe(tmp_path, "b", stricter, "run_b")), "--no-train"]) == 0
    info = diff(run_dir, tmp_path / "run_b")
    a, b = summary(run_dir)["rows_final"], summary(tmp_path / "run_b")["rows_final"]
    assert b < a and info["rows"]["a"] == a and info["rows"]["b"] == b
    assert len(info["rows"]["removed"]) - len(info["rows"]["added"]) == a - b
    assert info["params"] == {"steps[1].filter.min_words": [5, 25]}
    assert info["steps"]["02-filter"]["a"]["reasons"] == {"too_few_words": 5}
    assert info["steps"]["02-filter"]["b"]["reasons"]["too_few_words"] > 5
    assert main(["diff", str(run_dir), str(tmp_path / "run_b"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == {"steps[1].filter.min_words": [5, 25]}


def test_batch_runs_every_recipe_and_exits_with_the_worst_code(tmp_path: Path, sample_dir: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    good = _recipe(tmp_path, "good", STEPS[:3], "run_good")
    missing = _recipe(tmp_path, "missing", STEPS[:3], "run_missing", inputs="data/nope.jsonl")
    gated = _recipe(tmp_path, "gated", [*STEPS[:4], {"audit": {"axes": ["gender"],
                                                              "gate": {"max_representation_ratio": 1.0}}}], "run_g")
    assert main(["run", str(missing), str(good), str(gated), "--no-train", "--json"]) == 3
    captured = capsys.readouterr()
    summary_json = json.loads(captured.out)
    assert [(r["recipe"], r["status"], r["exit_code"]) for r in summary_json["recipes"]] == [
        (str(missing), "invalid", 2), (str(good), "ok", 0), (str(gated), "gate_failed", 3)]
    assert summary_json["recipes"][1]["rows"] == 330 - 5 - 30 and summary_json["exit_code"] == 3
    assert "nope.jsonl: input file not found" in captured.err and "batch" in captured.err
    assert main(["-q", "run", str(missing), str(good), "--fail-fast", "--json"]) == 2
    statuses = [r["status"] for r in json.loads(capsys.readouterr().out)["recipes"]]
    assert statuses == ["invalid", "skipped"]


def test_progress_lines_off_a_terminal(tmp_path: Path, sample_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(_recipe(tmp_path, steps=STEPS[:2])), "--no-train"]) == 0
    err = capsys.readouterr().err
    assert "→ 01 normalize: 330 rows" in err and "rows/s" in err and "[green]" not in err


def _eval_csv(tmp_path: Path, header: str) -> Path:
    path = tmp_path / "data" / "eval.csv"
    path.write_text(f"{header}\nWhat is the boiling point of water at sea level in Celsius?,100\n")
    return path


def test_validate_checks_files_columns_and_models(tmp_path: Path, sample_dir: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _eval_csv(tmp_path, "prompt,answer")
    steps = [{"decontaminate": {"eval_sets": ["data/eval.csv"], "text_fields": ["question"]}},
             {"quality": {"reference": "data/missing_gold.jsonl", "keep": {"top_fraction": 0.9}}},
             {"synthesize": {"method": "self_instruct", "seeds": "data/seeds.jsonl", "n": 2,
                             "model": str(tmp_path / "no-model-here")}}]
    path = _recipe(tmp_path, steps=steps)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "steps[0].decontaminate.text_fields:" in err and "eval.csv has no column 'question' (columns: prompt, " \
        "answer)" in err
    assert "steps[1].quality.reference:" in err and "missing_gold.jsonl does not exist" in err
    assert "steps[2].synthesize.model" in err and "no-model-here" in err
    assert "[red]" not in err and err.startswith("invalid ")
    _eval_csv(tmp_path, "question,answer")
    ok = _recipe(tmp_path, "ok", [steps[0], STEPS[4]])
    assert main(["validate", str(ok)]) == 0, capsys.readouterr().err


def test_validate_reads_the_first_records_under_the_mapping(tmp_path: Path, sample_dir: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = _recipe(tmp_path, steps=STEPS[:1])
    path.write_text(path.read_text().replace("mapping: alpaca", "mapping: sharegpt"))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "inputs[0]:" in err and "sample.jsonl" in err and "mapping: alpaca" in err  # the hint names the fix
    audit = _recipe(tmp_path, "audit", [{"audit": {"axes": ["gender"], "label_column": "nope"}}])
    assert main(["validate", str(audit)]) == 2
    assert "steps[0].audit.label_column: no input has a column 'nope'" in capsys.readouterr().err


def test_init_writes_a_recipe_that_validates(tmp_path: Path, sample_dir: Path) -> None:
    out = tmp_path / "recipes" / "mine.yaml"
    assert main(["init", "--input", str(sample_dir / "sample.jsonl"), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# Written by `gristmill init`") and "../data/sample.jsonl" in text
    assert "dedup_minhash" in text and "synthesize" in text and "audit" in text and "train:" in text
    assert main(["validate", str(out)]) == 0
    assert main(["init", "--input", str(sample_dir / "sample.jsonl"), "--out", str(out)]) == 2  # exists
    small = tmp_path / "small.yaml"
    assert main(["init", "--input", str(sample_dir / "sample.jsonl"), "--stages", "curation", "--out",
                 str(small)]) == 0
    assert "synthesize" not in small.read_text() and "train:" not in small.read_text()
    assert main(["validate", str(small)]) == 0
    assert main(["init", "--input", str(sample_dir / "sample.jsonl"), "--stages", "curation,magic", "--out",
                 str(tmp_path / "x.yaml")]) == 2


def test_outputs_are_portable(run_dir: Path) -> None:
    data = pl.read_parquet(run_dir / "dataset" / "data.parquet")
    assert set(data["source"]) == {"data/sample.jsonl"}  # as the recipe names it, not this machine's path
    assert set(pl.read_parquet(run_dir / "rejects.parquet")["source"]) == {"data/sample.jsonl"}
    # umask 022 (the fixture): files 0644, directories 0755, also those made by mkstemp/mkdtemp
    assert stat.S_IMODE((run_dir / "manifest.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((run_dir / "reports" / "05-audit.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((run_dir / "steps" / "01-normalize").stat().st_mode) == 0o755


def test_atomic_parquet_follows_the_umask(tmp_path: Path, umask_022: None) -> None:
    from gristmill.checkpoint import write_parquet_atomic

    write_parquet_atomic(pl.DataFrame({"id": ["a"]}), tmp_path / "sub" / "x.parquet")
    assert stat.S_IMODE((tmp_path / "sub" / "x.parquet").stat().st_mode) == 0o644
    assert pl.read_parquet(tmp_path / "sub" / "x.parquet")["id"].to_list() == ["a"]
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.parquet"]  # no temporary file left


def test_a_stale_adapter_is_recorded_and_named(run_dir: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """An adapter trained on this run's data (its train_metrics.json as Runner.train writes it; training itself
    is covered by the slow training tests), then a --no-train run on changed data: the manifest says the adapter
    belongs to other data and inspect says so."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    (run_dir / "adapter").mkdir()
    (run_dir / "adapter" / "train_metrics.json").write_text(json.dumps(
        {"fingerprint": "x", "data_fingerprint": manifest["fingerprint"]}))
    assert main(["-q", "run", str(_recipe(tmp_path)), "--no-train"]) == 0  # same data: the adapter is current
    assert json.loads((run_dir / "manifest.json").read_text())["adapter"] == {
        "data_fingerprint": manifest["fingerprint"], "current": True}
    stricter = [STEPS[0], {"filter": {"min_words": 25, "max_words": 2000}}, *STEPS[2:]]
    assert main(["run", str(_recipe(tmp_path, steps=stricter)), "--no-train"]) == 0
    assert "was trained on other data" in capsys.readouterr().err
    assert json.loads((run_dir / "manifest.json").read_text())["adapter"]["current"] is False
    assert main(["inspect", str(run_dir)]) == 0
    assert "adapter: STALE" in capsys.readouterr().err


def test_explain_a_synthetic_row_shows_its_provenance(tmp_path: Path, sample_dir: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Synthesis through the runner against a local OpenAI-compatible server (tests/fake_openai.py): a generated
    row's history starts at the synthesize step, with its seeds, template and model."""
    from tests.fake_openai import FakeOpenAI

    server = FakeOpenAI()
    try:
        synth = {"method": "self_instruct", "seeds": "data/seeds.jsonl", "n": 3, "max_rounds": 2, "engine": "openai",
                 "base_url": server.url, "model": "fake-model", "max_tokens": 64}
        path = _recipe(tmp_path, steps=[*STEPS[:3], {"synthesize": synth}])
        assert main(["-q", "run", str(path), "--no-train"]) == 0
    finally:
        server.close()
    run = tmp_path / "run"
    data = pl.read_parquet(run / "dataset" / "data.parquet")
    row_id = data.filter(pl.col("source") == "synth:self_instruct")["id"][0]
    info = explain(run, row_id)
    assert info["history"] == [{"step": "04-synthesize", "outcome": "kept", "added": True}]
    assert info["outcome"] == "in the dataset" and info["source"] == "synth:self_instruct"
    assert info["synth"]["method"] == "self_instruct" and info["synth"]["model"] == "fake-model"
    assert info["synth"]["seed_ids"] and len(info["synth"]["template_hash"]) == 16
    made = summary(run)["synthetic"]
    assert made == [{"step": "04-synthesize", "generated": made[0]["generated"], "kept_by_step": 3,
                     "in_dataset": 3, "yield": round(3 / made[0]["generated"], 4)}]
    assert main(["explain", str(run), row_id]) == 0
    err = capsys.readouterr().err
    assert "generated here" in err and "fake-model" in err and "template_hash" in err


def test_validate_names_a_missing_eval_set_once(tmp_path: Path, sample_dir: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = _recipe(tmp_path, steps=STEPS[:1])
    path.write_text(path.read_text() + "eval:\n- {name: qa, path: data/nope.jsonl, mapping: alpaca}\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "eval[0].path:" in err and err.count("nope.jsonl does not exist") == 1


def test_validate_names_a_resume_adapter_that_is_not_a_trained_run(tmp_path: Path, sample_dir: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = _recipe(tmp_path, steps=STEPS[:1])
    path.write_text(path.read_text() + "train: {resume_adapter: runs/round-1}\n")
    assert main(["validate", str(path)]) == 2
    assert "train.resume_adapter:" in capsys.readouterr().err
    earlier = tmp_path / "runs" / "round-1"
    (earlier / "adapter").mkdir(parents=True)
    (earlier / "manifest.json").write_text("{}")
    (earlier / "adapter" / "adapter_config.json").write_text("{}")
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err


def test_adapter_state_known_answers(tmp_path: Path) -> None:
    from gristmill.checkpoint import adapter_state

    assert adapter_state(tmp_path / "adapter", "fp") is None  # no adapter
    (tmp_path / "adapter").mkdir()
    metrics = tmp_path / "adapter" / "train_metrics.json"
    metrics.write_text(json.dumps({"fingerprint": "t"}))  # an adapter of an older gristmill: its data is unknown
    assert adapter_state(tmp_path / "adapter", "fp") == {"data_fingerprint": None, "current": None}
    metrics.write_text(json.dumps({"fingerprint": "t", "data_fingerprint": "fp"}))
    assert adapter_state(tmp_path / "adapter", "fp") == {"data_fingerprint": "fp", "current": True}
    assert adapter_state(tmp_path / "adapter", "other") == {"data_fingerprint": "fp", "current": False}
