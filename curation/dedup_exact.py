"""Exact deduplication on a normalized content key.

The key is the text lower-cased with punctuation and whitespace removed (configurable), hashed; the first row of
each key is kept and later ones are dropped with reason ``exact_duplicate`` and ``meta.duplicate_of`` = kept id.
"""

from __future__ import annotations

import polars as pl
from pydantic import BaseModel, ConfigDict

from gristmill.common.contract import StepResult, require, split, with_meta

VERSION = "1"


class ExactDedupParams(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    ignore_case: bool = True
    """Compare texts case-insensitively."""
    ignore_punctuation: bool = True
    """Ignore punctuation and whitespace differences ("Hello, world" == "hello world")."""


def content_key(params: ExactDedupParams) -> pl.Expr:
    key = pl.col("text").fill_null("")
    if params.ignore_case:
        key = key.str.to_lowercase()
    if params.ignore_punctuation:
        key = key.str.replace_all(r"[^\w]+", "")
    return key.hash(seed=0)


def dedup_exact(frame: pl.DataFrame, params: ExactDedupParams) -> StepResult:
    require(frame, ["id", "text"], "dedup_exact")
    keyed = frame.with_columns(content_key(params).alias("_key"))
    first_id = pl.col("id").first().over("_key")
    keyed = keyed.with_columns(
        pl.when(pl.col("id") != first_id).then(first_id).otherwise(None).alias("_dup_of")
    )
    reason = keyed.select(
        pl.when(pl.col("_dup_of").is_not_null()).then(pl.lit("exact_duplicate")).otherwise(None)
    ).to_series()
    keyed = with_meta(keyed, duplicate_of=pl.col("_dup_of")).drop("_key", "_dup_of")
    kept, dropped = split(keyed, reason)
    return StepResult(kept, dropped, {}, rows_in=frame.height)
