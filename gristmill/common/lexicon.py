"""Demographic lexicons and whole-word matching, shared by the audit (which counts mentions) and gap filling
(which must produce rows the next audit counts), so both always match the same way.

A lexicon maps axis -> group -> terms (a JSON file; keys starting with ``_`` are notes). Terms match whole words,
case-insensitively; ``term*`` also matches any word that starts with ``term``; the words of a multi-word term
match across any whitespace.

Worked example: with ``{"gender": {"female": ["her", "mother*"], "male": ["he"]}}`` the text
``"Her grandmothers said he left"`` mentions ``female`` and ``male``: ``Her`` and ``he`` match, while
``grandmothers`` does not match ``mother*`` because a term must start a word.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

import polars as pl

from gristmill.common.errors import InputError, MissingFileError

Lexicon = dict[str, dict[str, list[str]]]


def load_lexicon(path: str | Path, key: str = "lexicon") -> Lexicon:
    """The lexicon at ``path``; ``key`` names the recipe key in errors."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{key}: {path} does not exist (a JSON file of axis -> group -> terms)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{key}: {path}:{err.lineno}: invalid JSON ({err.msg})") from err
    if not isinstance(data, dict) or not all(isinstance(g, dict) for a, g in data.items() if not a.startswith("_")):
        raise InputError(f"{key}: {path} must be a JSON object of axis -> group -> list of terms")
    return {axis: groups for axis, groups in data.items() if not axis.startswith("_")}


def term_pattern(terms: list[str] | tuple[str, ...]) -> str:
    """One case-insensitive regex (Rust- and Python-compatible) for a group's terms, longest first.

    >>> term_pattern(["he", "mother*"])
    '(?i)\\\\b(?:mother\\\\w*|he)\\\\b'
    """
    parts = []
    for term in terms:
        stem = term[:-1] if term.endswith("*") else term
        parts.append(re.escape(stem).replace(r"\ ", r"\s+") + (r"\w*" if term.endswith("*") else ""))
    return r"(?i)\b(?:" + "|".join(sorted(parts, key=len, reverse=True)) + r")\b"


@lru_cache(maxsize=256)
def _compiled(terms: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(term_pattern(terms))


def mentions(text: str, terms: list[str]) -> bool:
    """``text`` contains one of ``terms``.

    >>> mentions("Her mothers left", ["she", "mother*"]), mentions("A grandmother", ["mother*"])
    (True, False)
    """
    return bool(terms) and _compiled(tuple(terms)).search(text) is not None


def groups_mentioned(text: str, groups: dict[str, list[str]]) -> list[str]:
    """The groups of one axis that ``text`` mentions, sorted."""
    return sorted(g for g, terms in groups.items() if mentions(text, terms))


def detect(texts: pl.Series, lexicon: Lexicon, axes: list[str]) -> pl.DataFrame:
    """One ``list[str]`` column per axis: the groups each text mentions (sorted, possibly empty)."""
    t = texts.fill_null("")
    cols = {}
    for axis in axes:
        groups = sorted(g for g, terms in lexicon[axis].items() if terms)
        if not groups:
            cols[axis] = pl.Series(axis, [[] for _ in range(len(t))], dtype=pl.List(pl.String))
            continue
        hits = pl.DataFrame({g: t.str.contains(term_pattern(lexicon[axis][g])) for g in groups})
        cols[axis] = hits.select(
            pl.concat_list([pl.when(pl.col(g)).then(pl.lit(g)) for g in groups]).list.drop_nulls().alias(axis)
        ).to_series()
    return pl.DataFrame(cols) if cols else pl.DataFrame()
