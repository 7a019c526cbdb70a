"""Exact deduplication on a normalized content key.

The key is the text lower-cased with punctuation and whitespace removed (configurable), hashed; the first row of
each key is kept and later ones are dropped with reason ``exact_duplicate`` and ``meta.duplicate_of`` = kept id.
"""

from __future__ import annotations

import polars as pl
from pydantic import BaseModel, ConfigDict

from gristmill.common.contract import StepResult, TwoPass, require, run_two_pass, split, with_meta

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


class ExactDedup(TwoPass):
    """Exact deduplication in two passes: the first keeps a 64-bit content key and the id of each row (not its
    text), finds each key's first row and so every row's ``duplicate_of``; the second drops the duplicates.

    Keys [k1, k2, k1] on ids [a, b, c] -> duplicate_of [null, null, a]: c is dropped, a and b are kept."""

    columns = ("id", "text")

    def __init__(self, params: ExactDedupParams, schema: pl.Schema, rows: int = 0) -> None:
        require(pl.DataFrame(schema=schema), ["id", "text"], "dedup_exact")
        self.params = params
        self._keys: list[pl.DataFrame] = []
        self._dup_of: pl.Series | None = None

    def scan(self, part: pl.DataFrame) -> None:
        self._keys.append(part.select("id", content_key(self.params).alias("_key")))

    def decide(self) -> None:
        keyed = pl.concat(self._keys) if self._keys else pl.DataFrame(schema={"id": pl.String, "_key": pl.UInt64})
        self._keys = []
        first_id = pl.col("id").first().over("_key")
        self._dup_of = keyed.select(pl.when(pl.col("id") != first_id).then(first_id).otherwise(None)
                                    .alias("_dup_of")).to_series()

    def apply(self, part: pl.DataFrame, start: int) -> tuple[pl.DataFrame, pl.DataFrame]:
        assert self._dup_of is not None
        dup_of = self._dup_of.slice(start, part.height)
        reason = pl.select(pl.when(dup_of.is_not_null()).then(pl.lit("exact_duplicate")).otherwise(None)).to_series()
        return split(with_meta(part, duplicate_of=dup_of), reason)


def dedup_exact(frame: pl.DataFrame, params: ExactDedupParams) -> StepResult:
    return run_two_pass(ExactDedup(params, frame.schema, frame.height), frame)
