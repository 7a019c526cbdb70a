"""Generation throughput: gristmill's vLLM engine vs HF transformers ``generate``, same prompts, one run.

Both get the same chat prompts and produce exactly ``--max-tokens`` tokens per prompt (``ignore_eos`` /
``min_new_tokens``), greedy and sampled (temperature 0.8, top-k 50: gristmill's default); throughput is output tokens / wall seconds of generation (model load and
one warm-up batch excluded for both). HF runs left-padded batches of ``--hf-batch`` in bf16 (vLLM's dtype) or ``--hf-dtype float32``.

CPU: the real SmolLM2-135M-Instruct from the registry. GPU machines (no weights can be sent): ``--random-init DIR``
builds a random model from DIR's config + tokenizer (``--arch llama1b`` swaps in a ~1B Llama shape); throughput
does not depend on weight values with fixed output lengths. ``--vllm-args '{"max_num_seqs": 1024}'`` passes
engine options (tuning). Prints a table, then one JSON line.

Run: python bench/synth.py [--prompts 64] [--max-tokens 64] [--skip-hf]
"""

from __future__ import annotations

import argparse
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


def prompts(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"Request {i}: write a detailed, vivid paragraph about {TOPICS[i % len(TOPICS)]}."}]
            for i in range(n)]


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


def run_vllm(model: str, convs: list, max_tokens: int, temperature: float, extra: dict,
             replicas: int) -> dict[float, tuple[float, int]]:
    from synth.engine import SamplingConfig, VLLMEngine
    from synth.replicas import ReplicatedEngine

    util = extra.pop("gpu_memory_utilization", None)
    engine: VLLMEngine | ReplicatedEngine = (
        ReplicatedEngine(model, replicas=replicas, seed=0, gpu_memory_utilization=util or 0.9, extra=extra)
        if replicas > 1 else VLLMEngine(model, seed=0, gpu_memory_utilization=util, extra=extra)
    )
    sampling = SamplingConfig(temperature=temperature, top_p=1.0, max_tokens=max_tokens, ignore_eos=True)
    results = {}
    with engine:
        engine.chat(convs[: 8 * replicas], sampling)  # warm-up (and engine start)
        for temp in (0.0, temperature):
            sampling.temperature, sampling.top_k = temp, (0 if temp == 0 else TOP_K)
            started = time.perf_counter()
            outs = engine.chat(convs, sampling)
            seconds = time.perf_counter() - started
            results[temp] = (sum(o.output_tokens for o in outs) / seconds, sum(o.output_tokens for o in outs))
    return results


def run_hf(model: str, convs: list, max_tokens: int, temperature: float, batch: int,
           dtype: str) -> dict[float, tuple[float, int]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(model, padding_side="left")
    tok.pad_token = tok.pad_token or tok.eos_token
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype)).to(device).eval()
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs]

    def generate(chunk: list[str], temp: float) -> int:
        x = tok(chunk, return_tensors="pt", padding=True).to(device)
        kwargs = {"do_sample": True, "temperature": temp, "top_k": TOP_K} if temp > 0 else {"do_sample": False}
        with torch.inference_mode():
            out = lm.generate(**x, max_new_tokens=max_tokens, min_new_tokens=max_tokens, pad_token_id=tok.pad_token_id,
                              **kwargs)
        return int((out.shape[1] - x["input_ids"].shape[1]) * out.shape[0])

    generate(texts[:2], 0.0)
    results = {}
    for temp in (0.0, temperature):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        total = sum(generate(texts[i : i + batch], temp) for i in range(0, len(texts), batch))
        if device == "cuda":
            torch.cuda.synchronize()
        results[temp] = (total / (time.perf_counter() - started), total)
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--hf-prompts", type=int, help="prompts for HF (default: same as --prompts)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--hf-batch", type=int, default=32)
    ap.add_argument("--hf-dtype", choices=["bfloat16", "float32"], default="bfloat16",
                    help="HF baseline dtype (vLLM runs bf16; float32 is transformers' CPU default)")
    ap.add_argument("--random-init", metavar="CONFIG_DIR")
    ap.add_argument("--arch", choices=["config", "llama1b"], default="config")
    ap.add_argument("--vllm-args", default="{}", help="JSON of extra vllm.LLM arguments")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--replicas", type=int, default=1, help="vLLM engines sharing the GPU (synth/replicas.py)")
    args = ap.parse_args()
    if args.random_init:
        model = random_model(args.random_init, args.arch)
    else:
        from gristmill.models import resolve

        model = resolve("smollm2-135m-instruct")
    convs = prompts(args.prompts)
    extra = json.loads(args.vllm_args)
    vllm_res = run_vllm(model, convs, args.max_tokens, args.temperature, dict(extra), args.replicas)
    hf_res = {} if args.skip_hf else run_hf(model, prompts(args.hf_prompts or args.prompts), args.max_tokens,
                                            args.temperature, args.hf_batch, args.hf_dtype)
    print(f"{args.prompts} prompts x {args.max_tokens} output tokens; model {args.arch if args.random_init else model}"
          f"{' (random init)' if args.random_init else ''}; vLLM args {extra}, replicas {args.replicas}")
    print(f"{'engine':<34}{'greedy tok/s':>14}{'sampled tok/s':>15}")
    print(f"{'gristmill vLLM engine':<34}{vllm_res[0.0][0]:>14,.1f}{vllm_res[args.temperature][0]:>15,.1f}")
    if hf_res:
        print(f"{f'HF generate (batch {args.hf_batch}, {args.hf_dtype})':<34}{hf_res[0.0][0]:>14,.1f}{hf_res[args.temperature][0]:>15,.1f}")
    ratio = vllm_res[0.0][0] / hf_res[0.0][0] if hf_res else None
    print(json.dumps({
        "bench": "synth", "metric": "output_tok_per_s", "ours": round(vllm_res[0.0][0], 1),
        "ours_sampled": round(vllm_res[args.temperature][0], 1), "baseline": f"hf_generate_batch{args.hf_batch}_{args.hf_dtype}",
        "baseline_value": round(hf_res[0.0][0], 1) if hf_res else None,
        "baseline_sampled": round(hf_res[args.temperature][0], 1) if hf_res else None,
        "ratio": round(ratio, 3) if ratio else None,
        "ratio_sampled": round(vllm_res[args.temperature][0] / hf_res[args.temperature][0], 3) if hf_res else None,
        "target_ratio": 5.0, "vllm_args": extra, "replicas": args.replicas, "prompts": args.prompts, "max_tokens": args.max_tokens,
    }))


if __name__ == "__main__":
    main()
