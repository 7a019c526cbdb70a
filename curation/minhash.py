"""MinHash near-duplicate detection: vectorized signatures and LSH, verified clusters.

Signatures follow datasketch's default ``affine32`` scheme exactly (same permutations for a seed, same uint32
arithmetic), so a
signature here equals ``datasketch.MinHash(num_perm, seed, hashfunc=identity)`` fed the same 32-bit shingle hashes;
but they are computed for whole batches with numpy instead of one Python call per shingle. Banding finds the same
candidates as datasketch's ``MinHashLSH`` with the same (bands, rows) (``curation.lsh``), vectorized; each candidate pair is verified by exact Jaccard of the shingle sets (so precision
does not rest on LSH luck), and verified pairs form clusters (connected components). One representative per
cluster is kept: the highest ``meta.quality_score`` when an earlier quality step wrote one, else the first seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from gristmill.curation import minhash_kernel
from gristmill.curation._frame import add_meta, base_stats, split
from gristmill.curation.clusters import clusters, preference_rank
from gristmill.curation.lsh import band_keys, candidate_pairs, exact_jaccard, optimal_bands
from gristmill.curation.shingles import hashed_shingles, token_hashes

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
    min_recall: float = Field(0.995, gt=0, lt=1)
    """With ``verify``: choose LSH bands so a pair at the threshold is found with at least this probability
    (verification removes the extra candidates); without it datasketch's balanced choice is used."""
    seed: int = 1
    """Permutation seed (datasketch's default is 1)."""
    batch_shingles: int = Field(1 << 16, ge=1024)
    """Shingles hashed per numpy batch; bounds the (shingles x num_perm) working array."""
    against: list[str] = Field(default_factory=list, json_schema_extra={"path": True})
    """Earlier curated sets to deduplicate against: parquet files with ``id`` and ``text`` (e.g. an earlier run's
    ``dataset/data.parquet``). New rows that near-duplicate them are dropped (``near_duplicate_of_earlier``)."""
    batch_docs: int = Field(50_000, ge=1)
    """Documents shingled at a time; only signatures (num_perm x 4 bytes per row) outlive a batch."""


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


@dataclass
class NearDuplicates:
    pairs: pl.DataFrame
    """``(a, b, jaccard)``: row positions with ``a < b``; ``jaccard`` is exact when verified, else null."""
    candidates: int
    """LSH candidate pairs before verification."""
    bands: int
    rows: int


def near_duplicate_pairs(texts: pl.Series, params: MinhashParams) -> NearDuplicates:
    """Pairs of rows judged near duplicates. Memory: ``batch_docs`` shingle sets plus one signature per row."""
    n = len(texts)
    texts = texts.fill_null("")
    b, r = optimal_bands(params.threshold, params.num_perm, params.min_recall if params.verify else None)
    keys = np.zeros((n, b), dtype=np.uint64)
    has_shingles = np.zeros(n, dtype=bool)
    for start in range(0, n, params.batch_docs):
        chunk = texts.slice(start, params.batch_docs)
        offsets, tok = token_hashes(chunk, params.unit)
        if minhash_kernel.available():
            a, bb = permutations(params.num_perm, params.seed)
            sig = minhash_kernel.signatures_from_tokens(offsets, tok, params.ngram, a, bb)
        else:
            doc, hashes = hashed_shingles(chunk, params.ngram, params.unit)
            sig = signatures(doc, hashes, len(chunk), params.num_perm, params.seed, params.batch_shingles)
        keys[start : start + len(chunk)] = band_keys(sig, b, r)
        has_shingles[start : start + len(chunk)] = np.diff(offsets) > 0
    live = np.flatnonzero(has_shingles)  # empty texts share the all-max signature: keep them out of LSH
    cand = candidate_pairs(keys[live], live)
    if params.verify:
        pairs = exact_jaccard(cand, texts, params.ngram, params.unit).filter(pl.col("jaccard") >= params.threshold)
    else:
        pairs = cand.with_columns(pl.lit(None, dtype=pl.Float64).alias("jaccard"))
    return NearDuplicates(pairs, cand.height, b, r)


def dedup_minhash(
    frame: pl.DataFrame, params: MinhashParams, *, earlier: pl.DataFrame | None = None
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """Drop near duplicates within ``frame`` and of ``earlier`` rows (``id``, ``text``: sets curated before).

    Earlier rows always win a cluster: a new row that near-duplicates one is dropped with reason
    ``near_duplicate_of_earlier`` and ``meta.duplicate_of`` = that row's id; earlier rows are never dropped.
    """
    n = frame.height
    texts = frame["text"].fill_null("")
    rank = preference_rank(frame, "quality")
    ids = np.array(frame["id"].to_list(), dtype=object)
    if earlier is not None and earlier.height:
        texts = pl.concat([texts, earlier["text"].cast(pl.String).fill_null("")])
        rank = np.concatenate([rank, np.full(earlier.height, -np.inf)])
        ids = np.concatenate([ids, np.array(earlier["id"].cast(pl.String).to_list(), dtype=object)])
    found = near_duplicate_pairs(texts, params)
    pairs = found.pairs.filter(pl.col("a") < n)  # pairs among earlier rows are not this run's business

    total = len(texts)
    rep = clusters(total, pairs["a"].to_numpy(), pairs["b"].to_numpy(), rank)
    sizes = np.bincount(rep, minlength=total)
    rep, sizes_new = rep[:n], sizes[rep[:n]]
    is_dup = rep != np.arange(n)
    of_earlier = is_dup & (rep >= n)
    out = add_meta(
        frame,
        cluster_id=pl.Series(np.where(sizes_new > 1, ids[rep], None).tolist(), dtype=pl.String),
        duplicate_of=pl.Series(np.where(is_dup, ids[rep], None).tolist(), dtype=pl.String),
    )
    reasons = np.where(of_earlier, "near_duplicate_of_earlier", np.where(is_dup, "near_duplicate", None))
    kept, dropped = split(out, pl.Series(reasons.tolist(), dtype=pl.String))
    stats = base_stats(
        n, kept, dropped,
        candidate_pairs=found.candidates,
        verified_pairs=pairs.height,
        clusters=int(len(np.unique(rep[sizes_new > 1]))),
        earlier_rows=total - n,
        lsh_bands=found.bands,
        lsh_rows=found.rows,
    )
    return kept, dropped, stats
