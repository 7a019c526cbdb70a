from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml

from gristmill.cli import main
from gristmill.recipe import load_recipe
from gristmill.runner import Runner
from tests.helpers import assert_manifest_adds_up, assert_planted_defects_removed

STEPS = [
    {"normalize": {}},
    {"filter": {"min_words": 5, "max_words": 2000}},
    {"dedup_exact": {}},
    {"dedup_minhash": {"threshold": 0.8}},
    {"audit": {"axes": ["gender", "religion"], "label_column": "accepted"}},
]


def _recipe(tmp_path: Path, data: Path, steps: list | None = None, **extra: object) -> Path:
    recipe = {
        "name": "t",
        "inputs": [{"path": str(data / "sample.jsonl"), "mapping": "alpaca", "on_error": "skip"}],
        "steps": steps or STEPS,
        "output": {"dir": str(tmp_path / "run"), "formats": ["parquet", "jsonl"]},
        **extra,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_run_accounts_for_every_row_and_removes_planted_defects(tmp_path: Path, sample_dir: Path) -> None:
    result = Runner(load_recipe(_recipe(tmp_path, sample_dir))).run()
    run = result.run_dir
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "ok"
    assert_manifest_adds_up(manifest)
    assert_planted_defects_removed(run, sample_dir)
    ingest = manifest["steps"][0]
    rejects = pl.read_parquet(run / "rejects.parquet")
    assert rejects.height == sum(s["dropped"] for s in manifest["steps"])
    assert ingest["rows_in"] == rejects.height + manifest["rows_final"]
    data = pl.read_parquet(run / "dataset" / "data.parquet")
    assert {"id", "text", "messages", "source", "meta"} <= set(data.columns)
    first = json.loads((run / "dataset" / "data.jsonl").read_text().splitlines()[0])
    assert set(first) == {"id", "messages", "source"} and first["messages"][-1]["role"] == "assistant"
    card = (run / "dataset" / "README.md").read_text()
    assert f"rows: **{data.height}**" in card and "exact_duplicate" in card
    assert "## Demographic audit (05-audit)" in card and "- gender: female" in card
    assert (run / "reports" / "05-audit.json").exists()
    for n, name in enumerate(["ingest", "normalize", "filter", "dedup_exact", "dedup_minhash", "audit"]):
        assert (run / "steps" / f"{n:02d}-{name}" / "stats.json").exists()


def test_second_run_resumes_everything_and_changed_step_recomputes_from_there(
    tmp_path: Path, sample_dir: Path
) -> None:
    path = _recipe(tmp_path, sample_dir)
    first = Runner(load_recipe(path)).run()
    assert first.recomputed == ["ingest", "normalize", "filter", "dedup_exact", "dedup_minhash", "audit"]
    before = pl.read_parquet(first.run_dir / "dataset" / "data.parquet")
    again = Runner(load_recipe(path)).run()
    assert again.recomputed == []
    assert pl.read_parquet(again.run_dir / "dataset" / "data.parquet").equals(before)
    steps = [*STEPS[:3], {"dedup_minhash": {"threshold": 0.9}}, STEPS[4]]
    changed = Runner(load_recipe(_recipe(tmp_path, sample_dir, steps))).run()
    assert changed.recomputed == ["dedup_minhash", "audit"]


def test_a_half_written_checkpoint_is_not_trusted(tmp_path: Path, sample_dir: Path) -> None:
    path = _recipe(tmp_path, sample_dir)
    Runner(load_recipe(path)).run()
    step = tmp_path / "run" / "steps" / "03-dedup_exact"
    (step / "stats.json").unlink()  # as if killed before the checkpoint completed
    rerun = Runner(load_recipe(path)).run()
    assert rerun.recomputed == ["dedup_exact"]  # downstream fingerprints still match: same rows out


def test_gate_failure_stops_before_training_with_exit_code_3(tmp_path: Path, sample_dir: Path) -> None:
    steps = [*STEPS[:4], {"audit": {"axes": ["gender"], "gate": {"max_representation_ratio": 1.0}}}]
    path = _recipe(tmp_path, sample_dir, steps, train={"max_steps": 1})
    assert main(["run", str(path)]) == 3
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "gate_failed"
    assert manifest["gate_failures"][0].startswith("representation_ratio | gender |")
    assert not (tmp_path / "run" / "adapter").exists()
    assert not (tmp_path / "run" / "dataset").exists()


def test_missing_input_file_exit_code_2(tmp_path: Path, sample_dir: Path, capsys: pytest.CaptureFixture) -> None:
    path = _recipe(tmp_path, sample_dir)
    (sample_dir / "sample.jsonl").unlink()
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "sample.jsonl: input file not found" in err and "Traceback" not in err
    assert main(["--debug", "run", str(path)]) == 2  # --debug: the user error's traceback too
    err = capsys.readouterr().err
    assert "input file not found" in err and "Traceback" in err


def test_a_bug_is_not_reported_as_bad_input(tmp_path: Path, sample_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ValueError from our own code (or polars, numpy...) is a bug: it propagates with its traceback (exit 1),
    it is not turned into "invalid input"."""
    from gristmill import steps

    def broken(frame: pl.DataFrame, params: object) -> None:
        raise ValueError("internal inconsistency")

    monkeypatch.setitem(steps.STEPS, "filter", steps.StepDef(steps.STEPS["filter"].params, "1", stage=broken))
    with pytest.raises(ValueError, match="internal inconsistency"):
        main(["run", str(_recipe(tmp_path, sample_dir))])


def test_quiet_keeps_errors_only(tmp_path: Path, sample_dir: Path, capsys: pytest.CaptureFixture) -> None:
    path = _recipe(tmp_path, sample_dir, STEPS[:2])
    assert main(["-q", "run", str(path)]) == 0
    assert capsys.readouterr().err == ""
    assert main(["run", str(path)]) == 0
    err = capsys.readouterr().err
    assert "✓ 01 normalize" in err and "[green]" not in err and "(resumed)" in err


def test_dedup_against_an_earlier_run(tmp_path: Path, sample_dir: Path) -> None:
    first = Runner(load_recipe(_recipe(tmp_path, sample_dir))).run()
    curated = first.run_dir / "dataset" / "data.parquet"
    steps = [*STEPS[:3], {"dedup_minhash": {"threshold": 0.8, "against": [str(curated)]}}]
    second_dir = tmp_path / "second"
    second_dir.mkdir()
    recipe = load_recipe(_recipe(second_dir, sample_dir, steps))
    again = Runner(recipe).run()
    step = next(s for s in again.manifest["steps"] if s["step"] == "dedup_minhash")
    assert step["kept"] == 0  # the same data again: every row already curated
    assert step["dropped_by_reason"] == {"near_duplicate_of_earlier": step["rows_in"]}
    bad = [*STEPS[:3], {"dedup_minhash": {"against": [str(first.run_dir)]}}]
    with pytest.raises(ValueError, match="is a directory; name its curated file"):
        Runner(load_recipe(_recipe(second_dir, sample_dir, bad))).run()
