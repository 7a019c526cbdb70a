"""Detection speed: gristmill's audit detector vs flashtext's KeywordProcessor, same texts, same keywords.

Fair comparison: flashtext gets every literal form of the lexicon's plain terms (base, plural -s, 's; hyphen and
space variants); gristmill runs a lexicon of exactly those plain terms, and the per-row groups of both must be
identical. The full detector (context rules, exclusions) is timed too. Quality (FP rate per axis on the neutral
corpus, recall per axis) comes from tests/test_audit_detection.py's measure().

Run from the repository root: .venv/bin/python bench/audit.py [--rows 100000] [--holistic PATH]
Last line: JSON (DESIGN.md "Benchmarks").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).parents[1]))
from gristmill.audit.lexicon import lexicon_or_builtin  # noqa: E402
from gristmill.common.lexicon import detect  # noqa: E402
from tests.test_audit_detection import _rows, measure  # noqa: E402


def plain_lexicon() -> dict[str, dict[str, list[str]]]:
    """The built-in lexicon's literal terms (no classes, wildcards, raw regexes or case rules), one word form each."""
    lex = lexicon_or_builtin(None)
    out: dict[str, dict[str, list[str]]] = {}
    for axis, groups in lex.items():
        out[axis] = {g: [t for t in terms if not any(c in t for c in "{*!") and not t.startswith("re:")
                         and t.replace(" ", "").replace("-", "").replace("'", "").isalpha()]
                     for g, terms in groups.items()}
    return out


def forms(term: str) -> list[str]:
    """The strings the detector's term matches, as flashtext keywords (separators: space, hyphen, nothing)."""
    words = term.replace("-", " ").split()
    joins = {" ".join(words), "-".join(words), "".join(words)}
    return sorted({j + s for j in joins for s in ("", "s", "es", "'s", "s'", "es'", "'")})


def flashtext_detect(texts: list[str], plain: dict[str, dict[str, list[str]]]) -> dict[str, list[list[str]]]:
    from flashtext import KeywordProcessor

    out = {}
    for axis, groups in plain.items():
        kp = KeywordProcessor(case_sensitive=False)
        for g, terms in groups.items():
            for t in terms:
                for f in forms(t):
                    kp.add_keyword(f, g)
        out[axis] = [sorted(set(kp.extract_keywords(t))) for t in texts]
    return out


def corpus(n: int, seed: int = 0) -> list[str]:
    neutral = [r[0] for r in _rows("audit_neutral.txt")]
    people = [r[2] for r in _rows("audit_recall.tsv")]
    rng = random.Random(seed)
    return [" ".join(rng.choice(neutral if rng.random() < 0.8 else people) for _ in range(3)) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--holistic", help="HolisticBias descriptors.json: report lexicon coverage per axis")
    args = ap.parse_args()
    compile_s = compile_seconds()
    texts = corpus(args.rows)
    plain = plain_lexicon()
    series = pl.Series(texts)
    detect(series.head(10), plain, list(plain))  # compile once, like a run does
    t = time.perf_counter()
    ours = detect(series, plain, list(plain))
    ours_s = time.perf_counter() - t
    t = time.perf_counter()
    theirs = flashtext_detect(texts, plain)
    theirs_s = time.perf_counter() - t
    mismatches = sum(ours[a][i].to_list() != theirs[a][i] for a in plain for i in range(len(texts)))
    full = lexicon_or_builtin(None)
    detect(series.head(10), full, list(full))
    t = time.perf_counter()
    detect(series, full, list(full))
    full_s = time.perf_counter() - t
    fp, recall = measure()
    quality = {"fp_rate_max": max(fp.values()), "fp_rate": fp, "recall_mean": round(sum(recall.values()) / len(recall), 4),
               "recall_min": min(recall.values()), "recall": recall, "row_mismatches_vs_flashtext": mismatches}
    if args.holistic:
        quality["holistic_coverage"] = coverage(Path(args.holistic))
    print(f"{'detector':<34}{'rows':>9}{'seconds':>10}{'rows/s':>12}")
    for name, s in [("gristmill (plain terms)", ours_s), ("flashtext (same keywords)", theirs_s),
                    ("gristmill (full lexicon, rules)", full_s)]:
        print(f"{name:<34}{len(texts):>9}{s:>10.2f}{len(texts) / s:>12,.0f}")
    print(f"identical per-row groups: {mismatches == 0} ({mismatches} row/axis mismatches)")
    print(f"lexicon load + compile + first detection (full lexicon, fresh cache): {compile_s:.3f} s")
    print(json.dumps({"bench": "audit", "metric": "rows_per_s", "ours": round(len(texts) / ours_s, 1),
                      "baseline": "flashtext", "baseline_value": round(len(texts) / theirs_s, 1),
                      "ratio": round(theirs_s / ours_s, 3), "ours_full_lexicon": round(len(texts) / full_s, 1),
                      "compile_s": round(compile_s, 3),
                      "quality": quality, "env": {"python": platform.python_version(), "polars": pl.__version__,
                                                  "cpus": os.cpu_count(), "rows": len(texts)}}))


def compile_seconds() -> float:
    """What a process pays before its first detection: load the built-in lexicon, compile its matchers and detect
    one short row per axis (the in-process cache cleared first, so nothing compiled earlier counts)."""
    from gristmill.common import lexicon as lexicon_mod

    lexicon_mod._matcher.cache_clear()
    t = time.perf_counter()
    full = lexicon_or_builtin(None)
    detect(pl.Series(["A black woman and an old man from Peru, a Christian, met a gay teacher."]), full, list(full))
    return time.perf_counter() - t


HB_AXES = {"ability": "disability", "age": "age", "body_type": "physical_appearance", "gender_and_sex": "gender",
           "nationality": "nationality", "race_ethnicity": "race_ethnicity", "religion": "religion",
           "sexual_orientation": "sexual_orientation", "socioeconomic_class": "socioeconomic"}


def coverage(path: Path) -> dict[str, float]:
    """Share of HolisticBias descriptors per axis that the lexicon matches in "I'm a {descriptor} person." and
    "{descriptor} people" (either counts)."""
    data = json.loads(path.read_text())
    lex = lexicon_or_builtin(None)
    out = {}
    for hb_axis, axis in HB_AXES.items():
        descs = []
        for items in data.get(hb_axis, {}).values():
            for d in items:
                descs.append(d if isinstance(d, str) else d.get("descriptor", ""))
        if not descs:
            continue
        texts = [f"I'm a {d} person. {d} people" for d in descs]
        hits = detect(pl.Series(texts), lex, [axis])[axis]
        out[axis] = round(float((hits.list.len() > 0).mean()), 4)
    return out


if __name__ == "__main__":
    main()
