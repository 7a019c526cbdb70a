"""Merging an adapter: dequantized base (never 4-bit), logits equal to the adapter model's, a plain HF model out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gristmill.train.params import TrainParams
from tests.test_train_support import sum_rows, tiny_model_dir

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("method", ["qlora", "lora"])
def test_merged_model_matches_the_adapter_model(tmp_path: Path, method: str) -> None:
    from transformers import AutoModelForCausalLM

    from gristmill.train.merge import merge_adapter
    from gristmill.train.qlora import train_qlora

    tiny = tiny_model_dir(tmp_path)
    params = TrainParams(method=method, max_steps=3, batch_size=4, learning_rate=1e-2, max_seq_length=128,
                         min_eval_rows=4, eval_generate_rows=0, save_steps=None, report_to=[])
    train_qlora(sum_rows(16), params, model_path=str(tiny), out_dir=tmp_path / "adapter")
    check = merge_adapter(tmp_path / "adapter", tmp_path / "merged", tolerance=1e-3)
    assert check["max_abs_logit_diff"] < 1e-3 and check["argmax_agreement"] == 1.0
    assert check["bf16"]["argmax_agreement"] > 0.9
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    ids = torch.tensor([[1, 4, 7, 8, 17, 9, 17, 11, 2, 1, 5]])
    with torch.no_grad():
        assert not torch.allclose(merged(ids).logits, base(ids).logits, atol=1e-3)  # the update is in there


def test_cli_merges_a_runs_adapter(tmp_path: Path) -> None:
    from gristmill.cli import main
    from gristmill.train.qlora import train_qlora

    tiny = tiny_model_dir(tmp_path)
    params = TrainParams(max_steps=1, batch_size=4, max_seq_length=128, min_eval_rows=4, eval_generate_rows=0,
                         save_steps=None, report_to=[])
    train_qlora(sum_rows(12), params, model_path=str(tiny), out_dir=tmp_path / "run" / "adapter")
    assert main(["train", "merge", str(tmp_path / "run")]) == 0
    check = json.loads((tmp_path / "run" / "merged" / "merge_check.json").read_text())
    assert check["method"] == "qlora" and check["max_abs_logit_diff"] < 1e-2
    assert main(["train", "merge", str(tmp_path / "nowhere")]) == 2
