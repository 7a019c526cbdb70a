"""A model directory that is missing or damaged (truncated safetensors, config.json that is not JSON, no tokenizer)
is a ``UserError`` naming the directory, the file and the fix, for each model role: the embedding model
(dedup_semantic), the synthesis model and the trainer's base model. The check (``gristmill.models.check_model_dir``)
runs when the model's identity is fingerprinted, so the run stops before any step, and with no traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gristmill.models import ModelError, check_model_dir, resolve
from tests.conftest import ROOT

DRIVER = Path(__file__).with_name("driver.py")


def complete_model_dir(root: Path) -> Path:
    """A complete HF causal-LM directory: config, safetensors weights, a fast tokenizer (no torch needed)."""
    import numpy as np
    from safetensors.numpy import save_file

    path = root / "model"
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 4}))
    save_file({"w": np.arange(64, dtype=np.float32).reshape(8, 8)}, str(path / "model.safetensors"))
    (path / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "WordLevel", "vocab": {}}}))
    (path / "tokenizer_config.json").write_text("{}")
    return path


def _truncate(model: Path) -> str:
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])
    return "model.safetensors"


def _bad_config(model: Path) -> str:
    (model / "config.json").write_text('{"model_type": "llama", ')
    return "config.json"


def _no_tokenizer(model: Path) -> str:
    (model / "tokenizer.json").unlink()
    return "tokenizer.json"


DAMAGE = {"truncated_safetensors": _truncate, "config_not_json": _bad_config, "missing_tokenizer": _no_tokenizer}


def test_a_complete_directory_passes(tmp_path: Path) -> None:
    check_model_dir(complete_model_dir(tmp_path))
    check_model_dir(Path(resolve("minilm-l6")))  # the built-in embedding model as installed


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damage_is_named_with_the_file_and_the_fix(damage: str, tmp_path: Path) -> None:
    model = complete_model_dir(tmp_path)
    file = DAMAGE[damage](model)
    with pytest.raises(ModelError) as err:
        resolve(str(model), key="train.base_model")
    message = str(err.value)
    assert message.startswith(f"train.base_model: the model directory {model} ")
    assert f": {file}: " in message and "copy the model again" in message


def test_truncated_shard_and_missing_shard(tmp_path: Path) -> None:
    model = complete_model_dir(tmp_path)
    (model / "model.safetensors").rename(model / "model-00001-of-00002.safetensors")
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "w": "model-00001-of-00002.safetensors", "v": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(ModelError, match=r"model-00002-of-00002\.safetensors: missing"):
        check_model_dir(model)
    (model / "pytorch_model.bin").write_bytes(b"PK\x03\x04 cut here")
    (model / "model.safetensors.index.json").unlink()
    with pytest.raises(ModelError, match=r"pytorch_model\.bin: not a complete torch checkpoint"):
        check_model_dir(model)


def _recipe(tmp: Path, model: Path, role: str) -> Path:
    data = tmp / "in.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Explain step {i} of baking bread", "input": "",
                                        "output": f"Knead the dough for {i} minutes."}) + "\n" for i in range(20)))
    recipe: dict[str, object] = {"name": "models", "inputs": [{"path": str(data)}], "steps": [{"normalize": {}}],
                                 "output": {"dir": str(tmp / "run")}}
    if role == "embedding":
        recipe["steps"] = [{"dedup_semantic": {"model": str(model)}}]
    elif role == "synthesis":
        recipe["steps"] = [{"synthesize": {"method": "self_instruct", "n": 2, "model": str(model),
                                           "seeds": str(ROOT / "recipes" / "data" / "seeds.jsonl")}}]
    else:
        recipe["train"] = {"base_model": str(model), "max_steps": 1}
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


ROLES = {"embedding": "steps.dedup_semantic.model", "synthesis": "steps.synthesize.model",
         "training": "train.base_model"}


@pytest.mark.parametrize("role", list(ROLES))
def test_each_model_role_stops_with_a_clear_error(role: str, tmp_path: Path) -> None:
    """Through the CLI: exit 2, one line naming the recipe key, the directory and the file; nothing half-written."""
    model = complete_model_dir(tmp_path)
    shutil.copy(model / "config.json", tmp_path / "config.json.bak")
    file = _truncate(model)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(DRIVER), "run", str(_recipe(tmp_path, model, role))], env=env,
                          text=True, capture_output=True, timeout=600)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert f"{ROLES[role]}: the model directory {model} " in done.stderr and f": {file}: " in done.stderr
    assert not (tmp_path / "run" / "adapter").exists()
