"""Merge a trained adapter into its base model, never into 4-bit weights.

A QLoRA adapter was trained against the NF4-dequantized weights, so the merge target is the base loaded in 4 bits
exactly as in training and dequantized (transformers' ``dequantize``), in fp32; peft's ``merge_and_unload`` then
adds the LoRA product to those weights. Merging into the 4-bit weights would re-quantize the sum and lose most of
the update; merging into the original bf16 checkpoint would differ from what the adapter was trained against.
The merged model's logits are checked against the adapter model's (4-bit base + adapter, fp32 compute) on a few
prompts before the merged model is saved in bf16.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gristmill.common.errors import InputError
from gristmill.train.params import TrainParams

PROMPTS = ["What is the capital of France?", "Write a haiku about autumn.", "Explain recursion in one sentence."]


def _logits(model: Any, tokenizer: Any, prompts: list[str]) -> list[Any]:
    import torch

    out = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                return_tensors="pt", return_dict=True)["input_ids"]
            out.append(model(input_ids=ids.to(model.device)).logits.float().cpu())
    return out


def _compare(a: list[Any], b: list[Any]) -> dict[str, float]:
    diff = max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))
    agree = sum(int((x.argmax(-1) == y.argmax(-1)).sum()) for x, y in zip(a, b, strict=True))
    total = sum(x.shape[1] for x in a)
    return {"max_abs_logit_diff": diff, "argmax_agreement": agree / total}


def merge_adapter(adapter_dir: Path, out_dir: Path, *, prompts: list[str] | None = None,
                  tolerance: float = 1e-2) -> dict[str, Any]:
    """Write ``out_dir`` (a plain HF model in bf16 + tokenizer) and return the logits check; raises when the
    merged model's fp32 logits differ from the adapter model's by more than ``tolerance``."""
    import torch
    from peft import PeftConfig, PeftModel
    from transformers import AutoTokenizer

    from gristmill.train.model import load_base

    if not (adapter_dir / "adapter_config.json").is_file():
        raise InputError(f"{adapter_dir} holds no adapter (adapter_config.json): train first")
    metrics_path = adapter_dir / "train_metrics.json"
    trained = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    base_path = PeftConfig.from_pretrained(str(adapter_dir)).base_model_name_or_path
    method = trained.get("method", "qlora")
    params = TrainParams(method=method, double_quant=trained.get("double_quant", True), bf16=False)
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    prompts = prompts or PROMPTS

    reference = PeftModel.from_pretrained(load_base(base_path, params, device="cpu"), str(adapter_dir))
    expected = _logits(reference.eval(), tokenizer, prompts)
    del reference

    base = load_base(base_path, params, device="cpu")
    if method == "qlora":
        base = base.dequantize()  # NF4 -> the exact values training saw, as dense fp32 weights
    base = base.to(torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload().eval()
    check = _compare(expected, _logits(merged, tokenizer, prompts))
    if check["max_abs_logit_diff"] > tolerance:
        raise RuntimeError(f"merged model's logits differ from the adapter model's by {check['max_abs_logit_diff']:.4g}"
                           f" (> {tolerance}); the merged model was not written")
    merged = merged.to(torch.bfloat16)
    check["bf16"] = _compare(expected, _logits(merged, tokenizer, prompts))
    if hasattr(merged.config, "quantization_config"):
        del merged.config.quantization_config
    if hasattr(merged.config, "gristmill_bf16"):
        delattr(merged.config, "gristmill_bf16")
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    result = {"adapter": str(adapter_dir), "base_model": base_path, "method": method, "dtype": "bfloat16",
              "prompts": len(prompts), **check}
    (out_dir / "merge_check.json").write_text(json.dumps(result, indent=2))
    return result
