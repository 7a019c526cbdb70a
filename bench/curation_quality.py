"""Drop precision of instruction curation: recall per planted defect kind and the clean false-drop rate.

Runs a recipe (default ``recipes/instruct.yaml``, its own defaults) over its labelled input
(``recipes/data/instruct_eval.jsonl``: real GPTeacher role-play rows, planted defects in column ``defect``, clean
rows with ``defect: ""``) and reads which rows each step dropped, and why. Prints one table per defect kind (and
clean), one per drop reason (defect vs clean rows it removed), the recorded signal medians per kind, and ends
with one JSON line. Targets (issue 9): >= 90% of planted defects removed, <= 5% of clean rows removed.

    .venv/bin/python bench/curation_quality.py [--recipe recipes/instruct.yaml] [--run-dir /tmp/cq]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "instruct.yaml"))
    ap.add_argument("--run-dir", default=None, help="where the run writes (default: a temporary directory)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from gristmill.recipe import load_recipe
    from gristmill.runner import Runner

    recipe = load_recipe(args.recipe)
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="curation_quality_"))
    started = time.perf_counter()
    result = Runner(recipe, run_dir=run_dir).run(train=False)
    seconds = time.perf_counter() - started

    labels: dict[str, str] = {}
    for spec in recipe.inputs:
        path = (Path(recipe.path).parent / spec.path).resolve()
        for n, line in enumerate(path.read_text().splitlines(), 1):
            labels[f"{path.name}:{n}"] = json.loads(line).get("defect", "")
    rejects = pl.read_parquet(run_dir / "rejects.parquet")
    why = {r["id"]: f"{r['step']}:{r['reason']}" for r in rejects.iter_rows(named=True)}
    kinds = sorted({k for k in labels.values() if k}) + [""]
    total, removed, reasons = Counter(), Counter(), defaultdict(Counter)
    for row_id, kind in labels.items():
        total[kind] += 1
        if row_id in why:
            removed[kind] += 1
            reasons[why[row_id]][kind or "clean"] += 1

    print(f"{'kind':<16}{'rows':>6}{'removed':>9}{'share':>8}  by")
    by_kind: dict[str, float] = {}
    for kind in kinds:
        share = removed[kind] / total[kind] if total[kind] else 0.0
        name = kind or "clean"
        if kind:
            by_kind[kind] = round(share, 4)
        by = Counter(why[i].split(":", 1)[1] for i, k in labels.items() if k == kind and i in why)
        print(f"{name:<16}{total[kind]:>6}{removed[kind]:>9}{share:>8.1%}  "
              + ", ".join(f"{r} {n}" for r, n in by.most_common()))
    print(f"\n{'step:reason':<52}{'defect rows':>12}{'clean rows':>11}")
    for reason, counts in sorted(reasons.items()):
        print(f"{reason:<52}{sum(v for k, v in counts.items() if k != 'clean'):>12}{counts['clean']:>11}")

    signal_medians = _signal_medians(result.frame, rejects, labels)
    if signal_medians:
        names = sorted({s for v in signal_medians.values() for s in v})
        print(f"\nsignal medians of rows that reached the signals step\n{'kind':<16}"
              + "".join(f"{n:>15}" for n in names))
        for kind, values in signal_medians.items():
            print(f"{kind:<16}" + "".join(f"{values.get(n, float('nan')):>15.3f}" for n in names))

    planted = sum(total[k] for k in kinds if k)
    recall = sum(removed[k] for k in kinds if k) / planted if planted else 0.0
    clean_drop = removed[""] / total[""] if total[""] else 0.0
    print(f"\ndefect recall {recall:.1%} (target >= 90%), clean false drops {clean_drop:.1%} (target <= 5%), "
          f"{len(labels)} rows in {seconds:.0f}s")
    print(json.dumps({
        "bench": "curation_quality", "metric": "defect_recall", "ours": round(recall, 4), "baseline": None,
        "quality": {"defect_recall": round(recall, 4), "clean_false_drop": round(clean_drop, 4),
                    "by_kind": by_kind, "rows": len(labels), "planted": planted, "clean": total[""]},
        "env": {"recipe": str(Path(args.recipe).resolve().relative_to(ROOT)) if Path(args.recipe).resolve()
                .is_relative_to(ROOT) else args.recipe, "seconds": round(seconds, 1), "cpus": os.cpu_count(),
                "python": platform.python_version()},
    }))


def _signal_medians(kept: pl.DataFrame, rejects: pl.DataFrame, labels: dict[str, str]) -> dict[str, dict[str, float]]:
    """Median of each recorded signal per kind, over kept rows and rows the signals step dropped."""
    names = ("relevance", "response_loss", "ifd", "judge_score")
    rows: list[tuple[str, dict]] = [(r["id"], r["meta"] or {}) for r in kept.iter_rows(named=True)]
    rows += [(r["id"], json.loads(r["meta"]) or {}) for r in rejects.filter(pl.col("step") == "signals")
             .iter_rows(named=True)]
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row_id, meta in rows:
        for n in names:
            if meta.get(n) is not None:
                values[labels.get(row_id, "") or "clean"][n].append(float(meta[n]))
    out: dict[str, dict[str, float]] = {}
    for kind in sorted(values):
        out[kind] = {n: sorted(v)[len(v) // 2] for n, v in values[kind].items()}
    return out


if __name__ == "__main__":
    main()
