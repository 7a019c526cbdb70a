"""Representation per axis: rows mentioning each group, shares, max/min ratio and divergence from a reference
distribution, with bootstrap intervals (rows resampled with replacement).

Worked example: groups a, b mentioned by rows [[a], [a], [a, b], []]: counts a 3, b 1; shares of the rows that
mention the axis (3) are a 1.0, b 0.333; ratio 3.0; the distribution over groups (counts normalized) is
a 0.75, b 0.25, whose total-variation distance from uniform is 0.25.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl


def ratio_or_na(high: int | float, low: int | float) -> float | str:
    """``high / low``, or ``"n/a"`` when ``low`` is 0 (a zero count has no ratio, not an infinite one)."""
    return round(high / low, 4) if low else "n/a"


def membership(col: pl.Series, groups: list[str]) -> np.ndarray:
    """A rows x groups 0/1 matrix: row mentions group."""
    return np.column_stack([col.list.contains(g).to_numpy() for g in groups]).astype(np.int8) if groups else \
        np.zeros((len(col), 0), dtype=np.int8)


def divergences(dist: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Total variation distance and Jensen-Shannon divergence (base 2, in [0, 1]) between two distributions."""
    mid = (dist + ref) / 2

    def kl(p: np.ndarray, q: np.ndarray) -> float:
        nz = p > 0
        return float(np.sum(p[nz] * np.log2(p[nz] / q[nz])))

    return {"tvd": round(float(np.abs(dist - ref).sum() / 2), 4), "js": round((kl(dist, mid) + kl(ref, mid)) / 2, 4)}


def representation(col: pl.Series, groups: list[str], reference: dict[str, float] | None = None,
                   n_boot: int = 200, seed: int = 0, weights: np.ndarray | None = None) -> dict[str, Any]:
    """Counts, shares with 95% bootstrap intervals, max/min ratio and divergence from ``reference`` (uniform
    over ``groups`` when ``None``) for one axis.

    With ``weights`` (one per row, e.g. reweigh's ``weight`` column) every figure is weighted: a group's "rows" are
    the sum of its rows' weights (``group_rows`` then holds floats), as training sees the data. Rows [[a], [a], [b]]
    with weights [0.75, 0.75, 1.5] give a 1.5, b 1.5: ratio 1.0."""
    m = membership(col, groups)
    w = np.ones(len(col)) if weights is None else np.asarray(weights, dtype=float)
    counts = (m * w[:, None]).sum(axis=0) if weights is not None else m.sum(axis=0)
    present = m.sum(axis=1) > 0
    any_rows: float = round(float(w[present].sum()), 4) if weights is not None else int(present.sum())

    def num(value: Any) -> float | int:
        return round(float(value), 4) if weights is not None else int(value)

    entry: dict[str, Any] = {
        "group_rows": {g: num(c) for g, c in zip(groups, counts, strict=True)},
        "rows_with_any": any_rows,
        "share_of_rows": round(any_rows / max(float(w.sum()), 1e-12), 4) if len(col) else 0.0,
    }
    if not groups:
        return entry
    high, low = num(counts.max()), num(counts.min())
    entry["representation_ratio"] = ratio_or_na(high, low)
    entry["ratio_counts"] = {"max": {"group": groups[int(counts.argmax())], "rows": high},
                             "min": {"group": groups[int(counts.argmin())], "rows": low}}
    entry["shares"] = {g: round(c / any_rows, 4) if any_rows else 0.0 for g, c in zip(groups, counts, strict=True)}
    if any_rows and n_boot:
        rng = np.random.default_rng(seed)
        idx = np.flatnonzero(present)
        mw = m * w[:, None]

        def share(sample: np.ndarray) -> np.ndarray:
            total = w[sample].sum()
            return mw[sample].sum(axis=0) / total if total else np.zeros(len(groups))

        boots = np.stack([share(rng.choice(idx, size=idx.size)) for _ in range(n_boot)])
        lo, hi = np.quantile(boots, [0.025, 0.975], axis=0)
        entry["share_ci95"] = {g: [round(float(a), 4), round(float(b), 4)] for g, a, b in zip(groups, lo, hi, strict=True)}
    total = counts.sum()
    if total:
        ref = np.array([(reference or {}).get(g, 0.0) if reference else 1.0 for g in groups], dtype=float)
        if ref.sum() <= 0:
            return entry
        ref = ref / ref.sum()
        entry["divergence"] = divergences(counts / total, ref) | {"reference": "given" if reference else "uniform"}
    return entry


def gaps(axis: str, counts: dict[str, int], gap_ratio: float) -> list[dict[str, Any]]:
    """Groups mentioned by fewer than ``gap_ratio`` x the best-represented group's rows (gap filling's input)."""
    high = max(counts.values(), default=0)
    return [{"axis": axis, "group": g, "rows": c, "target_rows": math.ceil(gap_ratio * high)}
            for g, c in counts.items() if c < gap_ratio * high]
