"""MinHash near-dedup: gristmill vs rensa (and datasketch on small inputs), same corpus, one run, one process each.

Corpora (``--corpus``): ``plain``, real paragraphs from this machine (bench/corpus.py) plus planted near duplicates
(random word substitutions, deletions, insertions); ``clustered``, real paragraphs plus large clusters of
near-identical copies (boilerplate), grown k-fold by ``--scale k`` (``corpus.clustered_corpus``).

What is measured: each tool turns the texts into *documents that have a near duplicate* (word 5-gram Jaccard >=
threshold). Every timer covers the whole path from the list of texts: shingling/tokenizing, hashing and signatures,
LSH, and the similarity checks. gristmill: the ``dedup_minhash`` step on a polars frame (``id``, ``text``) read
from parquet, as a recipe hands it over (polars tokens, C signatures, LSH buckets streamed band by band, leader
comparisons settled by exact Jaccard, clusters, kept/dropped frames); a row is flagged when
its cluster has another row. Its accepted edges (``edge_precision``) are computed after the measurement. rensa (its documented dedup API): ``RMinHashDeduplicator(threshold, num_perm,
use_lsh=True)`` with its default bands, ``add_pairs`` fed lazily (Python word 5-gram shingles), which keeps a row
unless its estimated Jaccard with an indexed row reaches the threshold, then ``get_duplicate_sets`` for the dropped
rows to flag the rows they duplicate. datasketch (``--datasketch``): ``MinHash.bulk`` + ``MinHashLSH`` queries with
estimated Jaccard >= threshold. Each tool runs in its own subprocess (peak memory = that process's VmHWM:
interpreter, imports, the texts, everything; ``rss_before`` is the same after loading and warm-up), after one
warm-up call on 300 documents (imports; gristmill's C kernels are compiled once per machine into its cache folder,
by a compiler subprocess, and loaded from there). Each side holds the same texts the way its API takes them:
gristmill a polars frame read from parquet, rensa and datasketch a Python list read from JSON. Neither side imports the other's libraries: the parent builds the corpus and scores.

Ground truth is exact: a document is a true positive when some other document's word-5-gram shingle set has exact
Jaccard >= threshold with its own, found by prefix filtering (AllPairs: two sets at Jaccard >= t share a shingle
in their first |s| - ceil(t|s|) + 1 shingles under one global order), so no pair is skipped. gristmill's accepted
edges are also checked exactly (``edge_precision``).

Run: python bench/minhash.py [--corpus plain --docs 20000 | --corpus clustered --scale 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORD = re.compile(r"\w+")
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


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def ground_truth(sets: list[frozenset[str]], threshold: float) -> set[int]:
    """Documents with another document at exact Jaccard >= threshold (prefix filtering; exact, nothing skipped)."""
    groups: dict[frozenset[str], list[int]] = defaultdict(list)
    for i, s in enumerate(sets):
        if s:
            groups[s].append(i)
    flagged = {i for members in groups.values() if len(members) > 1 for i in members}
    distinct = sorted(groups, key=len)
    freq: dict[str, int] = defaultdict(int)
    for s in distinct:
        for sh in s:
            freq[sh] += 1
    index: dict[str, list[int]] = defaultdict(list)
    hit = [False] * len(distinct)
    for k, s in enumerate(distinct):
        ordered = sorted(s, key=lambda sh: (freq[sh], sh))
        prefix = ordered[: len(s) - math.ceil(threshold * len(s) - 1e-9) + 1]
        seen: set[int] = set()
        for sh in prefix:
            for c in index[sh]:
                if c in seen or (hit[c] and hit[k]) or len(distinct[c]) < threshold * len(s) - 1e-9:
                    continue
                seen.add(c)
                if jaccard(s, distinct[c]) >= threshold:
                    hit[c] = hit[k] = True
            index[sh].append(k)
    for k, s in enumerate(distinct):
        if hit[k]:
            flagged.update(groups[s])
    return flagged


def run_gristmill(frame: object, args: argparse.Namespace) -> tuple[set[int], list[tuple[int, int]]]:
    """The dedup_minhash step on a polars frame (``id`` = row position, ``text``), as a recipe runs it; a row is
    flagged when its cluster has another row (``meta.cluster_id`` set)."""
    import polars as pl

    from gristmill.curation.minhash import MinhashParams, dedup_minhash

    result = dedup_minhash(frame, MinhashParams(threshold=args.threshold, num_perm=args.num_perm, ngram=args.ngram))
    rows = pl.concat([result.kept.select("id", "meta"), result.dropped.select("id", "meta")])
    flagged = rows.filter(pl.col("meta").struct.field("cluster_id").is_not_null())["id"].cast(pl.Int64)
    return set(flagged.to_list()), []


def gristmill_edges(frame: object, args: argparse.Namespace) -> list[tuple[int, int]]:
    """The accepted edges behind the step's clusters (for ``edge_precision``; run after the measurement)."""
    from gristmill.curation.minhash import MinhashParams, near_duplicate_edges

    found = near_duplicate_edges(frame["text"], MinhashParams(threshold=args.threshold,  # type: ignore[index]
                                                               num_perm=args.num_perm, ngram=args.ngram))
    return list(zip(found.a.tolist(), found.b.tolist(), strict=True))


