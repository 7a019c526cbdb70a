"""Cost growth of a curation recipe (no synthesis, no training) from 100k to 1M rows, through the real runner.

Corpus (``build_corpus``): rows of real text from this machine — sentences of the installed packages' metadata and
the stdlib (``bench/corpus.py``; any Debian/Python install has them, nothing is downloaded). The machine holds ~8k
real paragraphs, far too few for 1M distinct rows, so rows are real sentences recombined deterministically into
new paragraphs (``recombined_paragraphs``; 400-1,500 characters), then, as real corpora are: 4% exact copies of
earlier rows, 4% near copies (one word replaced), and 0.5% rows that quote an evaluation item (a 13-gram of the
eval set) for decontamination to find. The same seed gives the 100k rows as a prefix of the 300k and 1M corpora.

Recipe (written to a temp dir per size, run by ``gristmill.runner.Runner``): normalize, filter, heuristics
(gopher_repetition + gopher_quality), dedup_exact, dedup_minhash, decontaminate (500 eval items), audit (4 axes,
defaults). Each size runs in its own process. Per step: seconds (the runner's stats: the step alone), CPU seconds
of the process (all threads; less sensitive than wall time to other work on a shared machine) and peak RSS
(VmHWM, reset before the step through /proc/self/clear_refs, read after its checkpoint is written); then the same
for what follows the last step (``write_rejects``, ``export_dataset``, ``index_run``: the run's MinHash sketch
index, ``write_report``), each with the RSS at its start (memory earlier work left allocated: freed memory is not
always returned to the system), and in total: wall seconds of ``Runner.run`` and the process's peak RSS (the
largest of those peaks).

Targets (issue 15): time grows at most 1.2x faster than linear from 100k to 1M rows
(``(t_1M / t_100k) / 10 <= 1.2``), and peak RSS at 1M stays under 4x the input's parquet size.

Run: python bench/scale.py [--rows 100000,300000,1000000] [--workdir DIR (corpora there are reused)]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STEPS = """
steps:
  - normalize: {}
  - filter: {min_words: 20, max_words: 2000, max_symbol_fraction: 0.3}
  - heuristics: {rule_sets: [gopher_repetition, gopher_quality]}
  - dedup_exact: {}
  - dedup_minhash: {threshold: 0.8, num_perm: 128, ngram: 5}
  - decontaminate: {eval_sets: [eval.jsonl], text_fields: [question]}
  - audit: {axes: [gender, race_ethnicity, religion, age]}
"""


def build_corpus(rows: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``rows`` texts (see the module docstring) and 500 eval questions."""
    from bench.corpus import real_sentences, recombined_paragraphs

    sentences = real_sentences()
    rng = random.Random(seed)
    evals = [s for s in rng.sample(sentences, 2000) if len(s.split()) >= 15][:500]
    base = recombined_paragraphs(rows, seed=seed, min_chars=400, max_chars=1500, sentences=sentences)
    out: list[str] = []
    for i, text in enumerate(base):
        roll = rng.random()
        if i > 100 and roll < 0.04:
            out.append(out[rng.randrange(i)])  # exact copy of an earlier row
        elif i > 100 and roll < 0.08:
            words = out[rng.randrange(i)].split()
            words[rng.randrange(len(words))] = f"variant{rng.randrange(1000)}"
            out.append(" ".join(words))  # near copy
        elif roll < 0.085:
            out.append(f"{text} {rng.choice(evals)}")  # quotes an eval item
        else:
            out.append(text)
    return out, evals


def rss_peak() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def rss_now() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measured(name: str, fn, out: dict):  # type: ignore[no-untyped-def]
    """``fn`` with its seconds, CPU seconds, RSS at its start and peak RSS recorded in ``out[name]`` (the runner's
    work after the last step: rejects, export, the run's index, the report)."""

    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        start = rss_now()
        reset_peak()
        began, cpu = time.perf_counter(), time.process_time()
        value = fn(*args, **kwargs)
        out[name] = {"seconds": round(time.perf_counter() - began, 3), "peak_rss": rss_peak(), "rss_start": start,
                     "cpu_s": round(time.process_time() - cpu, 2)}
        return value

    return wrapper


