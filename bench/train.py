"""Training throughput: gristmill's trainer vs a plain HF ``Trainer`` + peft, same model, data, LoRA shape, tokens.

Both sides get the same chat rows (real text: Self-Instruct's 175 seed tasks and a GPTeacher role-play slice, in
this repository), the same labels (gristmill's masking, so both learn the same targets), the same NF4 + LoRA
model (r 16, all linear layers), batch size, learning rate, constant schedule, one epoch over the same rows, and
the same eval rows and eval-loss code afterwards. The baseline runs at its best documented configuration for
padded batches: dynamic padding to the longest row of the batch (``DataCollatorForSeq2Seq``) and
``train_sampling_strategy="group_by_length"``; bf16 autocast where ours computes in bf16 (CUDA, CPUs with
native bf16); on CUDA gradient checkpointing and paged AdamW 8-bit like ours.
Each side runs in its own process (peak RSS / peak CUDA memory are that process's), the first optimizer step is
warm-up and not timed, tokens are the real (non-padding) tokens of the timed steps.

    python bench/train.py                       # CPU: SmolLM2-135M (registry name), 128 train rows
    python bench/train.py --random-llama-1b --tokenizer DIR --rows 2048 --batch-size 16   # GPU figure
    ... --compile   # ours with train.compile (regional torch.compile); the baseline also runs a second time with
                    # TrainingArguments(torch_compile=True), and the faster baseline is the one compared
    ... --bf16      # ours with train.bf16 even where it is not gristmill's default

On a CPU where ours computes in bf16 (gristmill's default with native bf16: AVX512-BF16 / AMX) the baseline runs
twice — in fp32 (HF Trainer's CPU default) and with TrainingArguments(bf16=True) — and the faster one is compared.

The baseline always runs bitsandbytes' own 4-bit layers (``dequant_cache`` off) and transformers' sdpa attention;
ours runs with its defaults: on CPU the dequantized-weight cache (``train.dequant_cache``) with fused LoRA layers
over it, and each batch packed into one row with per-example causal attention (``train/fused.py``);
``--no-dequant-cache`` turns the cache (and the fused layers) off for ours.

Each side also reports the base model's eval loss through its own eval batching (``eval_loss_before_*``): in bf16
the batching alone moves it by ~1e-3, so the change from before to after is what compares training quality.

Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load_rows() -> list[dict[str, Any]]:
    """Chat rows from the repository's real instruction data, in a fixed order."""
    rows = []
    for line in (ROOT / "bench/data/selfinstruct_seed_tasks.jsonl").read_text().splitlines():
        task = json.loads(line)
        for k, inst in enumerate(task["instances"]):
            prompt = task["instruction"] + (f"\n\n{inst['input']}" if inst["input"] else "")
            rows.append({"id": f"{task['id']}-{k}", "messages": [
                {"role": "user", "content": prompt}, {"role": "assistant", "content": inst["output"]}]})
    for i, item in enumerate(json.loads((ROOT / "recipes/data/gpteacher_roleplay_slice.json").read_text())):
        prompt = item["instruction"] + (f"\n\n{item['input']}" if item["input"] else "")
        rows.append({"id": f"gpteacher-{i}", "messages": [
            {"role": "user", "content": prompt}, {"role": "assistant", "content": item["response"]
                                                  if "response" in item else item["output"]}]})
    import random

    random.Random(0).shuffle(rows)
    return rows


