"""Whether a text mentions a demographic group, by the audit's lexicon, without importing the audit stage.

Stage packages never import each other; they share plain data. The lexicon is such data: a JSON file of
axis -> group -> terms (the audit's built-in ``audit/lexicons/en.json``, located on disk without importing the
``audit`` package, or any file of that shape). Matching follows the audit's rules so that a row accepted here is
counted by the next audit: whole words, case-insensitive, ``term*`` matches any word starting with ``term``, and
the words of a multi-word term match across whitespace (``tests/test_synth_methods.py`` checks that both
agree). Example: terms ``["she", "mother*"]`` match "Her mother and SHE left" and "mothers", not "grandmother".
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path

Lexicon = dict[str, dict[str, list[str]]]


def builtin_lexicon_path() -> Path:
    spec = find_spec("audit")  # finds the package directory; does not import (run) it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the built-in lexicon (audit/lexicons/en.json) is not installed; pass `lexicon:` "
                                "with a JSON file of axis -> group -> terms")
    return Path(next(iter(spec.submodule_search_locations))) / "lexicons" / "en.json"


def load_lexicon(path: str | None = None) -> Lexicon:
    """The lexicon at ``path``, or the audit's built-in English one; keys starting with ``_`` are notes."""
    source = Path(path) if path else builtin_lexicon_path()
    data = json.loads(source.read_text(encoding="utf-8"))
    return {axis: groups for axis, groups in data.items() if not axis.startswith("_")}


@lru_cache(maxsize=256)
def _pattern(terms: tuple[str, ...]) -> re.Pattern[str]:
    parts = []
    for term in terms:
        stem = term[:-1] if term.endswith("*") else term
        parts.append(re.escape(stem).replace(r"\ ", r"\s+") + (r"\w*" if term.endswith("*") else ""))
    return re.compile(r"\b(?:" + "|".join(sorted(parts, key=len, reverse=True)) + r")\b", re.I)


def mentions(text: str, terms: list[str]) -> bool:
    """``text`` contains one of ``terms`` under the audit's matching rules.

    >>> mentions("Her mothers left", ["she", "mother*"]), mentions("A grandmother", ["mother*"])
    (True, False)
    """
    return bool(terms) and _pattern(tuple(terms)).search(text) is not None


def groups_mentioned(text: str, groups: dict[str, list[str]]) -> list[str]:
    """The groups of one axis that ``text`` mentions, sorted (as the audit lists them)."""
    return sorted(g for g, terms in groups.items() if mentions(text, terms))
