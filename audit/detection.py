"""Which groups each row mentions: the built-in or a user lexicon (merged or replacing), plus explicit sensitive
columns for data that carries them (``sensitive_columns: [gender]``: the column's values are the groups)."""

from __future__ import annotations

from typing import Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from gristmill.audit.lexicon import lexicon_or_builtin
from gristmill.common.errors import InputError
from gristmill.common.lexicon import Lexicon, detect, load_lexicon, merge_lexicons


class DetectionParams(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    axes: list[str] | None = None
    """Axes to audit (keys of the lexicon); default: every axis of the lexicon."""
    lexicon: str | None = Field(None, json_schema_extra={"path": True})
    """A JSON lexicon (axis -> group -> terms, optional ``_classes``/``_exclude``); see ``lexicon_mode``."""
    lexicon_mode: Literal["merge", "replace"] = "merge"
    """``merge``: add the file's axes/groups/terms to the built-in lexicon; ``replace``: use only the file."""
    sensitive_columns: list[str] = Field(default_factory=list)
    """Columns holding a group per row (tabular-style data); each becomes an axis named after the column."""


def resolve_lexicon(params: DetectionParams) -> Lexicon:
    """The lexicon the audit uses (built-in, user file merged in, or the user file alone)."""
    if params.lexicon is None:
        return lexicon_or_builtin(None)
    user = load_lexicon(params.lexicon, key="audit.lexicon")
    return user if params.lexicon_mode == "replace" else merge_lexicons(lexicon_or_builtin(None), user)


def audited_axes(params: DetectionParams, lexicon: Lexicon) -> list[str]:
    axes = list(lexicon) if params.axes is None else params.axes
    unknown = [a for a in axes if a not in lexicon]
    if unknown:
        raise InputError(f"audit.axes: unknown axis {unknown}; the lexicon has {sorted(lexicon)}")
    return axes


def detect_groups(frame: pl.DataFrame, params: DetectionParams, lexicon: Lexicon) -> pl.DataFrame:
    """One ``list[str]`` column per audited axis and per sensitive column (its value as the only group)."""
    axes = audited_axes(params, lexicon)
    text = frame["text"] if "text" in frame.columns else pl.Series("text", [""] * frame.height)
    hits = detect(text, lexicon, axes)
    columns = [hits[a] for a in hits.columns]
    for col in params.sensitive_columns:
        if col not in frame.columns:
            raise InputError(f"audit.sensitive_columns: no column {col!r} (columns: {frame.columns})")
        value = frame[col].cast(pl.String)
        # Built as a series, not added to ``hits``: with no lexicon axis ``hits`` has no rows to broadcast onto.
        columns.append(pl.select(pl.when(value.is_null()).then(pl.lit([], dtype=pl.List(pl.String)))
                                 .otherwise(pl.concat_list(pl.lit(value)))).to_series().alias(col))
    return pl.DataFrame(columns)


def group_names(hits: pl.DataFrame, axis: str, lexicon: Lexicon, sensitive: list[str]) -> list[str]:
    """The groups of an axis: the lexicon's (all, even unmentioned ones), or the values seen in a column."""
    if axis in lexicon and axis not in sensitive:
        return sorted(g for g, terms in lexicon[axis].items() if terms)
    return sorted(hits[axis].explode().drop_nulls().unique().to_list())
