"""Demographic lexicons and their matching, shared by the audit (which counts mentions) and gap filling (which
must produce rows the next audit counts), so both always match the same way.

A lexicon maps axis -> group -> terms (a JSON file; top-level keys starting with ``_`` are notes, except
``_classes`` — named word lists a term can refer to — and ``_exclude`` — per axis, phrases that are not mentions).

Term syntax (one string per term):

- words match whole and case-insensitively; the last word also matches with a plural ``-s``/``-es`` and a
  possessive (``'s``, ``'``): ``mother`` matches ``Mothers'``;
- a space or a hyphen between words matches a space, a hyphen or nothing: ``non-binary`` matches ``nonbinary``;
- ``word*`` matches any word that starts with ``word``;
- ``{name}`` is any member of class ``name`` (``{name?}``: optional); built in: ``{Cap}`` a capitalized word and
  ``{Lower}`` a lowercase one (case-sensitive), ``{num}`` digits, ``{end}`` the end of a clause (punctuation or a
  verb/conjunction such as ``are``/``and``);
- ``!Term`` is case-sensitive (``!Ms`` is not ``ms``); ``re:...`` is a raw regex (Rust- and Python-compatible).

Matching is one leftmost-first scan per axis over the union of the axis's terms and exclusions, ordered by length
(longest first), so at any place the longest candidate wins, and an exclusion that matches consumes its words:
with ``black {person}`` as a term and ``black hole`` as an exclusion, "Black women studied the black hole"
mentions ``black`` once. Each match is mapped back to the first alternative that matches it in full (the one the
scan took), hence to its group, or to nothing for an exclusion.

Worked example: ``{"gender": {"female": ["her", "mother"], "male": ["he"]}}`` and the text ``"Her grandmothers
said he left"``: ``Her`` and ``he`` match (female, male); ``grandmothers`` does not match ``mother`` because a term
is a whole word.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import polars as pl

from gristmill.common.errors import InputError, MissingFileError

_SEP = r"[\s\-]*"
_SUFFIX = r"(?:e?s)?(?:['’]s?)?"
_END_WORDS = ("and", "or", "but", "are", "is", "was", "were", "who", "have", "has", "had", "in", "of", "to", "get",
              "got", "must", "should", "will", "would", "can", "could", "do", "did", "does", "need", "live", "lived",
              "face", "faced", "often", "from", "with", "like", "for", "at")
_BUILTIN = {
    "Cap": (r"(?-i:[A-Z][a-z]+)", 2, True),
    "Lower": (r"(?-i:[a-z]+)", 1, True),
    "num": (r"\d+", 1, True),
    "end": (r"(?:\s*[.,;:!?)]|\s+(?:" + "|".join(_END_WORDS) + r")\b|\s*$)", 1, False),
}
_RAW_PRIORITY = 10  # a raw regex is tried after literals longer than this, before shorter ones


class Axis(dict[str, list[str]]):
    """group -> terms of one axis, carrying the lexicon's word classes and this axis's exclusions."""

    def __init__(self, groups: dict[str, list[str]], classes: dict[str, list[str]] | None = None,
                 exclude: list[str] | None = None) -> None:
        super().__init__(groups)
        self.classes = dict(classes or {})
        self.exclude = list(exclude or [])


class Lexicon(dict[str, Axis]):
    """axis -> ``Axis``; a plain ``{axis: {group: [terms]}}`` dict converts with ``as_lexicon``."""


def as_lexicon(data: dict[str, Any], key: str = "lexicon") -> Lexicon:
    """A ``Lexicon`` from the JSON shape (``_classes``/``_exclude`` read, other ``_`` keys skipped)."""
    if isinstance(data, Lexicon):
        return data
    classes = data.get("_classes", {})
    exclude = data.get("_exclude", {})
    if not isinstance(classes, dict) or not isinstance(exclude, dict):
        raise InputError(f"{key}: _classes and _exclude must be JSON objects")
    out = Lexicon()
    for axis, groups in data.items():
        if axis.startswith("_"):
            continue
        if not isinstance(groups, dict) or not all(isinstance(t, list) for t in groups.values()):
            raise InputError(f"{key}: axis {axis!r} must map group -> list of terms")
        merged = {**classes, **getattr(groups, "classes", {})}
        out[axis] = Axis({g: list(t) for g, t in groups.items() if not g.startswith("_")}, merged,
                         [*exclude.get(axis, []), *exclude.get("*", []), *getattr(groups, "exclude", [])])
    return out


def load_lexicon(path: str | Path, key: str = "lexicon") -> Lexicon:
    """The lexicon at ``path``; ``key`` names the recipe key in errors."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{key}: {path} does not exist (a JSON file of axis -> group -> terms)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{key}: {path}:{err.lineno}: invalid JSON ({err.msg})") from err
    if not isinstance(data, dict):
        raise InputError(f"{key}: {path} must be a JSON object of axis -> group -> list of terms")
    lexicon = as_lexicon(data, key)
    for axis in lexicon:  # compile now so that a bad term is a user error naming the file
        try:
            _matcher(_axis_key(lexicon[axis]))
        except (re.error, KeyError, ValueError) as err:
            raise InputError(f"{key}: {path}: axis {axis!r}: {err}") from err
    return lexicon


