"""The ``counterfactual_augment`` step: add a gender-swapped copy of each row that has something to swap
(counterfactual data augmentation), so the model sees every statement about one gender about the other too.

The swap list is project-written data (``audit/lexicons/gender_pairs.json``): word pairs swapped both ways, nouns
with their plurals, one-way words and the two ambiguous pronouns. Matching is on whole words (a run of ASCII
letters not touching another letter or digit), case-insensitive, and the replacement keeps the case: ``He`` ->
``She``, ``HE`` -> ``SHE``, ``king's`` -> ``queen's``, ``step-mother`` -> ``step-father``. So ``the``,
``Hershey``, ``Sherlock`` and ``mankind`` are left alone (``mankind`` is generic and not on the list); names are
left alone unless the recipe gives ``name_pairs``.

The ambiguity: ``her`` is either ``him`` (object) or ``his`` (possessive), and ``his`` either ``her``
(determiner) or ``hers`` (pronoun). The rule looks at the next word: when a noun or adjective follows (any word
that is not in the list ``not_nouns`` of the swap file: articles, pronouns, prepositions, conjunctions, auxiliaries,
common verbs and adverbs), it is the determiner; otherwise (a listed word, punctuation or the end of the text) the
pronoun. Examples:

- "I saw her car." -> "I saw his car." (``car``: a noun)
- "Her new job" -> "His new job" (``new``: an adjective)
- "I gave her the book." -> "I gave him the book." (``the``: an article)
- "I told her." -> "I told him." (punctuation)
- "Let her go" -> "Let him go" (``go``: a listed verb)
- "The choice is his." -> "The choice is hers."; "his own idea" -> "her own idea"

Known misses of a rule without a parser: "I heard her singing" gives "his singing"; an unlisted verb after
``her`` ("made her smile" is listed, "made her wince" is not) gives the possessive. ``man`` as a verb ("man the
station") is swapped.

Worked example: "He gave her his book." -> "She gave him her book." (3 swaps: he, her -> him before ``his``, his
-> her before ``book``).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from gristmill.common.contract import StepResult, no_drops, require, with_meta
from gristmill.common.errors import InputError, MissingFileError
from gristmill.common.text import messages_text

VERSION = "1"

_WORD = re.compile(r"(?<![\w])[A-Za-z]+(?![\w])")
_NEXT = re.compile(r"\s*([A-Za-z]+)")


@dataclass(frozen=True)
class SwapList:
    """Lowercase word -> its counterpart, and the ambiguous words' two readings."""

    words: dict[str, str]
    ambiguous: dict[str, tuple[str, str]]
    """word -> (before a noun/adjective, otherwise)."""
    not_nouns: frozenset[str]
    """Words after which an ambiguous word reads as a pronoun (the closed classes and common verbs)."""


def builtin_pairs_path() -> Path:
    return Path(str(resources.files(__package__).joinpath("lexicons/gender_pairs.json")))


def _plural(word: str) -> str:
    return word + ("es" if word.endswith(("s", "x", "z", "ch", "sh")) else "s")


def load_swaps(path: str | Path | None = None, name_pairs: list[list[str]] | None = None,
               key: str = "counterfactual_augment.pairs") -> SwapList:
    """The swap list in ``path`` (default the built-in one) plus ``name_pairs``; a word with two counterparts that
    is not declared ``ambiguous`` is an error naming it."""
    path = Path(path) if path else builtin_pairs_path()
    if not path.is_file():
        raise MissingFileError(f"{key}: {path} does not exist (a JSON file like audit/lexicons/gender_pairs.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{key}: {path}:{err.lineno}: invalid JSON ({err.msg})") from err
    words: dict[str, str] = {}
    ambiguous = {w.lower(): (v["before_noun"].lower(), v["else"].lower())
                 for w, v in data.get("ambiguous", {}).items()}

    def add(a: str, b: str, where: str) -> None:
        a, b = a.lower(), b.lower()
        if not (a.isalpha() and a.isascii() and b.isalpha() and b.isascii()):
            raise InputError(f"{key}: {path}: {where}: {a!r} -> {b!r}: whole ASCII words only")
        if a in ambiguous:
            return
        if words.get(a, b) != b:
            raise InputError(f"{key}: {path}: {where}: {a!r} maps to both {words[a]!r} and {b!r}; keep one, or "
                             f"declare it under `ambiguous`")
        words[a] = b

    for pair in data.get("words", []):
        add(pair[0], pair[1], "words")
        add(pair[1], pair[0], "words")
    for entry in data.get("nouns", []):
        m, f = entry[:2]
        mp, fp = entry[2:4] if len(entry) == 4 else (_plural(m), _plural(f))
        for a, b in ((m, f), (f, m), (mp, fp), (fp, mp)):
            add(a, b, "nouns")
    for a, b in data.get("one_way", {}).items():
        add(a, b, "one_way")
    for pair in name_pairs or []:
        if len(pair) != 2:
            raise InputError(f"counterfactual_augment.name_pairs: {pair!r} is not a pair of two names")
        add(pair[0], pair[1], "name_pairs")
        add(pair[1], pair[0], "name_pairs")
    not_nouns = data.get("not_nouns", [])
    if ambiguous and not not_nouns:
        raise InputError(f"{key}: {path}: `ambiguous` words need `not_nouns` (the words after which they read as "
                         "pronouns)")
    return SwapList(words, ambiguous, frozenset(w.lower() for w in not_nouns))


def _cased(source: str, word: str) -> str:
    if source.isupper() and len(source) > 1:
        return word.upper()
    return word[:1].upper() + word[1:] if source[:1].isupper() else word


