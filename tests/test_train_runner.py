"""The runner's training path (``gristmill run`` and ``gristmill train``) on a tiny random-init model: fingerprint,
atomic adapter, checkpoints cleared, eval file from the recipe, model card data."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.test_train_support import sum_rows, tiny_model_dir

pytest.importorskip("torch")


def test_runner_trains_once_per_fingerprint_with_an_eval_file(tmp_path: Path, sample_dir: Path) -> None:
    from gristmill.recipe import load_recipe
    from gristmill.runner import Runner

    tiny = tiny_model_dir(tmp_path)
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sum_rows(5, start=100)))
    recipe = {
        "name": "t", "inputs": [{"path": str(sample_dir / "sample.jsonl"), "mapping": "alpaca", "on_error": "skip"}],
        "steps": [{"normalize": {}}], "output": {"dir": str(tmp_path / "run")},
        "train": {"base_model": str(tiny), "max_steps": 3, "batch_size": 4, "learning_rate": 0.003,
                  "max_seq_length": 128, "eval_file": "eval.jsonl", "eval_generate_rows": 2,
                  "eval_max_new_tokens": 4, "save_steps": 1, "report_to": []},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    rows = sum_rows(12)
    frame = pl.DataFrame({"id": [r["id"] for r in rows], "messages": [r["messages"] for r in rows],
                          "text": [""] * 12, "source": ["test"] * 9 + ["synth:self_instruct"] * 3})
    runner = Runner(load_recipe(path), tmp_path / "run")
    metrics = runner.train(frame, "data-fp")
    adapter = tmp_path / "run" / "adapter"
    assert metrics["resumed"] is False and metrics["steps"] == 3
    assert metrics["train_rows"] == 12 and metrics["eval_rows"] == 5  # all rows train; the file evaluates
    ev = json.loads((adapter / "eval.json").read_text())
    assert ev["source"] == "eval_file" and ev["generation"]["rows"] == 2
    assert "synthetic share: 0.25" in (adapter / "README.md").read_text()
    assert not list((tmp_path / "run" / ".train-checkpoints").glob("*/step-*"))  # cleared after success
    assert not list((tmp_path / "run").glob(".tmp-adapter-*"))
    again = runner.train(frame, "data-fp")
    assert again["resumed"] is True and again["fingerprint"] == metrics["fingerprint"]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sum_rows(6, start=100)))
    changed = Runner(load_recipe(path), tmp_path / "run").train(frame, "data-fp")
    assert changed["resumed"] is False and changed["eval_rows"] == 6  # the eval file's content is fingerprinted


def test_search_keeps_the_best_trial(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    from gristmill.train.params import TrainParams
    from gristmill.train.search import search_qlora

    tiny = tiny_model_dir(tmp_path)
    params = TrainParams(max_steps=2, batch_size=4, max_seq_length=128, min_eval_rows=4, report_to=[])
    metrics = search_qlora(sum_rows(12), params, 3, model_path=str(tiny), out_dir=tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "search.json").read_text())
    assert len(summary["trials"]) == 3 and {"learning_rate", "r"} <= set(summary["trials"][0]["params"])
    assert summary["best_eval_loss"] == min(t["eval_loss"] for t in summary["trials"])
    assert metrics["eval_loss_after"] == summary["best_eval_loss"]
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["r"] == summary["best_params"]["r"]
    assert not (tmp_path / "out" / "trials").exists()