def merge_lexicons(base: Lexicon, extra: Lexicon) -> Lexicon:
    """``base`` with ``extra``'s axes, groups, terms, classes and exclusions added (terms appended, no duplicates)."""
    out = Lexicon()
    for axis in [*base, *(a for a in extra if a not in base)]:
        b, e = base.get(axis, Axis({})), extra.get(axis, Axis({}))
        groups = {g: list(dict.fromkeys([*b.get(g, []), *e.get(g, [])])) for g in [*b, *(g for g in e if g not in b)]}
        out[axis] = Axis(groups, {**b.classes, **e.classes}, list(dict.fromkeys([*b.exclude, *e.exclude])))
    return out


def _compile(term: str, classes: dict[str, list[str]], last: bool = True, depth: int = 0) -> tuple[str, int]:
    """A term as (regex without outer word boundaries, priority = shortest text it can match)."""
    if term.startswith("re:"):
        return term[3:], _RAW_PRIORITY
    if term.startswith("!"):
        pattern, priority = _compile(term[1:], classes, last, depth)
        return f"(?-i:{pattern})", priority
    tokens = [t for t in re.split(r"\s+|(?<=\w)-(?=\w)", term.strip()) if t]
    if not tokens:
        raise ValueError(f"empty term {term!r}")
    out, priority = "", 0
    for i, token in enumerate(tokens):
        optional = token.startswith("{") and token.endswith("?}")
        pattern, size = _token(token.strip("{}?") if token.startswith("{") else token, token.startswith("{"),
                               classes, last and i == len(tokens) - 1, depth)
        if i == 0:
            out = f"(?:{pattern})?" if optional else pattern
        else:
            out += f"(?:{_SEP}{pattern})?" if optional else f"{_SEP}{pattern}"
        priority += 0 if optional else size + (1 if i else 0)
    return out, priority


def _token(token: str, is_class: bool, classes: dict[str, list[str]], last: bool, depth: int) -> tuple[str, int]:
    if is_class:
        if token in _BUILTIN:
            pattern, size, _ = _BUILTIN[token]
            return pattern, size
        if token not in classes:
            raise KeyError(f"unknown class {{{token}}} (classes: {sorted(classes)} and {sorted(_BUILTIN)})")
        if depth > 2:
            raise ValueError(f"class {{{token}}} nests too deep")
        members = sorted((_compile(m, classes, last, depth + 1) for m in classes[token]), key=lambda p: -p[1])
        return "(?:" + "|".join(p for p, _ in members) + ")", min(s for _, s in members)
    if token.endswith("*"):
        return re.escape(token[:-1]).replace("'", "['’]?") + r"\w*", len(token) - 1
    escaped = re.escape(token).replace("'", "['’]?")
    return escaped + (_SUFFIX if last and token[-1].isalnum() else ""), len(token)


def _bounded(term: str, pattern: str) -> str:
    """Word boundaries where the term starts/ends with a word (not before/after punctuation or ``{end}``)."""
    body = term.lstrip("!")
    start = r"\b" if body[:1].isalnum() or body.startswith("{") or body.startswith("re:") else ""
    tail = body.rstrip().split()[-1] if body.strip() else ""
    end = "" if tail.startswith("{end") or body.startswith("re:") or not (tail[-1:].isalnum() or tail.endswith(("*", "}"))) else r"\b"
    return start + pattern + end