def swap_text(text: str, swaps: SwapList) -> tuple[str, int, dict[str, int]]:
    """``text`` with every listed word swapped, the number of swaps and the counts per ``word->replacement``.

    >>> swap_text("He gave her his book.", load_swaps())[:2]
    ('She gave him her book.', 3)
    >>> swap_text("The Hershey bar; mankind.", load_swaps())[:2]
    ('The Hershey bar; mankind.', 0)
    """
    count = 0
    seen: dict[str, int] = {}

    def replace(match: re.Match[str]) -> str:
        nonlocal count
        word = match.group(0)
        low = word.lower()
        if low in swaps.ambiguous:
            before_noun, otherwise = swaps.ambiguous[low]
            following = _NEXT.match(text, match.end())
            target = before_noun if following and following.group(1).lower() not in swaps.not_nouns else otherwise
        elif low in swaps.words:
            target = swaps.words[low]
        else:
            return word
        count += 1
        seen[f"{low}->{target}"] = seen.get(f"{low}->{target}", 0) + 1
        return _cased(word, target)

    return _WORD.sub(replace, text), count, seen


class CounterfactualParams(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    pairs: str | None = Field(None, json_schema_extra={"path": True})
    """A swap list JSON (the shape of ``audit/lexicons/gender_pairs.json``); default the built-in gender list."""
    name_pairs: list[list[str]] = Field(default_factory=list)
    """Name pairs swapped both ways (e.g. ``[[John, Mary]]``); names are left alone otherwise."""
    fraction: float = Field(1.0, gt=0, le=1)
    """Share of the rows with something to swap that get a swapped copy (picked at random with ``seed``)."""
    max_rows: int | None = Field(None, ge=0)
    """At most this many swapped copies."""
    seed: int = 0
    """Seed of the random pick (``fraction``/``max_rows``)."""


def counterfactual_augment(frame: pl.DataFrame, params: CounterfactualParams) -> StepResult:
    """Keep every row and add a swapped copy of the picked rows with something to swap: new id
    ``cf:<source id>``, ``meta.counterfactual`` = ``{source_id, swaps}`` (null on the original rows), swaps in
    ``text`` and in every ``messages`` turn (all roles; ``text`` is then rebuilt from the messages)."""
    require(frame, ["id", "text"], "counterfactual_augment")
    swaps = load_swaps(params.pairs, params.name_pairs)
    has_messages = "messages" in frame.columns
    rows = frame.select(["id", "text", *(["messages"] if has_messages else [])]).to_dicts()
    # A row that is itself a swapped copy, or whose copy is already in the frame (a second counterfactual_augment
    # step), gets none: the swap of a swap is the original.
    ids = set(frame["id"].cast(pl.String).to_list())
    skip = {r["id"] for r in rows if str(r["id"]).startswith("cf:") or f"cf:{r['id']}" in ids}
    swapped: list[dict[str, Any]] = []
    per_word: dict[str, int] = {}
    for i, row in enumerate(rows):
        if row["id"] in skip:
            continue
        total = 0
        counts: list[dict[str, int]] = []
        messages = None
        if has_messages and row["messages"]:
            messages = []
            for m in row["messages"]:
                content, n, seen = swap_text(m["content"] or "", swaps)
                messages.append({**m, "content": content if m["content"] is not None else None})
                total += n
                counts.append(seen)
            text = messages_text(messages)
        else:
            text, total, seen = swap_text(row["text"] or "", swaps)
            counts.append(seen)
        if total:
            swapped.append({"i": i, "id": row["id"], "text": text, "messages": messages, "swaps": total,
                            "counts": counts})
    rng = random.Random(params.seed)
    picked = swapped
    if params.fraction < 1:
        picked = rng.sample(swapped, round(len(swapped) * params.fraction))
    if params.max_rows is not None and len(picked) > params.max_rows:
        picked = rng.sample(picked, params.max_rows)
    picked.sort(key=lambda r: r["i"])
    for r in picked:
        for seen in r["counts"]:
            for k, v in seen.items():
                per_word[k] = per_word.get(k, 0) + v
    source = frame[[r["i"] for r in picked]] if picked else frame.clear()
    new = source.with_columns(pl.Series("id", [f"cf:{r['id']}" for r in picked], dtype=frame.schema["id"]),
                              pl.Series("text", [r["text"] for r in picked], dtype=pl.String))
    if has_messages and picked:
        new = new.with_columns(pl.Series("messages", [r["messages"] for r in picked], dtype=frame.schema["messages"]))
    marks = pl.Series("counterfactual", [None] * frame.height + [{"source_id": str(r["id"]), "swaps": r["swaps"]}
                                                                 for r in picked],
                      dtype=pl.Struct({"source_id": pl.String, "swaps": pl.Int64}))
    out = with_meta(pl.concat([frame, new], how="vertical_relaxed"), counterfactual=marks)
    if "demographics" in [f.name for f in out.schema["meta"].fields]:  # an earlier audit's groups: stale once swapped
        out = with_meta(out, demographics=pl.when(marks.is_not_null()).then(None)
                        .otherwise(pl.col("meta").struct.field("demographics")))
    stats = {"rows_with_swaps": len(swapped), "rows_augmented": len(picked), "rows_already_augmented": len(skip), "swaps": sum(r["swaps"] for r in picked),
             "swaps_by_word": dict(sorted(per_word.items(), key=lambda kv: (-kv[1], kv[0])))}
    return StepResult(out, no_drops(out), stats, rows_in=frame.height, added=len(picked))
