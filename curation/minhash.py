"""MinHash near-duplicate detection: vectorized signatures, datasketch LSH, verified clusters.

Signatures follow datasketch's default ``affine32`` scheme exactly (same permutations for a seed, same uint32
arithmetic), so a
signature here equals ``datasketch.MinHash(num_perm, seed, hashfunc=identity)`` fed the same 32-bit shingle hashes;
but they are computed for whole batches with numpy instead of one Python call per shingle. datasketch's
``MinHashLSH`` (its own optimal band/row split for the threshold) finds candidate pairs; each candidate pair is
verified by exact Jaccard of the shingle sets (so precision does not rest on LSH luck), and verified pairs are
joined with union-find. One representative per cluster is kept: the highest ``meta.quality_score`` when an
earlier quality step wrote one, else the first seen.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from curation._frame import add_meta, base_stats, split
from curation.shingles import hashed_shingles

VERSION = "1"
SCHEME = "affine32"
_MAX_HASH = np.uint32((1 << 32) - 1)


class MinhashParams(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    threshold: float = Field(0.8, gt=0, le=1)
    """Jaccard similarity at or above which two rows are near duplicates."""
    num_perm: int = Field(128, ge=16, le=1024)
    """Number of MinHash permutations (signature length); more is more accurate and slower."""
    ngram: int = Field(5, ge=1, le=32)
    """Shingle size in words (or characters when ``unit: char``)."""
    unit: Literal["word", "char"] = "word"
    """Shingle unit: words (default) or characters (CJK, very short texts)."""
    verify: bool = True
    """Check each LSH candidate pair by exact Jaccard before calling it a duplicate."""
    seed: int = 1
    """Permutation seed (datasketch's default is 1)."""
    batch_shingles: int = Field(1 << 16, ge=1024)
    """Shingles hashed per numpy batch; bounds the (shingles x num_perm) working array."""


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters ``(a, b)`` for ``seed`` (taken from datasketch itself)."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme=SCHEME).permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer (datasketch pre-mixes hashes with it). ``fmix32([0]) == [0]``."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def signatures(
    doc: np.ndarray, hashes: np.ndarray, n_docs: int, num_perm: int, seed: int, batch: int = 1 << 16
) -> np.ndarray:
    """MinHash signatures, shape ``(n_docs, num_perm)`` uint32, for 32-bit shingle hashes grouped by ``doc``.

    ``doc`` must be sorted. Rows of documents without shingles stay at 2**32-1 (an empty datasketch MinHash).
    Each row equals ``MinHash(num_perm, seed, hashfunc=lambda x: x)`` after ``update_batch`` with that
    document's hashes: same fmix32 pre-mix, same permutations ``h -> a*h + b mod 2**32``.
    """
    a, b = permutations(num_perm, seed)
    sig = np.full((n_docs, num_perm), _MAX_HASH, dtype=np.uint32)
    for start in range(0, len(hashes), batch):
        h = fmix32(hashes[start : start + batch].astype(np.uint32))[:, None]
        d = doc[start : start + batch]
        with np.errstate(over="ignore"):
            phv = h * a + b
        starts = np.flatnonzero(np.r_[True, d[1:] != d[:-1]])
        mins = np.minimum.reduceat(phv, starts, axis=0)
        docs = d[starts]
        sig[docs] = np.minimum(sig[docs], mins)
    return sig


class UnionFind:
    """Disjoint sets over 0..n-1 whose root is always the smallest-ranked member by ``rank``."""

    def __init__(self, rank: list[float]) -> None:
        self.parent = list(range(len(rank)))
        self.rank = rank

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, x: int, y: int) -> None:
        rx, ry = self.find(x), self.find(y)
        if rx == ry:
            return
        if (self.rank[ry], ry) < (self.rank[rx], rx):
            rx, ry = ry, rx
        self.parent[ry] = rx


def jaccard(x: np.ndarray, y: np.ndarray) -> float:
    """Jaccard of two sorted unique hash arrays. ``jaccard([1,2,3], [2,3,4]) == 0.5``."""
    inter = np.intersect1d(x, y, assume_unique=True).size
    union = x.size + y.size - inter
    return inter / union if union else 1.0


def dedup_minhash(frame: pl.DataFrame, params: MinhashParams) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    from datasketch import LeanMinHash, MinHashLSH

    n = frame.height
    doc, hashes = hashed_shingles(frame["text"], params.ngram, params.unit)
    sig = signatures(doc, hashes, n, params.num_perm, params.seed, params.batch_shingles)
    bounds = np.searchsorted(doc, np.arange(n + 1, dtype=np.uint32))
    sets = [hashes[bounds[i] : bounds[i + 1]] for i in range(n)]

    # Lower rank = preferred representative: best quality first, then first seen.
    meta_fields = {f.name for f in frame.schema["meta"].fields} if "meta" in frame.columns else set()
    if "quality_score" in meta_fields:
        scores = frame["meta"].struct.field("quality_score").fill_null(float("-inf")).to_list()
        rank = [-s for s in scores]
    else:
        rank = [0.0] * n
    uf = UnionFind(rank)

    lsh = MinHashLSH(threshold=params.threshold, num_perm=params.num_perm)
    candidates = verified = 0
    for i in range(n):
        if sets[i].size == 0:
            continue
        mh = LeanMinHash(seed=params.seed, hashvalues=sig[i], scheme=SCHEME)
        for j in lsh.query(mh):
            candidates += 1
            if not params.verify or jaccard(sets[i], sets[j]) >= params.threshold:
                verified += 1
                uf.union(i, j)
        lsh.insert(i, mh, check_duplication=False)

    roots = [uf.find(i) for i in range(n)]
    sizes = np.bincount(roots, minlength=n)
    ids = frame["id"].to_list()
    cluster = [ids[r] if sizes[r] > 1 else None for r in roots]
    dup_of = [ids[r] if r != i else None for i, r in enumerate(roots)]
    out = add_meta(
        frame,
        cluster_id=pl.Series(cluster, dtype=pl.String),
        duplicate_of=pl.Series(dup_of, dtype=pl.String),
    )
    reason = pl.Series(["near_duplicate" if d is not None else None for d in dup_of], dtype=pl.String)
    kept, dropped = split(out, reason)
    stats = base_stats(
        n,
        kept,
        dropped,
        candidate_pairs=candidates,
        verified_pairs=verified,
        clusters=int((sizes > 1).sum()),
        lsh_bands=lsh.b,
        lsh_rows=lsh.r,
    )
    return kept, dropped, stats