@dataclass(frozen=True)
class _Matcher:
    union: str
    """The axis's scan pattern (``(?i)`` + alternatives, longest first)."""
    alternatives: tuple[tuple[str, str | None], ...]
    """Each alternative's regex source with its group (``None``: an exclusion), in scan order."""
    by_initial: dict[str, tuple[int, ...]] = field(compare=False, hash=False)
    """ASCII letter/digit -> indices of the alternatives a match starting with it can be (ascending): those whose
    term starts with that character (any case) plus those that can start with anything (a class, a raw regex)."""
    required: tuple[str | None, ...] = ()
    """Per alternative, a lowercase ASCII string every match of it contains (its longest literal word part)."""
    _compiled: dict[int, re.Pattern[str]] = field(default_factory=dict, compare=False, hash=False, repr=False)
    _seen: dict[str, str | None] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def group_of(self, matched: str) -> str | None:
        """The group of one scan match: that of the first alternative matching it in full (memoized).

        Only the alternatives ``by_initial`` and ``required`` allow are tried, each compiled on first use: a
        process compiles the few alternatives its data hits, not the whole lexicon (the cost that dominated a run's
        audit start-up). A non-ASCII match tries every alternative (case folding beyond ASCII: the Kelvin sign
        matches ``k``), so the answer is always the first alternative in scan order that matches in full."""
        if matched not in self._seen:
            if len(self._seen) > 100_000:  # bounded memory on endless distinct matches
                self._seen.clear()
            if matched.isascii():
                low = matched.lower()
                candidates: Any = (i for i in self.by_initial.get(low[:1], self.by_initial.get("", ()))
                                   if self.required[i] is None or self.required[i] in low)
            else:
                candidates = range(len(self.alternatives))
            self._seen[matched] = next((self.alternatives[i][1] for i in candidates
                                        if self._pattern(i).fullmatch(matched)), None)
        return self._seen[matched]

    def _pattern(self, i: int) -> re.Pattern[str]:
        if i not in self._compiled:
            self._compiled[i] = re.compile(self.alternatives[i][0], re.IGNORECASE)
        return self._compiled[i]


def _required(term: str) -> str | None:
    """The longest run of ASCII letters/digits in the term's literal words (lowercase): every match contains it.

    >>> _required("{from} new zealand"), _required("o'neil*"), _required("{Cap}")
    ('zealand', 'neil', None)
    """
    body = term[1:] if term.startswith("!") else term
    if body.startswith("re:"):
        return None
    runs = [run.lower() for token in re.split(r"\s+|(?<=\w)-(?=\w)", body.strip()) if not token.startswith("{")
            for run in re.findall(r"[A-Za-z0-9]+", token)]
    return max(runs, key=len) if runs else None


def _initial(term: str) -> str | None:
    """The ASCII letter or digit every match of ``term`` starts with (lowercase), or ``None`` when it can start
    with anything (a class, a raw regex, punctuation, a non-ASCII letter whose case folding is not ASCII's)."""
    body = term[1:] if term.startswith("!") else term
    body = body.strip()
    if body.startswith("re:") or not body:
        return None
    first = body[0]
    return first.lower() if first.isascii() and first.isalnum() else None


def _axis_key(axis: dict[str, list[str]]) -> str:
    return json.dumps([axis, getattr(axis, "classes", {}), getattr(axis, "exclude", [])], sort_keys=True)


def _shape(term: str) -> tuple[tuple[str, ...], str, tuple[str, ...]] | None:
    """(leading class tokens, literal core, trailing class tokens) of a term with classes around a plain core."""
    if term.startswith(("re:", "!")):
        return None
    tokens = [t for t in re.split(r"\s+|(?<=\w)-(?=\w)", term.strip()) if t]
    lead = 0
    while lead < len(tokens) and tokens[lead].startswith("{"):
        lead += 1
    trail = len(tokens)
    while trail > lead and tokens[trail - 1].startswith("{"):
        trail -= 1
    core = tokens[lead:trail]
    if not core or (lead == 0 and trail == len(tokens)) or any("{" in t or "*" in t for t in core):
        return None
    return tuple(tokens[:lead]), " ".join(core), tuple(tokens[trail:])


def _scan_union(terms: list[tuple[int, int, str, bool]], classes: dict[str, list[str]]) -> str:
    """The scan pattern over ``(priority, order, term, is_exclusion)``, longest first.

    Terms that share the classes around a plain core (``{from} mexico``, ``{from} peru``; ``black {person}``,
    ``white {person}``) are scanned as one alternative (``{from} (mexico|peru)``): the same strings match, but
    the regex stays small enough for the engine's DFA (unfactored, the nationality axis scans ~300x slower).
    Each match is still mapped back through the unfactored alternatives."""
    merged: dict[tuple[Any, ...], list[tuple[int, int, str]]] = {}
    singles: list[tuple[int, int, str]] = []
    for priority, order, term, excl in terms:
        shape = _shape(term)
        if shape is None:
            singles.append((priority, order, term))
        else:
            merged.setdefault((shape[0], shape[2], excl), []).append((priority, order, shape[1]))
    alts: list[tuple[int, int, str]] = []
    for priority, order, term in singles:
        alts.append((priority, order, _bounded(term, _compile(term, classes)[0])))
    for n, ((lead, trail, _), members) in enumerate(merged.items()):
        core = f"__core{n}"
        term = " ".join([*lead, "{" + core + "}", *trail])
        pattern, _ = _compile(term, {**classes, core: [c for _, _, c in members]})
        alts.append((max(p for p, _, _ in members), min(o for _, o, _ in members), _bounded(term, pattern)))
    alts.sort(key=lambda a: (-a[0], a[1]))
    return "(?i)(?:" + "|".join(p for _, _, p in alts) + ")"


