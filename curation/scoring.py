"""Score arithmetic shared by embedding scorers (numpy only, so benchmarks run without the data stack)."""

from __future__ import annotations

from typing import Any

import numpy as np


def similarity_scores(rows: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    """Mean of the top-``k`` cosine similarities of each (normalized) row to the reference rows.

    >>> similarity_scores(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[1.0, 0.0]]), 1).tolist()
    [1.0, 0.0]
    """
    if rows.shape[0] == 0:
        return np.zeros(0, dtype=np.float32)
    sims = rows @ reference.T
    k = min(k, reference.shape[0])
    top = np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:]
    return top.mean(axis=1)


def keep_mask(scores: np.ndarray, rule: Any) -> np.ndarray:
    """Boolean keep mask for a rule with ``top_fraction`` or ``min_score`` (see ``curation.quality.KeepRule``).

    ``top_fraction`` keeps ``ceil(fraction * n)`` rows and any ties at the cut.
    """
    if rule.min_score is not None:
        return scores >= rule.min_score
    assert rule.top_fraction is not None
    if scores.size == 0:
        return np.zeros(0, dtype=bool)
    n_keep = int(np.ceil(rule.top_fraction * scores.size))
    cut = np.sort(scores)[::-1][n_keep - 1]
    return scores >= cut
