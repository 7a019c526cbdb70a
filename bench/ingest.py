"""Ingest + normalize: gristmill's columnar path vs the row-wise path of commit e359f62, same files, one process.

Data: ``--rows`` alpaca records (200k by default) built from real paragraphs of this machine (bench/corpus.py):
instruction = the first words of one paragraph, input = another paragraph for every other row (else empty),
output = a third; written once as parquet and as jsonl into a temporary folder.

What is measured: the wall time of ``ingest(InputSpec(path), path)`` followed by ``normalize`` (NFKC, control
characters, whitespace) on its rows, best of ``--repeats``, as rows per second. Baseline ``rowwise-e359f62``:
``gristmill/ingest.py``, ``gristmill/mappings.py``, ``curation/normalize.py`` and ``curation/_frame.py`` exactly
as commit e359f62 has them (``git show``, written to a temporary package; only their imports are renamed): each
record becomes a Python dict, is mapped by a Python function and the frame is rebuilt from the dicts; normalize
runs ``map_elements`` per string. Both paths get one warm-up on 1,000 rows first. ``identical_rows``: the two
paths' kept frames are equal (schema and values) for every format.

Run: python bench/ingest.py [--rows 200000 --repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
BASELINE_COMMIT = "e359f62"
# file in the commit -> module in the temporary package, and the imports that must point into that package.
_BASELINE_FILES = {"gristmill/mappings.py": "mappings", "curation/_frame.py": "_frame",
                   "gristmill/ingest.py": "ingest", "curation/normalize.py": "normalize"}
_RENAMES = {"from gristmill.mappings import": "from {pkg}.mappings import",
            "from curation._frame import": "from {pkg}._frame import"}

Run = Callable[[Path], pl.DataFrame]


def make_rows(n: int, seed: int = 0) -> pl.DataFrame:
    """``n`` alpaca rows of real text (see the module documentation)."""
    sys.path.insert(0, str(ROOT))
    from bench.corpus import real_paragraphs

    pool = real_paragraphs(None, seed=seed)
    rng = random.Random(seed)
    rows = {"instruction": [], "input": [], "output": []}
    for i in range(n):
        rows["instruction"].append(" ".join(rng.choice(pool).split()[:12]) + "?")
        rows["input"].append(rng.choice(pool) if i % 2 else "")
        rows["output"].append(rng.choice(pool))
    return pl.DataFrame(rows)


def baseline_package(tmp: Path) -> str:
    """Write commit e359f62's row-wise ingest and normalize into a package under ``tmp``; returns its name."""
    pkg = "rowwise_e359f62"
    (tmp / pkg).mkdir()
    (tmp / pkg / "__init__.py").write_text("")
    for src, name in _BASELINE_FILES.items():
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{BASELINE_COMMIT}:{src}"], check=True,
                              capture_output=True, text=True).stdout
        for old, new in _RENAMES.items():
            text = text.replace(old, new.format(pkg=pkg))
        (tmp / pkg / f"{name}.py").write_text(text)
    sys.path.insert(0, str(tmp))
    return pkg


def _runner(ingest_mod: ModuleType, normalize_mod: ModuleType) -> Run:
    def run(path: Path) -> pl.DataFrame:
        frame, _ = ingest_mod.ingest(ingest_mod.InputSpec(path=str(path)), path)
        kept, _, _ = normalize_mod.normalize(frame, normalize_mod.NormalizeParams())
        return kept

    return run


def best_of(run: Run, path: Path, repeats: int) -> tuple[float, pl.DataFrame]:
    best, out = float("inf"), pl.DataFrame()
    for _ in range(repeats):
        started = time.perf_counter()
        out = run(path)
        best = min(best, time.perf_counter() - started)
    return best, out


def env() -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "polars": pl.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        pkg = baseline_package(tmp)
        paths: dict[str, Path] = {}
        rows = make_rows(args.rows)
        for fmt in ("parquet", "jsonl"):
            paths[fmt] = tmp / f"alpaca.{fmt}"
            rows.write_parquet(paths[fmt]) if fmt == "parquet" else rows.write_ndjson(paths[fmt])
        warm = tmp / "warm.parquet"
        rows.head(1000).write_parquet(warm)

        from gristmill import ingest
        from gristmill.curation import normalize

        runs = {"gristmill (columnar)": _runner(ingest, normalize),
                f"row-wise ingest ({BASELINE_COMMIT})": _runner(importlib.import_module(f"{pkg}.ingest"),
                                                                 importlib.import_module(f"{pkg}.normalize"))}
        for run in runs.values():
            run(warm)
        results: dict[str, dict[str, float]] = {}
        identical = True
        print(f"| format | path | seconds (best of {args.repeats}) | rows/s |\n|---|---|---:|---:|")
        for fmt, path in paths.items():
            frames = []
            for name, run in runs.items():
                seconds, kept = best_of(run, path, args.repeats)
                frames.append(kept)
                results.setdefault(fmt, {})[name] = args.rows / seconds
                print(f"| {fmt} | {name} | {seconds:.2f} | {args.rows / seconds:,.0f} |")
            identical &= frames[0].equals(frames[1]) and frames[0].schema == frames[1].schema

    ours_name, base_name = list(runs)
    per_format = {fmt: {"ours": round(r[ours_name]), "baseline_value": round(r[base_name]),
                        "ratio": round(r[ours_name] / r[base_name], 2)} for fmt, r in results.items()}
    head = per_format["parquet"]
    print(json.dumps({"bench": "ingest", "metric": "rows_per_s", "ours": head["ours"],
                      "baseline": f"rowwise-{BASELINE_COMMIT}", "baseline_value": head["baseline_value"],
                      "ratio": head["ratio"], "quality": {"identical_rows": identical}, "env": env(),
                      "rows": args.rows, "formats": per_format}))


if __name__ == "__main__":
    main()
