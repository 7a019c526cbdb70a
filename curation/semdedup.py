"""Semantic deduplication (SemDeDup-style): k-means over embeddings, cosine pairs within clusters, union-find.

Rows are embedded (L2-normalized, so a dot product is the cosine similarity) and clustered with k-means
(``n_clusters``, default about sqrt(n)); only rows in the same cluster are compared, one cluster at a time, by a
blocked matrix product. Pairs with cosine >= ``threshold`` are joined with union-find (so groups are transitive:
a~b and b~c put a, b, c together even when a, c are below the threshold) and one row per group is kept. Pairs
split across two clusters are missed: the price of not comparing all n^2 pairs (fewer clusters = fewer misses,
more work).

Which row a group keeps (``keep``): ``quality`` = the highest ``meta.quality_score`` written by an earlier quality
step (the first row where none was written), ``first`` = the first row, ``random`` = a seeded random row.
Dropped rows get reason ``semantic_duplicate`` and ``meta.duplicate_of`` = the kept row's id; every row gets
``meta.semantic_cluster`` (its k-means cluster).

Worked example: vectors a=(1,0), b=(0.99,0.14), c=(0,1) with threshold 0.95 and one cluster: cos(a,b)=0.99 so
{a,b} is a group; keep=first keeps a, drops b with ``duplicate_of`` = a's id; c stays.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Literal

import numpy as np
import polars as pl
from pydantic import Field

from gristmill.common.contract import StepResult, require, split, with_meta
from gristmill.common.embedding import EmbeddingParams
from gristmill.curation.clusters import clusters, preference_rank

VERSION = "1"
_BLOCK = 2048  # rows per block of the within-cluster similarity product (bounds memory to _BLOCK x cluster size)
_EPS = 1e-6  # float32 rounding: identical texts must meet threshold 1.0


class SemanticDedupParams(EmbeddingParams):
    """Drop rows whose embedding is within ``threshold`` cosine of a kept row (SemDeDup)."""

    threshold: float = Field(0.95, gt=0, le=1)
    """Cosine similarity at or above which two rows are semantic duplicates."""
    n_clusters: int | None = Field(None, ge=1)
    """k-means clusters; rows are only compared within a cluster. Default: round(sqrt(rows))."""
    keep: Literal["quality", "first", "random"] = "quality"
    """Row kept per group: highest meta.quality_score (else first), the first row, or a seeded random one."""
    seed: int = 0
    """Seed for k-means and keep=random."""


def cluster_labels(vecs: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """k-means cluster of each row (MiniBatchKMeans, seeded); ``n_clusters`` is capped at the number of rows.

    Two tight pairs far apart, 2 clusters: ``[(1,0), (1,0.01), (0,1), (0.01,1)]`` -> labels like ``[0,0,1,1]``.
    """
    n = vecs.shape[0]
    k = min(n_clusters, n)
    if k <= 1:
        return np.zeros(n, dtype=np.int64)
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.exceptions import ConvergenceWarning

    km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=max(1024, 4 * k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # fewer distinct points than clusters: fine here
        return km.fit_predict(vecs).astype(np.int64)


def similar_pairs(vecs: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs ``(i, j)``, i < j, in the same cluster with cosine >= ``threshold``.

    ``vecs`` = [(1,0), (0.99,0.14), (0,1)], one cluster, threshold 0.95 -> ``([0], [1])``.
    """
    left: list[np.ndarray] = []
    right: list[np.ndarray] = []
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.r_[True, labels[order][1:] != labels[order][:-1], True])
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        members = order[lo:hi]
        if members.size < 2:
            continue
        sub = vecs[members]
        for start in range(0, members.size, _BLOCK):
            sims = sub[start : start + _BLOCK] @ sub.T
            r, c = np.nonzero(sims >= threshold - _EPS)
            upper = c > r + start
            left.append(members[r[upper] + start])
            right.append(members[c[upper]])
    if not left:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(left), np.concatenate(right)


def dedup_semantic(
    frame: pl.DataFrame, params: SemanticDedupParams, *, embed: Callable[[list[str]], np.ndarray]
) -> StepResult:
    """Drop semantic near-duplicates; ``embed`` maps texts to normalized vectors (see ``curation.embed``)."""
    require(frame, ["id", "text"], "dedup_semantic")
    n = frame.height
    texts = frame["text"].fill_null("").to_list()
    vecs = np.asarray(embed(texts), dtype=np.float32) if n else np.zeros((0, 1), dtype=np.float32)
    if vecs.ndim != 2 or vecs.shape[0] != n:
        raise ValueError(f"dedup_semantic: embed returned shape {vecs.shape} for {n} texts; expected ({n}, dim)")
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    vecs = vecs / np.where(norms > 0, norms, 1.0)
    k = params.n_clusters or max(1, round(np.sqrt(n)))
    labels = cluster_labels(vecs, k, params.seed)
    left, right = similar_pairs(vecs, labels, params.threshold)

    roots = clusters(n, left, right, preference_rank(frame, params.keep, params.seed))
    ids = frame["id"]
    is_dup = pl.Series(roots != np.arange(n), dtype=pl.Boolean)
    nulls = pl.repeat(None, n, dtype=pl.String, eager=True)
    dup_of = ids.gather(roots).cast(pl.String).zip_with(is_dup, nulls)
    out = with_meta(frame, semantic_cluster=pl.Series(labels, dtype=pl.Int64), duplicate_of=dup_of)
    reason = pl.repeat("semantic_duplicate", n, eager=True).zip_with(is_dup, nulls)
    kept, dropped = split(out, reason)
    sizes = np.bincount(roots, minlength=n) if n else np.zeros(0, dtype=np.int64)
    stats = {
        "clusters": int(np.unique(labels).size),
        "largest_cluster": int(np.bincount(labels).max()) if n else 0,
        "similar_pairs": int(left.size),
        "duplicate_groups": int((sizes > 1).sum()),
    }
    return StepResult(kept, dropped, stats, rows_in=n)
