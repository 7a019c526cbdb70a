"""QLoRA training with an explicit loop: NF4 4-bit base (bitsandbytes) + LoRA adapters (peft).

Reads a list of rows (``messages`` or ``text``), holds out a seeded eval split, measures eval loss before and
after training, and saves the adapter, the tokenizer and ``train_metrics.json`` to ``out_dir``. Works on CPU
(bitsandbytes >= 0.49 has CPU NF4 kernels) and CUDA; the loop is the same.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gristmill.train.formatting import IGNORE, Example, collate, encode_row

_HINT = "pip install 'gristmill[cpu]' (CPU) or 'gristmill[gpu]' (CUDA): torch, transformers, peft, bitsandbytes"


class LoraParams(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    r: int = Field(16, ge=1)
    """LoRA rank."""
    alpha: int = Field(32, ge=1)
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the LoRA input."""
    target_modules: str | list[str] = "all-linear"
    """Modules to adapt: peft's "all-linear" or a list of module names."""


class TrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    base_model: str = "smollm2-135m-instruct"
    """Base model: a registered short name or a local HF model directory."""
    method: Literal["qlora", "lora"] = "qlora"
    """qlora = NF4 4-bit frozen base + LoRA; lora = full-precision base + LoRA."""
    lora: LoraParams = LoraParams()
    """Adapter shape."""
    double_quant: bool = True
    """Also quantize the 4-bit quantization constants (saves ~0.4 bit/param), as in the QLoRA paper."""
    epochs: float = Field(1.0, gt=0)
    """Passes over the training split (ignored when max_steps is set)."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps."""
    learning_rate: float = Field(2e-4, gt=0)
    """AdamW learning rate (constant after a linear warmup)."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warmup steps."""
    batch_size: int = Field(4, ge=1)
    """Examples per forward pass."""
    grad_accum: int = Field(1, ge=1)
    """Forward passes per optimizer step."""
    max_seq_length: int = Field(512, ge=16)
    """Tokens per example (longer ones are cut)."""
    eval_fraction: float = Field(0.1, gt=0, lt=1)
    """Share of rows held out for evaluation."""
    min_eval_rows: int = Field(8, ge=1)
    """At least this many held-out rows."""
    seed: int = 0
    """Seed for the split, shuffling and LoRA init."""


def _load_model(model_path: str, params: TrainParams) -> tuple[Any, Any]:
    try:
        import torch
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
        from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"training needs the model stack: {_HINT}") from err
    device = "cuda" if torch.cuda.is_available() else "cpu"
    compute = torch.bfloat16 if device == "cuda" else torch.float32
    kwargs: dict[str, Any] = {"dtype": compute, "device_map": {"": device}}
    if params.method == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_use_double_quant=params.double_quant,
        )
    model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    if params.method == "qlora":
        _keep_4bit_weights_trainable(model)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora = LoraConfig(
        r=params.lora.r,
        lora_alpha=params.lora.alpha,
        lora_dropout=params.lora.dropout,
        target_modules=params.lora.target_modules,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _keep_4bit_weights_trainable(model: Any) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 converts a ``Linear4bit`` weight in place to a packed inference
    layout the first time the module runs in eval mode without grad (our eval-loss pass); training forwards and
    backwards after that silently go wrong. Measured on SmolLM2: 6 steps on one batch took the loss 3.44 -> 1.32
    without an eval pass first and 3.44 -> 3.27 with one. Turning the CPU fast path off keeps the layout fixed.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _batch_loss(model: Any, batch: dict[str, Any]) -> tuple[Any, int]:
    """Summed next-token cross-entropy over labelled positions, and their count."""
    import torch.nn.functional as F

    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    target = batch["labels"][:, 1:]
    loss = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), target.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    return loss, int((target != IGNORE).sum())


def evaluate_loss(model: Any, examples: list[Example], pad_id: int, batch_size: int) -> float:
    """Mean token loss over ``examples``."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            loss, n = _batch_loss(model, collate(examples[start : start + batch_size], pad_id))
            total += float(loss)
            count += n
    model.train()
    return total / max(count, 1)


def train_qlora(
    rows: list[dict[str, Any]],
    params: TrainParams,
    *,
    model_path: str,
    out_dir: Path,
    progress: Callable[[int, int, float], None] | None = None,
) -> dict[str, Any]:
    """Train an adapter on ``rows``; returns (and writes) the metrics. ``progress(step, total, loss)``."""
    import torch

    random.seed(params.seed)
    torch.manual_seed(params.seed)
    started = time.perf_counter()
    model, tokenizer = _load_model(model_path, params)
    encoded = [encode_row(tokenizer, r, params.max_seq_length) for r in rows]
    examples = [e for e in encoded if e is not None]
    skipped = len(rows) - len(examples)
    order = list(range(len(examples)))
    random.Random(params.seed).shuffle(order)
    n_eval = max(params.min_eval_rows, math.ceil(params.eval_fraction * len(examples)))
    if len(examples) < n_eval + params.batch_size:
        raise ValueError(
            f"train: {len(examples)} trainable rows are too few for {n_eval} eval rows plus one batch of "
            f"{params.batch_size}; lower train.min_eval_rows / train.batch_size or curate more rows"
        )
    eval_set = [examples[i] for i in order[:n_eval]]
    train_set = [examples[i] for i in order[n_eval:]]
    pad = tokenizer.pad_token_id
    steps_per_epoch = math.ceil(len(train_set) / (params.batch_size * params.grad_accum))
    total_steps = params.max_steps or max(1, math.ceil(params.epochs * steps_per_epoch))

    eval_before = evaluate_loss(model, eval_set, pad, params.batch_size)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=params.learning_rate, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / (params.warmup_steps + 1)))
    model.train()
    losses: list[float] = []
    tokens_seen = 0
    cursor = 0
    rng = random.Random(params.seed + 1)
    for step in range(total_steps):
        step_loss, step_tokens = 0.0, 0
        for _ in range(params.grad_accum):
            if cursor + params.batch_size > len(train_set):
                rng.shuffle(train_set)
                cursor = 0
            batch = collate(train_set[cursor : cursor + params.batch_size], pad)
            cursor += params.batch_size
            loss_sum, n = _batch_loss(model, batch)
            (loss_sum / max(n, 1) / params.grad_accum).backward()
            step_loss += float(loss_sum.detach())
            step_tokens += n
            tokens_seen += int(batch["attention_mask"].sum())
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(step_loss / max(step_tokens, 1))
        if progress:
            progress(step + 1, total_steps, losses[-1])
    train_seconds = time.perf_counter() - started
    eval_after = evaluate_loss(model, eval_set, pad, params.batch_size)

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    metrics = {
        "base_model": model_path,
        "method": params.method,
        "train_rows": len(train_set),
        "eval_rows": len(eval_set),
        "skipped_rows": skipped,
        "steps": total_steps,
        "train_loss_first": losses[0],
        "train_loss_last": losses[-1],
        "eval_loss_before": eval_before,
        "eval_loss_after": eval_after,
        "tokens_seen": tokens_seen,
        "seconds": round(train_seconds, 2),
        "tokens_per_s": round(tokens_seen / train_seconds, 1),
        "trainable_params": sum(p.numel() for p in trainable),
    }
    (out_dir / "train_metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