@lru_cache(maxsize=256)
def _matcher(key: str) -> _Matcher:
    """The compiled matcher of one axis (``_axis_key``), cached in the process by content.

    Only the scan pattern is compiled here, by polars' (Rust) engine, which the detection uses: a syntax error
    surfaces now, naming the term. The per-alternative Python patterns behind ``group_of`` compile lazily."""
    groups, classes, exclude = json.loads(key)
    alts: list[tuple[int, int, str, str | None, str | None, str | None]] = []
    scan: list[tuple[int, int, str, bool]] = []
    for order, (group, term) in enumerate([(g, t) for g in sorted(groups) for t in groups[g]]
                                          + [(None, t) for t in exclude]):
        pattern, priority = _compile(term, classes)
        if term.startswith("re:"):
            try:  # a raw regex must also be Python's (``groups_mentioned``, ``group_of``)
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"term {term!r}: {err}") from err
        # Longest first; on a tie a term goes before an exclusion (order: terms were listed first).
        alts.append((-priority, order, _bounded(term, pattern), group, _initial(term), _required(term)))
        scan.append((priority, order, term, group is None))
    alts.sort(key=lambda a: (a[0], a[1]))
    if not alts:
        return _Matcher(r"(?i)\b\B", (), {})  # matches nothing
    union = _scan_union(scan, classes)
    try:
        pl.Series([""], dtype=pl.String).str.contains(union)
    except pl.exceptions.ComputeError as err:
        raise ValueError(f"the axis's terms do not compile to a regex: {str(err).splitlines()[0]}") from err
    anywhere = [i for i, a in enumerate(alts) if a[4] is None]
    by_initial: dict[str, tuple[int, ...]] = {"": tuple(anywhere)}
    for initial in {a[4] for a in alts if a[4] is not None}:
        by_initial[initial] = tuple(sorted([*anywhere, *(i for i, a in enumerate(alts) if a[4] == initial)]))
    return _Matcher(union, tuple((p, g) for _, _, p, g, _, _ in alts), by_initial,
                    tuple(r for *_, r in alts))


def axis_matcher(axis: dict[str, list[str]]) -> _Matcher:
    """The compiled matcher of one axis (cached by content)."""
    return _matcher(_axis_key(axis))


def groups_mentioned(text: str, groups: dict[str, list[str]]) -> list[str]:
    """The groups of one axis (``lexicon[axis]``) that ``text`` mentions, sorted.

    >>> groups_mentioned("Black women studied the black hole", as_lexicon(
    ...     {"_exclude": {"race": ["black hole"]}, "race": {"black": ["black women"]}})["race"])
    ['black']
    """
    m = axis_matcher(groups)
    if not m.alternatives:
        return []
    found = {m.group_of(hit.group(0)) for hit in re.finditer(m.union, text or "")}
    return sorted(g for g in found if g is not None)


def mentions(text: str, terms: list[str]) -> bool:
    """``text`` contains one of ``terms`` (no classes, no exclusions).

    >>> mentions("Her mothers left", ["she", "mother"]), mentions("A grandmother", ["mother"])
    (True, False)
    """
    return bool(groups_mentioned(text, {"x": list(terms)}))


def detect(texts: pl.Series, lexicon: dict[str, Any], axes: list[str]) -> pl.DataFrame:
    """One ``list[str]`` column per axis: the groups each text mentions (sorted, unique, possibly empty).

    One leftmost-first regex scan per axis (the axes in parallel, in polars), then each distinct matched string is
    mapped to its group once."""
    lexicon = as_lexicon(lexicon)
    if not axes:
        return pl.DataFrame()
    frame = pl.DataFrame({"t": texts.fill_null("").cast(pl.String)})
    matchers = {axis: axis_matcher(lexicon[axis]) for axis in axes}
    found = frame.select([pl.col("t").str.extract_all(m.union).alias(a) for a, m in matchers.items()])
    cols = []
    for axis, m in matchers.items():
        distinct = found[axis].explode().drop_nulls().unique().to_list()
        mapping = {s: m.group_of(s) for s in distinct}
        groups = [g for g in mapping.values() if g is not None]
        if not groups:
            cols.append(pl.Series(axis, [[] for _ in range(frame.height)], dtype=pl.List(pl.String)))
            continue
        cols.append(found.select(pl.col(axis).list.eval(
            pl.element().replace_strict(mapping, default=None, return_dtype=pl.String)
        ).list.drop_nulls().list.unique().list.sort()).to_series().alias(axis))
    return pl.DataFrame(cols)