def reset_peak() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM to the current RSS, so each step's peak is its own."""
    Path("/proc/self/clear_refs").write_text("5")


def build(rows: int, workdir: Path) -> None:
    """Write the corpus (input.parquet, eval.jsonl, meta.json) unless it is there. Its own process: the Python
    strings of a 1M-row build would otherwise stay in the measured process's RSS (freed memory is kept by the
    allocator) and inflate every step's peak."""
    import polars as pl

    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "input.parquet"
    if not data.exists():
        texts, evals = build_corpus(rows)
        pl.DataFrame({"id": [f"r{i}" for i in range(rows)], "text": texts}).write_parquet(data)
        (workdir / "eval.jsonl").write_text("".join(json.dumps({"question": q}) + "\n" for q in evals))
    raw = pl.scan_parquet(data).select(pl.col("text").str.len_bytes().sum()).collect().item()
    (workdir / "meta.json").write_text(json.dumps({"rows": rows, "raw_text_bytes": int(raw)}))


def worker(rows: int, workdir: Path, audit_trace: bool = True) -> dict:
    import gristmill.runner
    from gristmill.recipe import load_recipe
    from gristmill.runner import Runner

    data = workdir / "input.parquet"
    raw_bytes = json.loads((workdir / "meta.json").read_text())["raw_text_bytes"]
    run_dir = workdir / "run"
    if run_dir.exists():  # a fresh run every time: no checkpoint may be reused
        import shutil

        shutil.rmtree(run_dir)
    recipe_path = workdir / "scale.yaml"
    recipe_path.write_text(f"name: scale\ninputs:\n  - path: input.parquet\n    mapping: text\n{STEPS}"
                           f"output: {{dir: {workdir / 'run'}, formats: [parquet]}}\n")
    steps: list[dict] = []
    tail: dict[str, dict] = {}

    class MeasuredRunner(Runner):
        """The runner with each stage's peak RSS recorded (the stages and checkpoints run unchanged)."""

        def _ingest(self):  # type: ignore[no-untyped-def]
            start = rss_now()
            reset_peak()
            cpu = time.process_time()
            out = super()._ingest()
            steps.append({"step": "ingest", "seconds": out[1]["seconds"], "peak_rss": rss_peak(), "rss_start": start,
                          "cpu_s": round(time.process_time() - cpu, 2),
                          "rows_in": out[1]["rows_in"], "kept": out[1]["kept"]})
            return out

        def _run_step(self, index, step, rows, prev_fp, progress):  # type: ignore[no-untyped-def]
            start = rss_now()
            reset_peak()
            cpu = time.process_time()
            out = super()._run_step(index, step, rows, prev_fp, progress)
            steps.append({"step": step.name, "seconds": out[1]["seconds"], "peak_rss": rss_peak(),
                          "rss_start": start, "cpu_s": round(time.process_time() - cpu, 2),
                          "rows_in": out[1]["rows_in"], "kept": out[1]["kept"]})
            return out

    if not audit_trace:  # the audit without its drop-rate amplification over earlier steps' rejects
        gristmill.runner._with_trace = lambda step, checkpoints: step
    runner = MeasuredRunner(load_recipe(recipe_path))
    reset_peak()
    baseline_rss = rss_now()
    started, cpu = time.perf_counter(), time.process_time()
    import gristmill.lineage

    for module, name in ((gristmill.runner, "write_rejects"), (gristmill.runner, "export_dataset"),
                         (gristmill.lineage, "index_run"), (gristmill.runner, "write_report")):
        setattr(module, name, measured(name, getattr(module, name), tail))
    result = runner.run(train=False)
    total_s, total_cpu = time.perf_counter() - started, time.process_time() - cpu
    final = result.manifest["rows_final"]
    steps += [{"step": name, "rows_in": final, "kept": final, **tail[name]} for name in tail]
    return {"rows": rows, "parquet_bytes": data.stat().st_size, "rss_before_run": baseline_rss, "total_s": round(total_s, 2),
            "total_cpu_s": round(total_cpu, 2), "raw_text_bytes": raw_bytes, "steps": steps,
            "steps_s": round(sum(s["seconds"] for s in steps), 2),
            "peak_rss": max(s["peak_rss"] for s in steps)}


