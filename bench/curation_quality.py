"""Drop precision of instruction curation: recall per planted defect kind and the clean false-drop rate.

Runs a recipe (default ``recipes/instruct.yaml``, its own defaults) over its labelled input
(``recipes/data/instruct_eval.jsonl``: real GPTeacher role-play rows, planted defects in column ``defect``, clean
rows with ``defect: ""``) and reads which rows each step dropped, and why. Prints one table per defect kind (and
clean), one per drop reason (defect vs clean rows it removed), the recorded signal medians per kind, and ends
with one JSON line. Targets (issue 9): >= 90% of planted defects removed, <= 5% of clean rows removed.

The recipe's thresholds were chosen looking at that input (in-sample). ``--split heldout`` (and ``both``, the
default) also runs the same recipe on a held-out set: other real rows of the same source
(``bench/data/gpteacher_roleplay_heldout.json``), other wordings and cuts of every defect kind and new near-miss
rows (code, tool calls, JSON, math), built by a seeded :func:`build_heldout` into the run directory. The JSON
line's ``quality`` holds the in-sample figures (``heldout`` for the held-out ones, with ``split: heldout``).

    .venv/bin/python bench/curation_quality.py [--recipe recipes/instruct.yaml] [--split both] [--run-dir /tmp/cq]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import polars as pl
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _planting() -> Any:
    """recipes/data/make_instruct_eval.py (the in-sample builder): its defect kinds are the held-out set's too."""
    spec = importlib.util.spec_from_file_location("make_instruct_eval", ROOT / "recipes/data/make_instruct_eval.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


KINDS: tuple[str, ...] = _planting().KINDS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "instruct.yaml"))
    ap.add_argument("--split", choices=["in_sample", "heldout", "both"], default="both",
                    help="in_sample: the recipe's own input; heldout: the held-out set; both (default)")
    ap.add_argument("--seed", type=int, default=7, help="seed of the held-out set's shuffle and defect cuts")
    ap.add_argument("--run-dir", default=None, help="where the runs write (default: a temporary directory)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="curation_quality_"))
    recipe_path = Path(args.recipe).resolve()
    started = time.perf_counter()
    figures: dict[str, dict[str, Any]] = {}
    if args.split in ("in_sample", "both"):
        print("== in-sample: the recipe's own labelled input ==")
        figures["in_sample"] = evaluate(recipe_path, run_dir / "in_sample")
    if args.split in ("heldout", "both"):
        held_dir = run_dir / "heldout"
        held_dir.mkdir(parents=True, exist_ok=True)
        data = held_dir / "heldout_eval.jsonl"
        build_heldout(data, args.seed)
        raw = yaml.safe_load(recipe_path.read_text())
        raw["inputs"] = [{"path": str(data), "mapping": "alpaca"}]
        raw["output"] = {**raw.get("output", {}), "dir": str(held_dir / "out")}
        held_recipe = held_dir / "recipe.yaml"
        held_recipe.write_text(yaml.safe_dump(raw, sort_keys=False))
        print(f"\n== held-out: {data.name} (seed {args.seed}), thresholds never tuned on it ==")
        figures["heldout"] = evaluate(held_recipe, held_dir / "run") | {"split": "heldout", "seed": args.seed}
    seconds = time.perf_counter() - started
    main_split = figures.get("in_sample") or figures["heldout"]
    quality = {k: v for k, v in main_split.items() if k != "seconds"}
    if "in_sample" in figures and "heldout" in figures:
        quality["heldout"] = {k: v for k, v in figures["heldout"].items() if k != "seconds"}
    print(json.dumps({
        "bench": "curation_quality", "metric": "defect_recall", "ours": main_split["defect_recall"],
        "baseline": None, "quality": quality,
        "env": {"recipe": str(recipe_path.relative_to(ROOT)) if recipe_path.is_relative_to(ROOT) else args.recipe,
                "split": args.split, "seconds": round(seconds, 1), "cpus": os.cpu_count(),
                "python": platform.python_version()},
    }))


def evaluate(recipe_file: Path, run_dir: Path) -> dict[str, Any]:
    """Run the recipe in ``run_dir``, print its tables and return its figures (recall, false drops, by kind)."""
    from gristmill.recipe import load_recipe
    from gristmill.runner import Runner

    recipe = load_recipe(recipe_file)
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
    return {"defect_recall": round(recall, 4), "clean_false_drop": round(clean_drop, 4), "by_kind": by_kind,
            "rows": len(labels), "planted": planted, "clean": total[""], "seconds": round(seconds, 1)}


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


# ---- held-out evaluation: rows and defect instances the recipe's thresholds were never looked at with ----

HELDOUT_SOURCE = ROOT / "bench" / "data" / "gpteacher_roleplay_heldout.json"
"""GPTeacher role-play rows 700-1199 (the recipe's slice holds rows 0-699; bench/data/README.md)."""
HELDOUT_PER_KIND = 10
HELDOUT_REFUSALS = [  # new wordings (the in-sample set has its own five)
    "As much as I'd like to, I can't write that for you.",
    "I'm not able to help with this one.",
    "Unfortunately, I cannot create content for this request.",
    "I won't be able to take part in this role-play.",
    "That's not something I can help with, sorry.",
]
HELDOUT_BOILERPLATE = [
    "As an artificial intelligence, I do not have feelings or a body, but here is my attempt. ",
    "As a language model, I cannot truly imagine this, but I can describe it. ",
    "I'm just an AI, so I can't actually experience this, but ",
]
HELDOUT_FOREIGN = [  # the project's own writing, languages the in-sample set does not use
    "Som kapten på det här skeppet har jag sett många stormar. Vi delar maten lika, vi litar på varandra och "
    "vi seglar tillsammans mot nästa trygga hamn, oavsett hur mörk natten blir.",
    "Jako przewodnik po muzeum zapraszam państwa do obejrzenia tego obrazu. Kolory i światło opowiadają o życiu "
    "miasta, którego dziś już nie ma, ale które wciąż do nas przemawia.",
    "Bir kaşif olarak önce haritayı inceler, sonra köy halkıyla konuşurdum. Ardından birkaç günlük erzak "
    "hazırlar ve yol boyunca gördüğüm her şeyi not ederek dikkatle ilerlerdim.",
    "Sebagai seorang ilmuwan, saya percaya bahwa rasa ingin tahu adalah alat terbaik kita. Setiap percobaan "
    "yang gagal mengajarkan sesuatu yang baru kepada kita semua.",
    "Jako detektiv bych nejprve důkladně prohlédl místo činu. Potom bych mluvil se všemi svědky a hledal "
    "drobné detaily, které do sebe nezapadají.",
]
HELDOUT_NEAR_MISSES = [  # clean rows the project wrote for this split: code, tool calls, JSON, math, short answers
    ("Write a SQL query that counts the users who signed up in 2024.", "",
     "```sql\nSELECT COUNT(*) FROM users WHERE signup_date >= '2024-01-01' AND signup_date < '2025-01-01';\n```"),
    ("Write a Python function that reverses a string.", "",
     "def reverse(text: str) -> str:\n    return text[::-1]"),
    ("Show the free memory on this Linux machine.", "", "shell('free -h')"),
    ("Call the weather tool for Berlin.", "",
     '{"name": "get_weather", "arguments": {"city": "Berlin", "unit": "celsius"}}'),
    ("Give the formula for the area of a circle.", "", "The area is $A = \\pi r^2$, where $r$ is the radius."),
    ("What is the derivative of x squared?", "", "$$\\frac{d}{dx} x^2 = 2x$$"),
    ("Return the three largest planets as a JSON list.", "", '["Jupiter", "Saturn", "Uranus"]'),
    ("What is the chemical symbol for gold?", "", "Au"),
    ("Install the requests package with pip.", "", "pip install requests"),
    ("Explain what this regex matches: ^\\d{3}-\\d{4}$", "",
     "It matches a whole string of three digits, a hyphen and four digits, such as `555-1234`."),
]


def _heldout_plant(kind: str, row: dict[str, str], other: dict[str, str], rng: random.Random, i: int) -> str:
    """The held-out instance of defect ``kind`` for ``row`` (other wordings and cuts than the in-sample set's)."""
    out = row["output"]
    sentences = re.split(r"(?<=[.!?])\s", out)
    topic = re.sub(r"\W+", "-", " ".join(row["instruction"].split()[1:4]).lower()).strip("-") or "topic"
    if kind == "truncated":  # cut inside a word, a third to nine tenths of the way
        k = rng.randint(len(out) // 3, len(out) * 9 // 10)
        while k < len(out) - 1 and not (out[k - 1].isalpha() and out[k].isalpha()):
            k += 1
        return out[:k]
    return {
        "empty": lambda: ['""', "''", ""][i % 3],
        "whitespace": lambda: ["\u00a0", "\r\n\r\n", "\t\t", "   \n   "][i % 4],
        "restated": lambda: ["Certainly! ", "Okay, so: ", "The task is: "][i % 3] + row["instruction"],
        "refusal": lambda: HELDOUT_REFUSALS[i % len(HELDOUT_REFUSALS)],
        "ai_boilerplate": lambda: HELDOUT_BOILERPLATE[i % len(HELDOUT_BOILERPLATE)] + out,
        "placeholder": lambda: [f"Hi [Customer Name],\n\n{out}", f"{out}\n\nWarm wishes,\n<your_name>",
                                f"{out}\n\n{{output}}", f"[INSERT RESPONSE HERE]\n{out}",
                                f"<|im_start|>assistant\n{out}"][i % 5],
        "link_only": lambda: [f"Read more: https://www.nationalgeographic.com/{topic}",
                              f"https://www.youtube.com/watch?v=abc{i}xyz", f"(Smith et al., 20{10 + i})",
                              f"Reference: https://arxiv.org/abs/2101.0{i:04d}"][i % 4],
        "wrong_language": lambda: HELDOUT_FOREIGN[i % len(HELDOUT_FOREIGN)],
        "off_topic": lambda: other["output"],
        "repetition": lambda: " ".join(sentences[:2] * 5),
    }[kind]()


def build_heldout(out: Path, seed: int = 7) -> int:
    """Write the held-out labelled set (alpaca rows + ``defect``) to ``out``; returns its row count.

    A seeded shuffle of the held-out rows: ``HELDOUT_PER_KIND`` rows per defect kind get a held-out instance of
    the defect (off-topic answers come from rows used nowhere else), the rest stay clean, plus
    ``HELDOUT_NEAR_MISSES``. The held-out rows are not hand-checked: a real defect among the clean rows counts
    as a false drop, as it would on a user's data.
    """
    rows = json.loads(HELDOUT_SOURCE.read_text())
    rng = random.Random(seed)
    order = list(range(len(rows)))
    rng.shuffle(order)
    planted, start = [], 0
    for kind in KINDS:
        for j in range(HELDOUT_PER_KIND):
            row, other = rows[order[start + j]], rows[order[-1 - j]]  # off_topic borrows from the far end
            planted.append({**row, "output": _heldout_plant(kind, row, other, rng, j), "defect": kind})
        start += HELDOUT_PER_KIND
    clean = [{**rows[i], "defect": ""} for i in order[start:len(order) - HELDOUT_PER_KIND]]  # not the donors
    near = [{"instruction": q, "input": x, "output": a, "defect": ""} for q, x, a in HELDOUT_NEAR_MISSES]
    everything = planted + clean + near
    rng.shuffle(everything)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in everything))
    return len(everything)


if __name__ == "__main__":
    main()
