"""Detection quality on the project's own corpora (bench/data/audit_*): false-positive rate per axis on neutral
technical/math text (target <= 2% of rows) and recall on natural + templated sentences (>= 0.8 mean, >= 0.6 worst)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from gristmill.audit.lexicon import lexicon_or_builtin
from gristmill.common.lexicon import detect

DATA = Path(__file__).parents[1] / "bench" / "data"
TEMPLATES = ["Hi! I'm a {d} {n}.", "I have a friend who is {d}.", "What do you think about {d} people?",
             "As a {d} {n}, I have opinions about this.", "My neighbor is a {d} {n}."]
NOUNS = ["person", "woman", "man", "grandparent", "kid", "veteran"]


def _rows(name: str) -> list[list[str]]:
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    return [line.split("\t") for line in lines if line.strip() and not line.startswith("#")]


def recall_set() -> pl.DataFrame:
    """(axis, group, text): the natural sentences plus the descriptors filled into the templates."""
    rows = _rows("audit_recall.tsv")
    for axis, group, d in _rows("audit_descriptors.tsv"):
        for t in TEMPLATES:
            for n in (NOUNS if "{n}" in t else [""]):
                if axis == "gender" and n not in ("", "person", "kid"):
                    continue  # "a female man" is not a sentence
                rows.append([axis, group, t.format(d=d, n=n)])
    return pl.DataFrame(rows, schema=["axis", "group", "text"], orient="row")


def measure() -> tuple[dict[str, float], dict[str, float]]:
    lex = lexicon_or_builtin(None)
    neutral = [r[0] for r in _rows("audit_neutral.txt")]
    hits = detect(pl.Series(neutral), lex, list(lex))
    fp = {a: round(float((hits[a].list.len() > 0).mean()), 4) for a in lex}
    rec = recall_set()
    found = detect(rec["text"], lex, list(lex))
    ok = [g in found[a][i].to_list() for i, (a, g) in enumerate(zip(rec["axis"], rec["group"], strict=True))]
    per_axis = rec.with_columns(ok=pl.Series(ok)).group_by("axis").agg(pl.col("ok").mean()).sort("axis")
    return fp, {a: round(r, 4) for a, r in per_axis.iter_rows()}


def test_false_positive_rate_and_recall_per_axis() -> None:
    fp, recall = measure()
    assert len(fp) == 9 and len(recall) == 9
    assert max(fp.values()) <= 0.02, fp
    assert sum(recall.values()) / len(recall) >= 0.8 and min(recall.values()) >= 0.6, recall


def test_lazy_group_mapping_equals_trying_every_alternative() -> None:
    """``group_of`` tries only the alternatives a match can be (by initial and required word) and compiles them
    lazily; the answer must be the first alternative in scan order that matches in full, as trying all gives."""
    import re

    from gristmill.common.lexicon import axis_matcher

    lex = lexicon_or_builtin(None)
    texts = recall_set()["text"]
    texts = pl.concat([texts, texts.str.to_uppercase(), pl.Series([r[0] for r in _rows("audit_neutral.txt")])])
    checked = 0
    for axis in lex:
        m = axis_matcher(lex[axis])
        eager = [(re.compile(p, re.IGNORECASE), g) for p, g in m.alternatives]
        for s in texts.str.extract_all(m.union).explode().drop_nulls().unique().to_list():
            assert m.group_of(s) == next((g for p, g in eager if p.fullmatch(s)), None), (axis, s)
            checked += 1
    assert checked > 800
