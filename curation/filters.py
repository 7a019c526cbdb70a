"""Heuristic row filters with per-rule reasons.

Each bound is a rule; the first rule a row breaks becomes its drop ``reason`` (``too_few_words`` ...), and stats
count every rule a row breaks, so a user can see which thresholds bite.
"""

from __future__ import annotations

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gristmill.common.contract import StepResult, no_drops, require, split

VERSION = "1"


class FilterParams(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    min_words: int | None = Field(None, ge=0)
    """Drop rows with fewer whitespace-separated words than this (reason ``too_few_words``)."""
    max_words: int | None = Field(None, ge=1)
    """Drop rows with more words than this (reason ``too_many_words``)."""
    min_chars: int | None = Field(None, ge=0)
    """Drop rows shorter than this many characters (reason ``too_short``)."""
    max_chars: int | None = Field(None, ge=1)
    """Drop rows longer than this many characters (reason ``too_long``)."""
    max_symbol_fraction: float | None = Field(None, gt=0, le=1)
    """Drop rows whose share of non-alphanumeric, non-space characters exceeds this (reason ``too_many_symbols``)."""
    max_repeated_line_fraction: float | None = Field(None, gt=0, le=1)
    """Drop rows where duplicated lines make up more than this share of lines (reason ``repeated_lines``)."""

    @model_validator(mode="after")
    def _bounds_ordered(self) -> FilterParams:
        if self.min_words is not None and self.max_words is not None and self.min_words > self.max_words:
            raise ValueError(f"min_words ({self.min_words}) must be <= max_words ({self.max_words})")
        if self.min_chars is not None and self.max_chars is not None and self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) must be <= max_chars ({self.max_chars})")
        return self


def _rules(params: FilterParams) -> list[tuple[str, pl.Expr]]:
    text = pl.col("text").fill_null("")
    words = text.str.count_matches(r"\S+")
    chars = text.str.len_chars()
    rules: list[tuple[str, pl.Expr]] = []
    if params.min_words is not None:
        rules.append(("too_few_words", words < params.min_words))
    if params.max_words is not None:
        rules.append(("too_many_words", words > params.max_words))
    if params.min_chars is not None:
        rules.append(("too_short", chars < params.min_chars))
    if params.max_chars is not None:
        rules.append(("too_long", chars > params.max_chars))
    if params.max_symbol_fraction is not None:
        symbols = text.str.count_matches(r"[^\w\s]")
        rules.append(("too_many_symbols", symbols / pl.max_horizontal(chars, 1) > params.max_symbol_fraction))
    if params.max_repeated_line_fraction is not None:
        lines = text.str.split("\n")
        n = lines.list.len()
        unique = lines.list.unique().list.len()
        rules.append(("repeated_lines", (n - unique) / n > params.max_repeated_line_fraction))
    return rules


def filter_rows(frame: pl.DataFrame, params: FilterParams) -> StepResult:
    require(frame, ["text"], "filter")
    rules = _rules(params)
    if not rules:
        return StepResult(frame, no_drops(frame), {"broken_by_rule": {}}, rows_in=frame.height)
    flags = frame.select([expr.alias(name) for name, expr in rules])
    reason_expr = pl.lit(None, dtype=pl.String)
    for name, _ in reversed(rules):
        reason_expr = pl.when(pl.col(name)).then(pl.lit(name)).otherwise(reason_expr)
    reason = flags.select(reason_expr).to_series()
    broken = {name: int(flags[name].sum()) for name, _ in rules}
    kept, dropped = split(frame, reason)
    return StepResult(kept, dropped, {"broken_by_rule": broken}, rows_in=frame.height)