def peak_memory() -> int:
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def build_random_llama(tokenizer_dir: str, out: Path) -> str:
    """A random-init Llama of ~1.07B parameters (hidden 2048, 16 layers) with a real tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (out / "config.json").exists():
        return str(out)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True,
                         dtype="bfloat16")
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def params_for(args: argparse.Namespace) -> Any:
    """The training settings of ``args.side``: the baseline sides keep bitsandbytes' per-call dequantization and
    run bf16 only as ``baseline-bf16`` (or on CUDA, where bf16 is the default for both)."""
    import torch

    from gristmill.train.params import TrainParams

    side = getattr(args, "side", None) or "ours"
    if side == "ours":
        bf16 = True if args.bf16 else None  # None: gristmill's default for the device
    else:
        bf16 = side == "baseline-bf16" or torch.cuda.is_available()
    cache = (False if args.no_dequant_cache else None) if side == "ours" else False
    return TrainParams(method=args.method, epochs=1, batch_size=args.batch_size, learning_rate=2e-4,
                       max_seq_length=args.max_seq_length, overlength="truncate", eval_generate_rows=0,
                       max_eval_rows=args.eval_rows, save_steps=None, report_to=[], seed=0,
                       compile=args.compile, bf16=bf16, dequant_cache=cache)


def split(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows = load_rows()
    reps = -(-(args.rows + args.eval_rows) // len(rows))  # GPU runs may ask for more rows than exist: repeat
    rows = (rows * reps)[: args.rows + args.eval_rows]
    return rows[args.eval_rows:], rows[: args.eval_rows]


def run_ours(args: argparse.Namespace, model_path: str) -> dict[str, Any]:
    import tempfile

    from gristmill.train.qlora import train_qlora

    train, evals = split(args)
    with tempfile.TemporaryDirectory() as tmp:
        m = train_qlora(train, params_for(args), model_path=model_path, out_dir=Path(tmp), eval_rows=evals)
    return {"tokens_per_s": m["tokens_per_s_after_warmup"], "tokens": m["tokens_seen"], "steps": m["steps"],
            "train_seconds": m["train_seconds"], "eval_loss": m["eval_loss_after"],
            "eval_loss_before": m["eval_loss_before"], "peak_memory": peak_memory()}


def run_baseline(args: argparse.Namespace, model_path: str) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from gristmill.train.evaluate import eval_loss
    from gristmill.train.formatting import encode_rows
    from gristmill.train.model import load_base, use_bf16

    params = params_for(args)
    torch.manual_seed(0)
    on_gpu = torch.cuda.is_available()
    model = load_base(model_path, params)
    if params.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=on_gpu,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=params.lora.r, lora_alpha=params.lora.alpha, lora_dropout=0.0,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    tok = AutoTokenizer.from_pretrained(model_path)
    tok.pad_token = tok.pad_token or tok.eos_token
    train, evals = split(args)
    kw = {"overlength": "truncate"}
    train_ex, _ = encode_rows(tok, train, params.max_seq_length, **kw)
    eval_ex, _ = encode_rows(tok, evals, params.max_seq_length, **kw)
    dataset = [{"input_ids": e.input_ids, "labels": e.labels} for e in train_ex]
    # Compiled, the baseline gets its documented remedy against a recompile per batch width (ours pads to 128 too).
    pad = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100,
                                 pad_to_multiple_of=128 if args.side == "baseline-compiled" else None)
    step_tokens: list[int] = []

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = pad(features)
        step_tokens.append(int(batch["attention_mask"].sum()))
        return batch

    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a: Any, **k: Any) -> None:
            if on_gpu:
                torch.cuda.synchronize()
            marks.append(time.perf_counter())

    targs = TrainingArguments(
        output_dir=str(Path(os.environ.get("TMPDIR", "/tmp")) / "bench-train-baseline"), per_device_train_batch_size=params.batch_size,
        num_train_epochs=1, learning_rate=params.learning_rate, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, train_sampling_strategy="group_by_length", logging_steps=10, save_strategy="no",
        report_to=[], seed=0, remove_unused_columns=False, dataloader_num_workers=0, use_cpu=not on_gpu,
        bf16=use_bf16(params, "cuda" if on_gpu else "cpu"), optim="paged_adamw_8bit" if on_gpu else "adamw_torch",
        gradient_checkpointing=on_gpu, gradient_checkpointing_kwargs={"use_reentrant": False}, disable_tqdm=True,
        torch_compile=args.side == "baseline-compiled")
    trainer = Trainer(model=model, args=targs, train_dataset=dataset, data_collator=collate, callbacks=[Clock()])
    # The base model's eval loss through this side's eval batching: in bf16 the batching alone moves it by ~1e-3,
    # so each side's "before" says how far apart the two eval paths read before any training.
    before = eval_loss(model, eval_ex, pad_id=tok.pad_token_id, packing=False,
                       token_budget=params.batch_size * params.max_seq_length)
    started = time.perf_counter()
    trainer.train()
    seconds = marks[-1] - marks[0]
    timed_tokens = sum(step_tokens[1 : len(marks)])
    after = eval_loss(model, eval_ex, pad_id=tok.pad_token_id, packing=False,
                      token_budget=params.batch_size * params.max_seq_length)
    return {"tokens_per_s": round(timed_tokens / seconds, 1), "tokens": sum(step_tokens), "steps": len(marks),
            "train_seconds": round(time.perf_counter() - started, 2), "eval_loss": after["loss"],
            "eval_loss_before": before["loss"], "peak_memory": peak_memory()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="registry name or HF directory")
    ap.add_argument("--random-llama-1b", action="store_true", help="random-init ~1.07B Llama (GPU figure)")
    ap.add_argument("--tokenizer", help="tokenizer directory for --random-llama-1b")
    ap.add_argument("--method", default="qlora", choices=["qlora", "lora"])
    ap.add_argument("--rows", type=int, default=128, help="training rows (one epoch)")
    ap.add_argument("--eval-rows", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-seq-length", type=int, default=512)
    ap.add_argument("--compile", action="store_true",
                    help="ours with train.compile; the baseline also with TrainingArguments(torch_compile=True)")
    ap.add_argument("--bf16", action="store_true",
                    help="ours with train.bf16 even where it is not the default (a bf16 baseline runs beside)")
    ap.add_argument("--no-dequant-cache", action="store_true", help="ours without train.dequant_cache")
    ap.add_argument("--side-timeout", type=float, default=None, help="seconds allowed per side")
    ap.add_argument("--side", choices=["ours", "baseline", "baseline-compiled", "baseline-bf16"],
                    help=argparse.SUPPRESS)
    ap.add_argument("--model-path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:  # child process: one side, one JSON line
        run = run_ours if args.side == "ours" else run_baseline
        print("RESULT " + json.dumps(run(args, args.model_path)), flush=True)
        return
    if args.random_llama_1b:
        model_path = build_random_llama(args.tokenizer, Path(os.environ.get("TMPDIR", "/tmp")) / "random-llama-1b")
    else:
        from gristmill.models import resolve

        model_path = resolve(args.model)
    results = {}
    import torch

    from gristmill.train.model import use_bf16

    cpu_bf16 = not torch.cuda.is_available() and use_bf16(params_for(args), "cpu")
    extra = [*(["baseline-compiled"] if args.compile else []), *(["baseline-bf16"] if cpu_bf16 else [])]
    for side in ("ours", "baseline", *extra):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--side", side, "--model-path", model_path]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
        try:
            out = subprocess.run(cmd, text=True, capture_output=True, env=env, timeout=args.side_timeout)
        except subprocess.TimeoutExpired:
            print(f"{side} did not finish within --side-timeout {args.side_timeout} s")
            if side in extra:
                continue
            sys.exit(1)
        lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode or not lines:
            if side in extra:  # reported, not fatal: the plain baseline stands
                print(f"{side} failed:\n{out.stderr[-2000:]}")
                continue
            sys.exit(f"{side} failed:\n{out.stderr[-4000:]}")
        results[side] = json.loads(lines[-1][7:])
    import transformers

    ours = results["ours"]
    base_name = max((k for k in results if k != "ours"), key=lambda k: results[k]["tokens_per_s"])
    base = results[base_name]
    print(f"{'side':<28}{'tokens/s':>10}{'tokens':>9}{'steps':>7}{'peak MiB':>10}{'eval loss':>11}")
    names = {"ours": "gristmill (packed)", "baseline": "hf-trainer+peft (padded)",
             "baseline-compiled": "hf-trainer+peft compiled", "baseline-bf16": "hf-trainer+peft bf16"}
    for key, r in results.items():
        name = names[key]
        print(f"{name:<28}{r['tokens_per_s']:>10.1f}{r['tokens']:>9}{r['steps']:>7}"
              f"{r['peak_memory'] / 2**20:>10.0f}{r['eval_loss']:>11.4f}")
    env = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
           "cpus": os.cpu_count(), "torch": torch.__version__, "transformers": transformers.__version__,
           "model": "random-init Llama ~1.07B" if args.random_llama_1b else args.model, "method": args.method,
           "rows": args.rows, "batch_size": args.batch_size, "max_seq_length": args.max_seq_length,
           "compile": args.compile, "bf16": cpu_bf16 or torch.cuda.is_available(), "dequant_cache": not args.no_dequant_cache,
           "train_seconds": {k: v["train_seconds"] for k, v in results.items()},
           "memory_kind": "peak CUDA allocated" if torch.cuda.is_available() else "peak RSS"}
    print(json.dumps({"bench": "train", "metric": "tokens_per_s", "ours": ours["tokens_per_s"],
                      "baseline": "hf-trainer+peft" + {"baseline-compiled": "+torch_compile",
                                                       "baseline-bf16": "+bf16"}.get(base_name, ""),
                      "baseline_value": base["tokens_per_s"],
                      "all_sides": {k: v["tokens_per_s"] for k, v in results.items()},
                      "ratio": round(ours["tokens_per_s"] / base["tokens_per_s"], 3),
                      "memory": {"ours": ours["peak_memory"], "baseline": base["peak_memory"]},
                      "quality": {"eval_loss_ours": round(ours["eval_loss"], 4),
                                  "eval_loss_baseline": round(base["eval_loss"], 4),
                                  "eval_loss_before_ours": round(ours["eval_loss_before"], 4),
                                  "eval_loss_before_baseline": round(base["eval_loss_before"], 4)}, "env": env}))


if __name__ == "__main__":
    main()
