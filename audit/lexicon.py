"""Demographic lexicons and whole-word detection.

A lexicon maps axis -> group -> terms. Terms match whole words, case-insensitively; ``term*`` also matches any
word that starts with ``term`` and multi-word terms match across single spaces.

Worked example: with ``{"gender": {"female": ["her", "mother*"], "male": ["he"]}}`` the text
``"Her grandmothers said he left"`` gives ``{"gender": ["female", "male"]}``: ``Her`` and ``he`` match, while
``grandmothers`` does not match ``mother*`` because a term must start a word.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

import polars as pl

Lexicon = dict[str, dict[str, list[str]]]


def load_lexicon(path: str | None = None) -> Lexicon:
    """The built-in English lexicon, or a JSON file of the same shape."""
    raw = Path(path).read_text() if path else resources.files("audit").joinpath("lexicons/en.json").read_text()
    data = json.loads(raw)
    return {axis: groups for axis, groups in data.items() if not axis.startswith("_")}


def term_pattern(terms: list[str]) -> str:
    """One case-insensitive regex for a group's terms.

    >>> term_pattern(["he", "mother*"])
    '(?i)\\\\b(?:he|mother\\\\w*)\\\\b'
    """
    parts = []
    for term in sorted(terms, key=len, reverse=True):
        stem = term[:-1] if term.endswith("*") else term
        piece = re.escape(stem).replace(r"\ ", r"\s+")
        parts.append(piece + (r"\w*" if term.endswith("*") else ""))
    return r"(?i)\b(?:" + "|".join(sorted(parts, key=len, reverse=True)) + r")\b"


@lru_cache(maxsize=32)
def _patterns(lexicon_json: str) -> dict[str, dict[str, str]]:
    lexicon: Lexicon = json.loads(lexicon_json)
    return {axis: {g: term_pattern(t) for g, t in groups.items()} for axis, groups in lexicon.items()}


def detect(texts: pl.Series, lexicon: Lexicon, axes: list[str]) -> pl.DataFrame:
    """One list[str] column per axis: the groups each text mentions (sorted, possibly empty)."""
    patterns = _patterns(json.dumps(lexicon, sort_keys=True))
    t = texts.fill_null("")
    cols = {}
    for axis in axes:
        hits = pl.DataFrame({g: t.str.contains(p) for g, p in patterns[axis].items()})
        groups = list(patterns[axis])
        cols[axis] = [
            [g for g, hit in zip(groups, row, strict=True) if hit] for row in hits.iter_rows()
        ] if groups else [[] for _ in range(len(t))]
    return pl.DataFrame({a: pl.Series(v, dtype=pl.List(pl.String)) for a, v in cols.items()})
