"""Evaluation: token loss / perplexity over the held-out rows (batched by length) and generated answers scored
with ROUGE-L and exact match (``eval_metrics``), for the base model (adapter disabled) and the adapter side by side."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from gristmill.train.eval_metrics import generation_scores
from gristmill.train.formatting import Example
from gristmill.train.model import autocast, device_of, token_losses
from gristmill.train.packing import collate, length_batches

Progress = Callable[[str, int, int, str], None]


def _quiet(phase: str, done: int, total: int, note: str) -> None:
    return None


def eval_loss(model: Any, examples: list[Example], *, pad_id: int, packing: bool, token_budget: int,
              max_row: int | None = None, varlen: bool = False, phase: str = "eval",
              progress: Progress = _quiet) -> dict[str, float]:
    """Mean (unweighted) token loss over ``examples`` and its perplexity; batches of similar length. ``varlen``:
    packed rows carry their example boundaries (``model.varlen_attention``)."""
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    batches = length_batches([len(e.input_ids) for e in examples], token_budget)
    started = time.perf_counter()
    with torch.no_grad():
        for i, idx in enumerate(batches, 1):
            losses, _ = token_losses(model, collate([examples[j] for j in idx], pad_id, packing,
                                                    max_row=max_row, flash_kwargs=varlen))
            total += float(losses.sum())
            count += losses.numel()
            progress(phase, i, len(batches), f"{count} tokens")
    model.train(was_training)
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count,
            "seconds": round(time.perf_counter() - started, 2)}


def generate(model: Any, tokenizer: Any, prompts: list[list[dict[str, Any]]], *, max_new_tokens: int,
             stop_ids: set[int], batch_size: int, phase: str, progress: Progress = _quiet) -> list[str]:
    """Greedy answers to chat ``prompts``; left-padded batches of similar prompt length."""
    import torch

    encoded = [tokenizer.apply_chat_template(p, tokenize=True, add_generation_prompt=True) for p in prompts]
    encoded = [list(e["input_ids"]) if hasattr(e, "keys") else list(e) for e in encoded]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    answers = [""] * len(encoded)
    was_training = model.training
    model.eval()
    device = device_of(model)
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        for n, start in enumerate(range(0, len(order), batch_size), 1):
            idx = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
                mask[row, width - len(encoded[i]):] = 1
            with autocast(model):
                out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                     max_new_tokens=max_new_tokens, eos_token_id=sorted(stop_ids),
                                     pad_token_id=pad)
            for row, i in enumerate(idx):
                answers[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True).strip()
            progress(phase, n, math.ceil(len(order) / batch_size), "")
    model.train(was_training)
    return answers


def score(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-L F1 and exact match (SQuAD normalisation), as the eval sets score them (``eval_metrics``)."""
    return generation_scores(predictions, references)


def generation_eval(model: Any, tokenizer: Any, rows: list[dict[str, Any]], *, max_new_tokens: int,
                    stop_ids: set[int], batch_size: int, progress: Progress = _quiet,
                    base: list[str] | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Answers of the base model (unless ``base`` already holds them) and the adapter to the chat rows' prompts
    (every turn before the last assistant one), scored against that last turn."""
    prompts = [r["messages"][:-1] for r in rows]
    refs = [r["messages"][-1]["content"] for r in rows]
    started = time.perf_counter()
    if base is None:
        with model.disable_adapter():
            base = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, stop_ids=stop_ids,
                            batch_size=batch_size, phase="generate (base)", progress=progress)
    tuned = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, stop_ids=stop_ids,
                     batch_size=batch_size, phase="generate (adapter)", progress=progress)
    metrics = {"rows": len(rows), "max_new_tokens": max_new_tokens, "base": score(base, refs),
               "adapter": score(tuned, refs), "seconds": round(time.perf_counter() - started, 2)}
    predictions = [{"id": str(r.get("id", i)), "prompt": tokenizer.apply_chat_template(
        p, tokenize=False, add_generation_prompt=True), "reference": ref, "base": b, "adapter": a}
        for i, (r, p, ref, b, a) in enumerate(zip(rows, prompts, refs, base, tuned, strict=True))]
    return metrics, predictions