def run_rensa(texts: list[str], args: argparse.Namespace) -> tuple[set[int], list[tuple[int, int]]]:
    from rensa import RMinHashDeduplicator

    dedup = RMinHashDeduplicator(threshold=args.threshold, num_perm=args.num_perm, use_lsh=True)
    keep = dedup.add_pairs((str(i), sorted(shingles(t, args.ngram))) for i, t in enumerate(texts))
    dropped = [i for i, k in enumerate(keep) if not k]
    flagged = set(dropped)
    for keys in dedup.get_duplicate_sets(sorted(shingles(texts[i], args.ngram)) for i in dropped):
        flagged.update(int(k) for k in keys)
    return flagged, []


def run_datasketch(texts: list[str], args: argparse.Namespace) -> tuple[set[int], list[tuple[int, int]]]:
    from datasketch import MinHash, MinHashLSH

    mhs = MinHash.bulk([[s.encode("utf-8") for s in shingles(t, args.ngram)] for t in texts], num_perm=args.num_perm)
    lsh = MinHashLSH(threshold=args.threshold, num_perm=args.num_perm)
    flagged: set[int] = set()
    for i, m in enumerate(mhs):
        for j in lsh.query(m):
            if m.jaccard(mhs[j]) >= args.threshold:
                flagged.update((i, j))
        lsh.insert(i, m, check_duplication=False)
    return flagged, []


TOOLS = {"gristmill": run_gristmill, "rensa": run_rensa, "datasketch": run_datasketch}


