"""Outcome parity with fairlearn: selection rate of a binary label per group (rows that mention exactly one group
of the axis), demographic parity difference and ratio, equalized odds difference when a prediction column
exists, bootstrap intervals of the selection rates (``bootstrap.group_rate_ci``, fairlearn's resampling done with
numpy); intersections of two axes.

Worked example: labels [1, 1, 0, 0] for group f and [1, 1] for m: selection rates f 0.5, m 1.0, difference 0.5,
ratio 0.5.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from gristmill.audit.bootstrap import group_rate_ci
from gristmill.audit.representation import ratio_or_na


def _binary(values: pl.Series, name: str) -> np.ndarray:
    from gristmill.common.errors import InputError

    s = values.cast(pl.Float64, strict=False)
    if s.null_count() or not s.is_in([0.0, 1.0]).all():
        raise InputError(f"audit.{name}: expected a binary column (0/1 or bool), got values {values.unique().head(5).to_list()}")
    return s.cast(pl.Int8).to_numpy()


def parity(labels: pl.Series, groups: pl.Series, predictions: pl.Series | None = None, n_boot: int = 200,
           seed: int = 0, weights: np.ndarray | None = None) -> dict[str, Any]:
    """Selection rate per group (with 95% CI), DP difference/ratio and, with ``predictions``, equalized odds.

    With ``weights`` (reweigh's ``weight``) also ``weighted``: the selection rates as training sees them,
    sum(w y) / sum(w) per group, and their DP difference/ratio (Kamiran–Calders weights make the difference 0)."""
    from fairlearn.metrics import MetricFrame, equalized_odds_difference, selection_rate

    y = _binary(labels, "label_column")
    g = groups.to_numpy()
    mf = MetricFrame(metrics=selection_rate, y_true=y, y_pred=y, sensitive_features=g)
    rates = {str(k): round(float(v), 4) for k, v in mf.by_group.items()}
    counts = {str(k): int(v) for k, v in zip(*np.unique(g, return_counts=True), strict=True)}
    high, low = max(rates.values()), min(rates.values())
    out: dict[str, Any] = {
        "rows": counts, "selection_rate": rates,
        "demographic_parity_difference": round(high - low, 4),
        "demographic_parity_ratio": ratio_or_na(low, high) if high else "n/a",
    }
    if n_boot:
        ci = group_rate_ci(y, g, n_boot, seed)
        out["selection_rate_ci95"] = {k: [round(lo, 4), round(hi, 4)] for k, (lo, hi) in ci.items()}
    if weights is not None:
        wmf = MetricFrame(metrics=selection_rate, y_true=y, y_pred=y, sensitive_features=g,
                          sample_params={"sample_weight": np.asarray(weights, dtype=float)})
        wrates = {str(k): round(float(v), 4) for k, v in wmf.by_group.items()}
        whigh, wlow = max(wrates.values()), min(wrates.values())
        out["weighted"] = {"selection_rate": wrates, "demographic_parity_difference": round(whigh - wlow, 4),
                           "demographic_parity_ratio": ratio_or_na(wlow, whigh) if whigh else "n/a"}
    if predictions is not None:
        p = _binary(predictions, "prediction_column")
        out["equalized_odds_difference"] = round(float(equalized_odds_difference(y, p, sensitive_features=g)), 4)
    return out


def single_group(col: pl.Series) -> tuple[pl.Series, pl.Series]:
    """(rows that mention exactly one group, that group)."""
    mask = col.list.len() == 1
    return mask, col.filter(mask).list.first()
