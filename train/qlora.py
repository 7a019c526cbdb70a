"""QLoRA training with an explicit loop: NF4 4-bit base (bitsandbytes) + LoRA adapters (peft).

``train_qlora`` encodes the rows (formatting), holds out a capped, seeded eval split (or takes ``eval_rows``),
measures eval loss and generation quality before and after training (evaluate), trains with packed or
length-grouped batches (packing) and resumable checkpoints (checkpointing), and writes the adapter (safetensors),
the tokenizer, ``train_metrics.json``, ``eval.json``, ``eval_predictions.parquet`` and a model card to ``out_dir``.
Works on CPU (bitsandbytes >= 0.49 has CPU NF4 kernels) and CUDA; the loop is the same.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gristmill.common.errors import InputError
from gristmill.train.card import write_card
from gristmill.train.checkpointing import latest_checkpoint, load_checkpoint, save_checkpoint
from gristmill.train.evaluate import eval_loss, generation_eval
from gristmill.train.formatting import IGNORE, Example, encode_rows, stop_token_ids
from gristmill.train.model import load_model, make_optimizer, token_losses, varlen_attention
from gristmill.train.packing import collate, plan_epoch
from gristmill.train.params import LoraParams, TrainParams
from gristmill.train.tracking import Trackers

VERSION = "7"  # 7: fused LoRA adds the adapter term in the input dtype (fp32), not in a bf16 sum; 6: CPU trains on one packed row per batch with per-example attention (fused.varlen_sdpa) and fused LoRA layers (same losses up to bf16 rounding); 5: bf16 compute by default on CPUs with native bf16; 4: train.resume_adapter continues an earlier adapter; 3: generation eval scores with eval_metrics (ROUGE-L over words, SQuAD exact match)
"""Part of the training fingerprint: bump when a change alters the adapter trained from the same data and params."""

__all__ = ["LoraParams", "TrainParams", "train_qlora"]
log = logging.getLogger(__name__)
Progress = Callable[[str, int, int, str], None]


def _quiet(phase: str, done: int, total: int, note: str) -> None:
    return None


def split(examples: list[Example], params: TrainParams) -> tuple[list[int], list[int]]:
    """Seeded (eval, train) example indices: ``eval_fraction`` of the rows, at least ``min_eval_rows`` and at most
    ``max_eval_rows``."""
    order = list(range(len(examples)))
    random.Random(params.seed).shuffle(order)
    n_eval = min(params.max_eval_rows, max(params.min_eval_rows, math.ceil(params.eval_fraction * len(examples))))
    return order[:n_eval], order[n_eval:]


def train_qlora(
    rows: list[dict[str, Any]],
    params: TrainParams,
    *,
    model_path: str,
    out_dir: Path,
    progress: Progress | None = None,
    checkpoint_dir: Path | None = None,
    eval_rows: list[dict[str, Any]] | None = None,
    card: dict[str, Any] | None = None,
    trust_remote_code: bool = False,
    resume_adapter: Path | None = None,
    start_step: int = 0,
) -> dict[str, Any]:
    """Train an adapter on ``rows``; returns (and writes) the metrics. ``progress(phase, done, total, note)``
    reports loading, eval, generation and training. With ``checkpoint_dir`` a checkpoint is written every
    ``save_steps`` and a killed run with the same arguments resumes from the last one. ``trust_remote_code``: the
    recipe's setting, for the base model's own Python code (off by default). ``resume_adapter``: an earlier
    adapter directory training continues from (instead of a fresh LoRA; its eval loss is then the "before"
    figure); ``start_step``: that adapter's global step count, which this run's steps add on to (metrics
    ``start_step`` and ``global_step``, tracker steps)."""
    import torch

    say = progress or _quiet
    started = time.perf_counter()
    random.seed(params.seed)
    torch.manual_seed(params.seed)
    say("load model", 0, 1, "")
    model, tokenizer = load_model(model_path, params, trust_remote_code=trust_remote_code, adapter=resume_adapter)
    say("load model", 1, 1, "")
    on_gpu = model.device.type == "cuda"
    stops = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
    enc = {"stop_ids": stops, "fix_eos": params.fix_eos, "overlength": params.overlength}
    examples, stats = encode_rows(tokenizer, rows, params.max_seq_length, **enc)
    if stats.overlength:
        done = "dropped" if params.overlength == "drop" else "truncated"
        log.warning(f"train: {stats.overlength} of {stats.rows} rows are longer than max_seq_length="
                    f"{params.max_seq_length} tokens ({done}; raise train.max_seq_length to keep them whole)")
    if eval_rows is not None:
        eval_set, eval_stats = encode_rows(tokenizer, eval_rows, params.max_seq_length, **enc)
        eval_set = eval_set[: params.max_eval_rows]
        eval_source = [eval_rows[e.source] for e in eval_set]
        train_set = examples
    else:
        eval_idx, train_idx = split(examples, params)
        eval_set, train_set = [examples[i] for i in eval_idx], [examples[i] for i in train_idx]
        eval_source = [rows[e.source] for e in eval_set]
    if len(train_set) < params.batch_size or not eval_set:
        raise InputError(
            f"train: {len(examples)} trainable rows ({stats.as_dict()}) are too few for {len(eval_set)} eval rows "
            f"plus one batch of {params.batch_size}; lower train.min_eval_rows / train.batch_size or curate more")
    gen_rows = [r for r in eval_source if r.get("messages") and r["messages"][-1]["role"] == "assistant"]
    gen_rows = gen_rows[: params.eval_generate_rows]
    pad = tokenizer.pad_token_id
    budget = params.batch_size * params.max_seq_length
    batches_per_epoch = len(train_set) // params.batch_size
    steps_per_epoch = math.ceil(batches_per_epoch / params.grad_accum)
    total_steps = params.max_steps or max(1, math.ceil(params.epochs * steps_per_epoch))
    load_seconds = time.perf_counter() - started

    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(trainable, params.learning_rate, on_gpu)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / (params.warmup_steps + 1)))
    key = {"params": params.model_dump(mode="json"), "train_rows": len(train_set), "model": model_path,
           "resume_adapter": str(resume_adapter) if resume_adapter else None}
    state: dict[str, Any] = {"epoch": 0, "batch": 0, "losses": [], "tokens_seen": 0, "train_seconds": 0.0,
                             "step": 0, "key": key, "eval_before": None, "base_answers": None,
                             "step_seconds": [], "step_tokens": []}
    ckpt = latest_checkpoint(checkpoint_dir)
    resumed_from = 0
    if ckpt is not None:
        saved = load_checkpoint(ckpt, model, opt, sched)
        if saved.get("key") == key:
            state, resumed_from = saved, saved["step"]
            log.info(f"train: resuming from {ckpt.name} (step {state['step']} of {total_steps})")
        else:  # another configuration's checkpoint: start afresh
            model, tokenizer = load_model(model_path, params, trust_remote_code=trust_remote_code, adapter=resume_adapter)
            trainable = [p for p in model.parameters() if p.requires_grad]
            opt = make_optimizer(trainable, params.learning_rate, on_gpu)
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: min(1.0, (s + 1) / (params.warmup_steps + 1)))
    varlen = varlen_attention(model)
    # Without per-example attention (flash varlen on CUDA, fused.varlen_sdpa on CPU), packed rows are capped at
    # max_seq_length: sdpa computes each row's full square.
    max_row = None if varlen else params.max_seq_length
    eval_kw = {"pad_id": pad, "packing": params.packing, "token_budget": budget, "max_row": max_row,
               "varlen": varlen, "progress": say}
    gen_kw = {"max_new_tokens": params.eval_max_new_tokens, "stop_ids": stops, "batch_size": params.batch_size * 2,
              "progress": say}
    if state["eval_before"] is None:
        # Before training a fresh adapter is the identity (LoRA's B starts at zero), so this is the base model.
        # A resumed adapter is not: the base is measured with it disabled, and the earlier adapter as it starts.
        if resume_adapter is not None:
            state["eval_start"] = eval_loss(model, eval_set, phase="eval (earlier adapter)", **eval_kw)
            with model.disable_adapter():
                state["eval_before"] = eval_loss(model, eval_set, phase="eval (before)", **eval_kw)
        else:
            state["eval_before"] = eval_loss(model, eval_set, phase="eval (before)", **eval_kw)
        if gen_rows:
            with model.disable_adapter():
                from gristmill.train.evaluate import generate

                state["base_answers"] = generate(model, tokenizer, [r["messages"][:-1] for r in gen_rows],
                                                 phase="generate (base)", **gen_kw)
    trackers = Trackers(out_dir / "logs", params.report_to, params.model_dump(mode="json"))
    model.train()
    lengths = [len(e.input_ids) for e in train_set]
    plan = plan_epoch(lengths, params.batch_size, seed=params.seed, epoch=state["epoch"], by_length=not params.packing)
    say("train", state["step"], total_steps, "")
    while state["step"] < total_steps:
        t0 = time.perf_counter()
        micro = []
        for _ in range(params.grad_accum):
            if state["batch"] >= len(plan):
                state["epoch"], state["batch"] = state["epoch"] + 1, 0
                plan = plan_epoch(lengths, params.batch_size, seed=params.seed, epoch=state["epoch"],
                                  by_length=not params.packing)
            micro.append([train_set[i] for i in plan[state["batch"]]])
            state["batch"] += 1
        batches = [collate(b, pad, params.packing, max_row=max_row, flash_kwargs=varlen,
                           pad_multiple=128 if params.compile else None) for b in micro]
        n_step = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in batches)
        weighted, plain = 0.0, 0.0
        for batch in batches:
            losses, weights = token_losses(model, batch)
            # Σ weight x token loss over the step's labelled tokens / their number (see docs in formatting).
            ((losses * weights).sum() / n_step).backward()
            weighted += float((losses.detach() * weights).sum())
            plain += float(losses.detach().sum())
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        state["step"] += 1
        state["losses"].append(weighted / n_step)
        state["step_tokens"].append(sum(len(e.input_ids) for b in micro for e in b))
        state["step_seconds"].append(time.perf_counter() - t0)
        state["tokens_seen"] += state["step_tokens"][-1]
        state["train_seconds"] += state["step_seconds"][-1]
        trackers.log(start_step + state["step"], {"train/loss": weighted / n_step, "train/token_loss": plain / n_step,
                                     "train/lr": sched.get_last_lr()[0], "train/tokens_seen": state["tokens_seen"]})
        say("train", state["step"], total_steps, f"loss {state['losses'][-1]:.3f}")
        if checkpoint_dir and params.save_steps and state["step"] % params.save_steps == 0 \
                and state["step"] < total_steps:
            save_checkpoint(checkpoint_dir, state["step"], model, opt, sched, state)
    eval_after = eval_loss(model, eval_set, phase="eval (after)", **eval_kw)
    generation, predictions = None, []
    if gen_rows:
        generation, predictions = generation_eval(model, tokenizer, gen_rows, base=state["base_answers"], **gen_kw)
    trackers.log(start_step + state["step"], {"eval/loss": eval_after["loss"], "eval/perplexity": eval_after["perplexity"]})
    trackers.close()
    eval_seconds = state["eval_before"]["seconds"] + eval_after["seconds"] + (generation or {}).get("seconds", 0)

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))  # adapter_model.safetensors + adapter_config.json
    tokenizer.save_pretrained(str(out_dir))
    evaluation = {"rows": len(eval_set), "source": "eval_file" if eval_rows is not None else "held_out",
                  "base": {"loss": state["eval_before"]["loss"], "perplexity": state["eval_before"]["perplexity"]},
                  "adapter": {"loss": eval_after["loss"], "perplexity": eval_after["perplexity"]},
                  "generation": generation}
    if generation:
        for side in ("base", "adapter"):
            evaluation[side] |= generation[side]
    (out_dir / "eval.json").write_text(json.dumps(evaluation, indent=2))
    if predictions:
        import polars as pl

        pl.DataFrame(predictions).write_parquet(out_dir / "eval_predictions.parquet")
    total_seconds = time.perf_counter() - started
    metrics = {
        "base_model": model_path,
        "method": params.method,
        "double_quant": params.double_quant,
        "bf16": bool(getattr(model.config, "gristmill_bf16", False)),
        "packing": params.packing,
        "train_rows": len(train_set),
        "eval_rows": len(eval_set),
        "skipped_rows": stats.rows - stats.kept,
        "encode": stats.as_dict(),
        "overlength_rows": stats.overlength,
        "steps": total_steps,
        "resumed_from_step": resumed_from,
        # Continuous fine-tuning: the earlier adapter's global steps, and this adapter's after training.
        "resume_adapter": str(resume_adapter) if resume_adapter else None,
        "start_step": start_step,
        "global_step": start_step + total_steps,
        "eval_loss_start": state["eval_start"]["loss"] if state.get("eval_start") else None,
        "train_loss_first": state["losses"][0],
        "train_loss_last": state["losses"][-1],
        "loss_curve": state["losses"],
        "eval_loss_before": state["eval_before"]["loss"],
        "eval_loss_after": eval_after["loss"],
        "eval_perplexity_before": state["eval_before"]["perplexity"],
        "eval_perplexity_after": eval_after["perplexity"],
        "tokens_seen": state["tokens_seen"],
        "load_seconds": round(load_seconds, 2),
        "train_seconds": round(state["train_seconds"], 2),
        "eval_seconds": round(eval_seconds, 2),
        "seconds": round(total_seconds, 2),
        "tokens_per_s": round(state["tokens_seen"] / max(state["train_seconds"], 1e-9), 1),
        # Throughput without the first step (one-time kernel and allocator warm-up), for benchmarks.
        "tokens_per_s_after_warmup": round(sum(state["step_tokens"][1:]) / max(sum(state["step_seconds"][1:]), 1e-9),
                                           1) if total_steps > 1 else None,
        "trainable_params": sum(p.numel() for p in trainable),
    }
    (out_dir / "train_metrics.json").write_text(json.dumps(metrics, indent=2))
    write_card(out_dir, metrics, evaluation, card or {})
    return metrics