def peak_rss() -> int:
    """This process's peak resident memory in bytes. VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec,
    so a child would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def side(args: argparse.Namespace) -> None:
    """One tool in this process: warm up, time it, write flags and peak memory to ``--output``.

    gristmill reads the texts as the polars frame a recipe hands its step (parquet: ``id``, ``text``); the others
    get the Python list of strings their APIs take."""
    if args.side == "gristmill":
        import polars as pl

        data: object = pl.read_parquet(Path(args.input).with_suffix(".parquet"))
        warm = data.head(300)  # type: ignore[attr-defined]
    else:
        data = json.loads(Path(args.input).read_text())
        warm = data[:300]  # type: ignore[index]
    fn = TOOLS[args.side]
    fn(warm, args)
    rss_before = peak_rss()
    started = time.perf_counter()
    flagged, edges = fn(data, args)
    seconds = time.perf_counter() - started
    peak = peak_rss()
    if args.side == "gristmill":
        edges = gristmill_edges(data, args)
    kernel = None
    if args.side == "gristmill":
        from gristmill.curation import minhash_kernel

        kernel = minhash_kernel.backend()
    Path(args.output).write_text(json.dumps({"seconds": seconds, "flagged": sorted(flagged), "edges": edges,
                                             "peak_rss": peak, "rss_before": rss_before, "kernel": kernel}))


def score(found: set[int], truth: set[int]) -> dict[str, float]:
    tp = len(found & truth)
    p = tp / len(found) if found else 1.0
    r = tp / len(truth) if truth else 1.0
    return {"precision": round(p, 5), "recall": round(r, 5), "f1": round(2 * p * r / (p + r) if p + r else 0, 5)}


def environment() -> dict[str, object]:
    cpu = platform.processor()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    versions = {}
    for pkg in ("numpy", "polars", "numba", "rensa", "datasketch"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), **versions}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", choices=["plain", "clustered"], default="plain")
    ap.add_argument("--docs", type=int, default=20000, help="plain: real paragraphs before planting")
    ap.add_argument("--scale", type=int, default=1, help="clustered: copies of every document (1, 3, 10)")
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--ngram", type=int, default=5)
    ap.add_argument("--datasketch", action=argparse.BooleanOptionalAction, default=None,
                    help="also run datasketch (default: only under 30k documents; it is slow)")
    ap.add_argument("--side", choices=list(TOOLS), help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        side(args)
        return
    from bench.corpus import clustered_corpus, real_paragraphs

    if args.corpus == "plain":
        texts = plant(real_paragraphs(args.docs), fraction=0.2, seed=1)
        what = f"{args.docs} real paragraphs + planted edits"
    else:
        texts = clustered_corpus(args.scale)
        what = f"clustered corpus x{args.scale}: real paragraphs + boilerplate clusters"
    sets = [frozenset(shingles(t, args.ngram)) for t in texts]
    truth = ground_truth(sets, args.threshold)
    print(f"corpus: {len(texts)} docs ({what}), {len(truth)} docs with a near duplicate at Jaccard >= "
          f"{args.threshold} (exact)")
    tools = ["gristmill", "rensa"] + (["datasketch"] if (args.datasketch or (args.datasketch is None
                                                                                 and len(texts) < 30000)) else [])
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "texts.json"
        data.write_text(json.dumps(texts))
        import polars as pl

        pl.DataFrame({"id": [str(i) for i in range(len(texts))], "text": texts}).write_parquet(
            data.with_suffix(".parquet"))
        for name in tools:
            out = Path(tmp) / f"{name}.json"
            subprocess.run([sys.executable, __file__, "--side", name, "--input", str(data), "--output", str(out),
                            "--threshold", str(args.threshold), "--num-perm", str(args.num_perm),
                            "--ngram", str(args.ngram)], check=True)
            res = json.loads(out.read_text())
            results[name] = {"docs_per_s": round(len(texts) / res["seconds"], 1), "seconds": round(res["seconds"], 2),
                             **score(set(res["flagged"]), truth), "peak_rss": res["peak_rss"],
                             "rss_before": res["rss_before"], "kernel": res["kernel"]}
            if res["edges"]:
                ok = sum(jaccard(sets[a], sets[b]) >= args.threshold for a, b in res["edges"])
                results[name]["edge_precision"] = round(ok / len(res["edges"]), 5)
    print(f"{'tool':<12}{'docs/s':>10}{'seconds':>9}{'precision':>11}{'recall':>9}{'F1':>9}{'peak MB':>9}"
          f"{'before MB':>10}")
    for name, r in results.items():
        print(f"{name:<12}{r['docs_per_s']:>10,.0f}{r['seconds']:>9.2f}{r['precision']:>11.4f}{r['recall']:>9.4f}"
              f"{r['f1']:>9.4f}{r['peak_rss'] / 2**20:>9.0f}{r['rss_before'] / 2**20:>10.0f}")
    ours, base = results["gristmill"], results["rensa"]
    print(json.dumps({
        "bench": "minhash", "corpus": args.corpus, "docs": len(texts), "scale": args.scale,
        "metric": "docs_per_s", "ours": ours["docs_per_s"], "baseline": "rensa",
        "baseline_value": base["docs_per_s"], "ratio": round(ours["docs_per_s"] / base["docs_per_s"], 3),
        "quality": {"precision": ours["precision"], "recall": ours["recall"], "f1": ours["f1"],
                    "edge_precision": ours.get("edge_precision"), "baseline_precision": base["precision"],
                    "baseline_recall": base["recall"], "baseline_f1": base["f1"]},
        "memory": {"ours": ours["peak_rss"], "baseline": base["peak_rss"], "ours_before": ours["rss_before"],
                   "baseline_before": base["rss_before"]},
        "kernel": ours["kernel"],
        "others": {k: v["docs_per_s"] for k, v in results.items() if k not in ("gristmill", "rensa")},
        "env": environment(), "target_ratio": 1.0,
    }))


if __name__ == "__main__":
    main()
