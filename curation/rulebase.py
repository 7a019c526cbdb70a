"""What every heuristic rule shares: its definition, whether a row breaks it, and the ``detail`` that says why.

A dropped row's ``detail`` carries the measured value and the threshold, so a user can judge a rule in seconds:
``Rule("gopher_quality.min_alpha_words", "<", 0.8)`` on a metric of 0.62 gives ``alpha_words=0.62 < 0.8``
(the ``min_``/``max_`` prefix is left out: the operator already says which bound it is). A flag rule's detail is
its ``note``, or a per-row text its metric function computed (column ``detail:<rule>``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import polars as pl

Op = Literal["<", "<=", ">", ">=", "flag"]
DETAIL_PREFIX = "detail:"
"""A metric frame column ``detail:<rule>`` holds a per-row detail text that replaces the generic one."""


@dataclass(frozen=True)
class Rule:
    name: str
    """``<rule_set>.<rule>``: the drop reason and the key of a threshold override."""
    breaks: Op
    """A row breaks the rule when ``metric <breaks> threshold``; ``flag``: the metric is itself a yes/no."""
    default: float | None = None
    """The published threshold (None for a flag rule: nothing to tune)."""
    kind: Literal["ratio", "count", "length"] = "ratio"
    """How an override is checked: a ratio lies in [0, 1], a count is a whole number >= 0, a length is >= 0."""
    note: str = ""
    """A flag rule's detail when its metric function gives none (e.g. ``line contains 'lorem ipsum'``)."""

    @property
    def metric(self) -> str:
        """The measured quantity's name in details: ``gopher_quality.min_alpha_words`` -> ``alpha_words``."""
        short = self.name.split(".", 1)[1]
        return short.removeprefix("min_").removeprefix("max_")


def breaks(rule: Rule, threshold: float | None) -> pl.Expr:
    """True where the row breaks ``rule`` at ``threshold`` (a null metric breaks nothing)."""
    col = pl.col(rule.name)
    if rule.breaks == "flag":
        return col.fill_null(False)
    cmp = {"<": col < threshold, "<=": col <= threshold, ">": col > threshold, ">=": col >= threshold}[rule.breaks]
    return cmp.fill_null(False)


def fmt_number(value: float) -> str:
    """A threshold as a user wrote it: ``50.0`` -> ``50``, ``0.8`` -> ``0.8``, ``0.123456`` -> ``0.1235``."""
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


def detail(rule: Rule, threshold: float | None, columns: list[str]) -> pl.Expr:
    """The detail text of ``rule`` for every row (read where the row breaks it).

    >>> frame = pl.DataFrame({"r.min_x": [0.6234]})
    >>> frame.select(detail(Rule("r.min_x", "<", 0.8), 0.8, frame.columns)).item()
    'x=0.6234 < 0.8'
    """
    own = DETAIL_PREFIX + rule.name
    if own in columns:
        return pl.col(own)
    if rule.breaks == "flag":
        return pl.lit(rule.note or rule.metric)
    assert threshold is not None
    value = pl.col(rule.name).cast(pl.Float64)
    shown = pl.when(value == value.round(0)).then(value.cast(pl.Int64).cast(pl.String)).otherwise(
        value.round(4).cast(pl.String))
    return pl.format("{}={} {} {}", pl.lit(rule.metric), shown, pl.lit(rule.breaks), pl.lit(fmt_number(threshold)))
