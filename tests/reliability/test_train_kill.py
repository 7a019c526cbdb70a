"""Training inside the kill harness: ``gristmill run`` with a ``train:`` section on a tiny random-init Llama in 4 bits
(NF4, the qlora path) is SIGKILLed by ``driver.py`` just before its second checkpoint is written (so the step-2
checkpoint is on disk and steps 3-4 are lost). The rerun resumes every data step from its checkpoint and training
from step 2, and its adapter is bitwise equal to an uninterrupted run's: the checkpoint holds the adapter weights,
the optimizer and scheduler state, the RNG states and the data position, and on CPU the same kernels run in the
same order on the same threads, so nothing leaves room for a rounding difference."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.test_train_support import sum_rows, tiny_model_dir

pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")

DRIVER = Path(__file__).with_name("driver.py")
KILL = "gristmill.train.qlora:save_checkpoint:2"


def _recipe(tmp: Path, model: Path) -> Path:
    data = tmp / "rows.jsonl"
    data.write_text("".join(json.dumps({"id": r["id"], "messages": r["messages"]}) + "\n"
                            for r in sum_rows(40, turns=2)))
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "name": "trainkill", "inputs": [{"path": str(data), "mapping": "messages"}], "steps": [{"normalize": {}}],
        "output": {"dir": "unused", "formats": ["parquet"]},
        "train": {"base_model": str(model), "method": "qlora", "max_steps": 6, "save_steps": 2, "batch_size": 4,
                  "learning_rate": 3e-3, "max_seq_length": 128, "min_eval_rows": 6, "eval_generate_rows": 0,
                  "report_to": []},
    }))
    return path


def _run(recipe: Path, run_dir: Path, kill: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("GRISTMILL_KILL", None)
    if kill:
        env["GRISTMILL_KILL"] = kill
    return subprocess.run([sys.executable, str(DRIVER), "run", str(recipe), "--out", str(run_dir)], env=env,
                          text=True, capture_output=True, timeout=600)


def test_training_killed_after_a_checkpoint_resumes_to_the_same_adapter(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    recipe = _recipe(tmp_path, tiny_model_dir(tmp_path))
    straight = _run(recipe, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]

    run_dir = tmp_path / "killed"
    killed = _run(recipe, run_dir, kill=KILL)
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-3000:])
    assert not (run_dir / "adapter").exists()
    saved = [p.name for p in (run_dir / ".train-checkpoints").glob("*/step-*")]
    assert saved == ["step-000002"]  # complete (written atomically); the second one never started

    again = _run(recipe, run_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    metrics = json.loads((run_dir / "adapter" / "train_metrics.json").read_text())
    reference = json.loads((tmp_path / "straight" / "adapter" / "train_metrics.json").read_text())
    assert metrics["resumed_from_step"] == 2 and reference["resumed_from_step"] == 0
    assert metrics["steps"] == reference["steps"] == 6
    assert metrics["loss_curve"] == reference["loss_curve"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [s["step"] for s in manifest["steps"] if s["resumed"]] == ["ingest", "normalize"]
    ours = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    theirs = load_file(str(tmp_path / "straight" / "adapter" / "adapter_model.safetensors"))
    assert ours.keys() == theirs.keys() and ours
    for name, tensor in ours.items():
        assert tensor.dtype == theirs[name].dtype and tensor.equal(theirs[name]), name  # bitwise
    assert not list((run_dir / ".train-checkpoints").glob("*/step-*"))  # cleared after success
