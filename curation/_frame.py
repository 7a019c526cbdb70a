"""Small helpers every curation step shares (kept inside the stage package on purpose)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import polars as pl


def split(frame: pl.DataFrame, drop_reason: pl.Series) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split ``frame`` by a per-row reason (null = keep); the dropped part gets a ``reason`` column."""
    reason = drop_reason.alias("reason")
    with_reason = frame.with_columns(reason)
    kept = with_reason.filter(pl.col("reason").is_null()).drop("reason")
    dropped = with_reason.filter(pl.col("reason").is_not_null())
    return kept, dropped


def add_meta(frame: pl.DataFrame, **fields: pl.Expr | pl.Series) -> pl.DataFrame:
    """Add or replace fields of the ``meta`` struct column."""
    exprs = [(v if isinstance(v, pl.Expr) else pl.lit(v)).alias(k) for k, v in fields.items()]
    return frame.with_columns(pl.col("meta").struct.with_fields(exprs))


def reason_counts(dropped: pl.DataFrame) -> dict[str, int]:
    if dropped.height == 0:
        return {}
    return dict(Counter(dropped["reason"].to_list()))


def base_stats(rows_in: int, kept: pl.DataFrame, dropped: pl.DataFrame, **extra: Any) -> dict[str, Any]:
    return {
        "rows_in": rows_in,
        "kept": kept.height,
        "dropped": dropped.height,
        "dropped_by_reason": reason_counts(dropped),
        **extra,
    }
