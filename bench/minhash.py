"""MinHash near-dedup: gristmill vs datasketch (per-shingle updates, MinHash.bulk) vs rensa, same corpus, one run.

Corpus: real paragraphs from this machine (bench/corpus.py) plus planted near duplicates (random word
substitutions, deletions and insertions). Ground truth: every pair whose word-5-gram shingle sets have exact
Jaccard >= threshold, found through an inverted index over shingles (a pair at >= 0.8 shares most shingles, so
it always shares one that occurs in <= 200 documents) and checked exactly. Each tool turns texts into duplicate
pairs at the threshold (baselines: LSH candidates whose estimated Jaccard >= threshold; gristmill: verified pairs);
docs/s covers that whole path, after one warm-up call per tool on 300 docs (imports, numba's compiled-code cache).
Prints a table, then one JSON line.

Run: python bench/minhash.py [--docs 20000]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402

from bench.corpus import real_paragraphs  # noqa: E402

WORD = re.compile(r"\w+")
RENSA_BANDS = 16  # rensa needs bands dividing num_perm; 16 x 8 is its documented setting for 128 permutations
FILLER = ["data", "model", "value", "system", "project", "simple", "python", "result", "layer", "option"]


def shingles(text: str, n: int) -> set[str]:
    toks = WORD.findall(text.lower())
    if len(toks) < n:
        return {" ".join(toks)} if toks else set()
    return {" ".join(toks[i : i + n]) for i in range(len(toks) - n + 1)}


def plant(docs: list[str], fraction: float, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = list(docs)
    for src in rng.sample(docs, int(len(docs) * fraction)):
        for _ in range(rng.choice([1, 1, 2])):
            words = src.split()
            for _ in range(rng.randint(0, max(1, len(words) // 25))):
                i = rng.randrange(len(words))
                op = rng.random()
                if op < 0.5:
                    words[i] = rng.choice(FILLER)
                elif op < 0.75 and len(words) > 5:
                    del words[i]
                else:
                    words.insert(i, rng.choice(FILLER))
            out.append(" ".join(words))
    rng.shuffle(out)
    return out


def ground_truth(sets: list[set[str]], threshold: float, max_df: int = 200) -> set[tuple[int, int]]:
    index: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(sets):
        for sh in s:
            index[sh].append(i)
    cands: set[tuple[int, int]] = set()
    for docs in index.values():
        if 1 < len(docs) <= max_df:
            cands.update((a, b) for k, a in enumerate(docs) for b in docs[k + 1 :])
    return {(a, b) for a, b in cands if len(sets[a] & sets[b]) / len(sets[a] | sets[b]) >= threshold}


def run_gristmill(texts: list[str], threshold: float, num_perm: int, ngram: int) -> set[tuple[int, int]]:
    from gristmill.curation.minhash import MinhashParams, near_duplicate_pairs

    found = near_duplicate_pairs(pl.Series(texts), MinhashParams(threshold=threshold, num_perm=num_perm, ngram=ngram))
    pairs = found.pairs
    return set(zip(pairs["a"].to_list(), pairs["b"].to_list(), strict=True))


def _datasketch_pairs(mhs: list, threshold: float, num_perm: int) -> set[tuple[int, int]]:
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    pairs = set()
    for i, m in enumerate(mhs):
        for j in lsh.query(m):
            if m.jaccard(mhs[j]) >= threshold:
                pairs.add((j, i))
        lsh.insert(i, m, check_duplication=False)
    return pairs


def run_datasketch_update(texts: list[str], threshold: float, num_perm: int, ngram: int) -> set[tuple[int, int]]:
    from datasketch import MinHash

    mhs = []
    for t in texts:
        m = MinHash(num_perm=num_perm)
        for sh in shingles(t, ngram):
            m.update(sh.encode("utf-8"))
        mhs.append(m)
    return _datasketch_pairs(mhs, threshold, num_perm)


def run_datasketch_bulk(texts: list[str], threshold: float, num_perm: int, ngram: int) -> set[tuple[int, int]]:
    from datasketch import MinHash

    mhs = MinHash.bulk([[s.encode("utf-8") for s in shingles(t, ngram)] for t in texts], num_perm=num_perm)
    return _datasketch_pairs(mhs, threshold, num_perm)


def run_rensa(texts: list[str], threshold: float, num_perm: int, ngram: int) -> set[tuple[int, int]]:
    from rensa import RMinHash, RMinHashLSH

    mhs = RMinHash.from_token_sets([sorted(shingles(t, ngram)) for t in texts], num_perm, 42)
    lsh = RMinHashLSH(threshold, num_perm, RENSA_BANDS)
    pairs = set()
    for i, m in enumerate(mhs):
        for j in lsh.query(m):
            if m.jaccard(mhs[j]) >= threshold:
                pairs.add((min(i, j), max(i, j)))
        lsh.insert(i, m)
    return pairs


def score(found: set[tuple[int, int]], truth: set[tuple[int, int]]) -> dict[str, float]:
    tp = len(found & truth)
    p = tp / len(found) if found else 1.0
    r = tp / len(truth) if truth else 1.0
    return {"precision": round(p, 5), "recall": round(r, 5), "f1": round(2 * p * r / (p + r) if p + r else 0, 5)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=20000, help="real paragraphs before planting")
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--ngram", type=int, default=5)
    args = ap.parse_args()
    texts = plant(real_paragraphs(args.docs), fraction=0.2, seed=1)
    truth = ground_truth([shingles(t, args.ngram) for t in texts], args.threshold)
    print(f"corpus: {len(texts)} docs ({args.docs} real paragraphs + planted edits), {len(truth)} true pairs at "
          f"Jaccard >= {args.threshold}")
    tools = {
        "gristmill": run_gristmill,
        "rensa": run_rensa,
        "datasketch MinHash.bulk": run_datasketch_bulk,
        "datasketch update/shingle": run_datasketch_update,
    }
    results = {}
    for name, fn in tools.items():
        fn(texts[:300], args.threshold, args.num_perm, args.ngram)  # warm-up: imports, JIT/disk caches
        started = time.perf_counter()
        found = fn(texts, args.threshold, args.num_perm, args.ngram)
        seconds = time.perf_counter() - started
        results[name] = {"docs_per_s": round(len(texts) / seconds, 1), "seconds": round(seconds, 2),
                         **score(found, truth)}
    print(f"{'tool':<28}{'docs/s':>10}{'seconds':>9}{'precision':>11}{'recall':>9}{'F1':>9}")
    for name, r in results.items():
        print(f"{name:<28}{r['docs_per_s']:>10,.0f}{r['seconds']:>9.2f}{r['precision']:>11.4f}{r['recall']:>9.4f}"
              f"{r['f1']:>9.4f}")
    ours, base = results["gristmill"], results["rensa"]
    print(json.dumps({
        "bench": "minhash", "metric": "docs_per_s", "ours": ours["docs_per_s"], "baseline": "rensa",
        "baseline_value": base["docs_per_s"], "ratio": round(ours["docs_per_s"] / base["docs_per_s"], 3),
        "quality": {"f1": ours["f1"], "precision": ours["precision"], "recall": ours["recall"],
                    "baseline_f1": base["f1"]},
        "others": {k: v["docs_per_s"] for k, v in results.items() if k not in ("gristmill", "rensa")},
        "target_ratio": 1.0,
    }))


if __name__ == "__main__":
    main()
