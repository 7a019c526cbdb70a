"""Duplicate clusters: connected components of duplicate pairs, one preferred representative each."""

from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl


def preference_rank(frame: pl.DataFrame, keep: Literal["quality", "first", "random"], seed: int = 0) -> np.ndarray:
    """Lower rank = preferred representative (ties go to the earlier row).

    keep=quality with scores [0.2, 0.9, null] -> [-0.2, -0.9, inf] (falls back to first when no step scored
    quality); keep=first -> all 0; keep=random -> a seeded permutation.
    """
    n = frame.height
    if keep == "random":
        return np.random.default_rng(seed).permutation(n).astype(float)
    meta_fields = {f.name for f in frame.schema["meta"].fields} if "meta" in frame.columns else set()
    if keep == "quality" and "quality_score" in meta_fields:
        scores = frame["meta"].struct.field("quality_score").cast(pl.Float64).fill_null(float("-inf"))
        return -scores.to_numpy()
    return np.zeros(n)


def clusters(n: int, a: np.ndarray, b: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Representative row of each row's cluster, the lowest-ranked member.

    Clusters are the connected components of the pairs ``(a[i], b[i])``; ties in rank go to the earlier row.

    >>> clusters(4, np.array([0, 2]), np.array([1, 1]), np.array([0.0, -1.0, 0.0, 0.0])).tolist()
    [1, 1, 1, 3]
    """
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    return representatives(label, rank)


def representatives(label: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Representative row of each row's cluster given cluster labels (any integers < len(label)): the
    lowest-ranked member, ties to the earlier row.

    >>> representatives(np.array([0, 0, 0, 3]), np.array([0.0, -1.0, 0.0, 0.0])).tolist()
    [1, 1, 1, 3]
    """
    n = len(label)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((np.arange(n), rank, label))  # by component, then rank, then position
    first = np.r_[True, label[order][1:] != label[order][:-1]]
    rep_of_label = np.empty(int(label.max()) + 1, dtype=np.int64)
    rep_of_label[label[order][first]] = order[first]
    return rep_of_label[label]
