"""Text normalization: Unicode form, control characters, whitespace.

Normalizes the curation ``text`` column and the message contents together so the training form stays in step
with what curation looked at. Rows that end up empty are dropped with reason ``empty_after_normalize``.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict

from gristmill.curation._frame import base_stats, split

VERSION = "1"
_CONTROL = re.compile(r"[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f\u200b\u200c\u200d\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_BLANK_LINES = re.compile(r"\n{3,}")


class NormalizeParams(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    unicode_form: Literal["NFC", "NFKC", "none"] = "NFKC"
    """Unicode normalization form; NFKC folds compatibility characters (full-width letters, ligatures)."""
    strip_control: bool = True
    """Remove control and zero-width characters (they break tokenizers and hide duplicates)."""
    collapse_whitespace: bool = True
    """Turn runs of spaces/tabs into one space and 3+ newlines into two; strip both ends."""
    drop_empty: bool = True
    """Drop rows whose text is empty after normalization (reason ``empty_after_normalize``)."""


def normalize_text(text: str, params: NormalizeParams) -> str:
    """Normalize one string.

    >>> normalize_text("  Ｈｅｌｌｏ\\u200b   world \\n\\n\\n\\n!", NormalizeParams())
    'Hello world \\n\\n!'
    """
    if params.unicode_form != "none":
        text = unicodedata.normalize(params.unicode_form, text)
    if params.strip_control:
        text = _CONTROL.sub("", text)
    if params.collapse_whitespace:
        text = _BLANK_LINES.sub("\n\n", _SPACES.sub(" ", text)).strip()
    return text


def normalize(frame: pl.DataFrame, params: NormalizeParams) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    def fix(s: str | None) -> str | None:
        return None if s is None else normalize_text(s, params)

    out = frame.with_columns(pl.col("text").map_elements(fix, return_dtype=pl.String))
    if "messages" in out.columns and out.schema["messages"] != pl.Null:
        out = out.with_columns(
            pl.col("messages").list.eval(
                pl.struct(
                    pl.element().struct.field("role"),
                    pl.element().struct.field("content").map_elements(fix, return_dtype=pl.String),
                )
            )
        )
    changed = int((out["text"] != frame["text"]).sum())
    empty = out["text"].fill_null("").str.len_chars() == 0
    reason = pl.Series([None] * out.height, dtype=pl.String)
    if params.drop_empty:
        reason = pl.select(pl.when(empty).then(pl.lit("empty_after_normalize")).otherwise(None)).to_series()
    kept, dropped = split(out, reason)
    return kept, dropped, base_stats(frame.height, kept, dropped, rows_changed=changed)