def env() -> dict[str, object]:
    cpu = platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    out: dict[str, object] = {"cpu": cpu, "cores": os.cpu_count(), "gpu": None, "python": platform.python_version()}
    for pkg in ("polars", "numpy", "numba"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="100000,300000,1000000")
    ap.add_argument("--workdir", help="where corpora and runs go (default: a temp dir, removed after)")
    ap.add_argument("--no-audit-trace", action="store_true", help="audit without exclusion amplification (the "
                    "rejects of earlier steps)")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--build", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build:
        build(args.build, Path(args.workdir))
        return
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, Path(args.workdir), not args.no_audit_trace)), flush=True)
        return
    root = Path(args.workdir or tempfile.mkdtemp(prefix="gristmill-scale-"))
    results = []
    for rows in [int(r) for r in args.rows.split(",")]:
        subprocess.run([sys.executable, __file__, "--build", str(rows), "--workdir", str(root / str(rows))],
                       check=True)
        cmd = [sys.executable, __file__, "--worker", str(rows), "--workdir", str(root / str(rows))]
        proc = subprocess.run(cmd + ["--no-audit-trace"] * args.no_audit_trace, capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            sys.exit(f"{rows} rows failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        results.append(json.loads(line[7:]))
        r = results[-1]
        print(f"{rows:,} rows: {r['total_s']:.1f} s, peak {r['peak_rss'] / 2**20:,.0f} MB, parquet "
              f"{r['parquet_bytes'] / 2**20:,.0f} MB", flush=True)
    names = [s["step"] for s in results[0]["steps"]]
    print(f"\n{'step':<16}" + "".join(f"{r['rows']:>12,} s{'':>3}{'peak MB':>9}{'start MB':>10}" for r in results)
          + f"{'time growth':>13}")
    for i, name in enumerate(names):
        cells = "".join(f"{r['steps'][i]['seconds']:>14.1f}{r['steps'][i]['peak_rss'] / 2**20:>12,.0f}"
                        f"{r['steps'][i].get('rss_start', 0) / 2**20:>10,.0f}" for r in results)
        first, last = results[0], results[-1]
        growth = (last["steps"][i]["seconds"] / max(first["steps"][i]["seconds"], 1e-3)) / (last["rows"] / first["rows"])
        print(f"{name:<16}{cells}{growth:>12.2f}x")
    first, last = results[0], results[-1]
    growth = (last["total_s"] / first["total_s"]) / (last["rows"] / first["rows"])
    memory_ratio = last["peak_rss"] / last["parquet_bytes"]
    cpu_growth = (last["total_cpu_s"] / first["total_cpu_s"]) / (last["rows"] / first["rows"])
    print(f"{'total (run)':<16}" + "".join(f"{r['total_s']:>14.1f}{r['peak_rss'] / 2**20:>12,.0f}{'':>10}"
                                           for r in results)
          + f"{growth:>12.2f}x")
    print(f"time growth {first['rows']:,} -> {last['rows']:,}: {growth:.2f}x linear (target <= 1.2); peak RSS at "
          f"{last['rows']:,}: {memory_ratio:.2f}x the parquet input (target < 4), "
          f"{last['peak_rss'] / last['raw_text_bytes']:.2f}x its raw text; CPU-seconds growth {cpu_growth:.2f}x")
    print(json.dumps({
        "bench": "scale", "metric": "superlinear_time_growth", "ours": round(growth, 3), "baseline": "linear",
        "baseline_value": 1.0, "ratio": round(growth, 3), "target_ratio": 1.2,
        "cpu_seconds_growth": round(cpu_growth, 3),
        "memory": {"peak_rss": last["peak_rss"], "parquet_bytes": last["parquet_bytes"],
                   "raw_text_bytes": last["raw_text_bytes"],
                   "ratio": round(memory_ratio, 2), "target": 4.0},
        "quality": {"rows_final": {str(r["rows"]): r["steps"][-1]["kept"] for r in results}},
        "audit_trace": not args.no_audit_trace, "sizes": results, "env": env(),
    }))


if __name__ == "__main__":
    main()
