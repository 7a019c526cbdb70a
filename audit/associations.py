"""Associations: which groups co-occur with which attribute words (occupations, valence adjectives) beyond chance.

For group g and attribute a over N rows: PMI = log2(n(g,a) N / (n(g) n(a))). A pair is listed only when it
co-occurs at least ``min_count`` times and a one-sided Fisher exact test of the 2x2 table gives p < ``alpha``
(the significance floor: a PMI from three rows is noise). The top ``top_k`` pairs per axis by PMI are reported.

Worked example: N = 8 rows, group g in 4, attribute a in 4, both in 4: PMI = log2(4 * 8 / (4 * 4)) = 1.0; the
Fisher p-value of [[4, 0], [0, 4]] is 1/70 = 0.0143.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from gristmill.common.lexicon import Axis, detect


class AssociationParams(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    enabled: bool = True
    """Compute group x attribute associations."""
    attributes: str | None = Field(None, json_schema_extra={"path": True})
    """A JSON file of attribute kind -> words; default: the built-in occupations and valence adjectives."""
    min_count: int = Field(5, ge=1)
    """Pairs co-occurring in fewer rows are not reported."""
    alpha: float = Field(0.01, gt=0, lt=1)
    """Significance floor: one-sided Fisher exact p-value below this."""
    top_k: int = Field(10, ge=1)
    """Pairs listed per axis."""


def load_attributes(path: str | None) -> dict[str, list[str]]:
    file = Path(path) if path else Path(str(resources.files("gristmill.audit").joinpath("lexicons/attributes.json")))
    data = json.loads(file.read_text(encoding="utf-8"))
    return {k: v for k, v in data.items() if not k.startswith("_")}


def pmi_table(groups: np.ndarray, attrs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(joint counts, PMI, one-sided Fisher p-value) for every group x attribute (0/1 row matrices)."""
    joint = groups.T.astype(np.int64) @ attrs.astype(np.int64)
    return joint, *pmi_from_counts(joint, groups.sum(axis=0), attrs.sum(axis=0), groups.shape[0])


def pmi_from_counts(joint: np.ndarray, ng: np.ndarray, na: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(PMI, one-sided Fisher p-value) from the joint counts, each group's and attribute's row count and ``n``."""
    from scipy.stats import fisher_exact

    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log2(joint * n / np.outer(ng, na))
    p = np.ones_like(pmi)
    for i, j in zip(*np.nonzero(joint), strict=True):
        a = int(joint[i, j])
        table = [[a, int(ng[i]) - a], [int(na[j]) - a, n - int(ng[i]) - int(na[j]) + a]]
        p[i, j] = fisher_exact(table, alternative="greater")[1]
    return pmi, p


def attribute_words(params: AssociationParams) -> list[str]:
    return sorted({w for ws in load_attributes(params.attributes).values() for w in ws})


def attribute_hits(texts: pl.Series, words: list[str]) -> pl.Series:
    """The attribute words each row mentions (a ``list[str]`` per row): per-row state a streamed audit keeps
    instead of the text."""
    return detect(texts, {"attr": Axis({w: [w] for w in words})}, ["attr"])["attr"]


def associations_of(found: pl.Series, hits: pl.DataFrame, axes: list[str], params: AssociationParams,
                    chunk: int = 50_000) -> dict[str, Any]:
    """Per axis, the top significant (group, attribute) pairs by PMI, with counts and p-values, from each row's
    attribute words (``attribute_hits``). The counts are summed ``chunk`` rows
    at a time: the rows x words matrix is never built for all rows (at 1M rows and ~100 words it was 0.8 GB as
    int64)."""
    from gristmill.audit.representation import membership

    kinds = load_attributes(params.attributes)
    words = sorted({w for ws in kinds.values() for w in ws})
    kind_of = {w: k for k, ws in kinds.items() for w in ws}
    out: dict[str, Any] = {"min_count": params.min_count, "alpha": params.alpha, "axes": {}}
    names = {axis: sorted(hits[axis].explode().drop_nulls().unique().to_list()) for axis in axes}
    names = {axis: groups for axis, groups in names.items() if groups and words}
    joint = {axis: np.zeros((len(g), len(words)), dtype=np.int64) for axis, g in names.items()}
    ng = {axis: np.zeros(len(g), dtype=np.int64) for axis, g in names.items()}
    na = np.zeros(len(words), dtype=np.int64)
    n = len(found)
    for start in range(0, n, chunk) if names else ():
        attrs = membership(found.slice(start, chunk), words).astype(np.int64)
        na += attrs.sum(axis=0)
        for axis, groups in names.items():
            g = membership(hits[axis].slice(start, chunk), groups).astype(np.int64)
            joint[axis] += g.T @ attrs
            ng[axis] += g.sum(axis=0)
    for axis, groups in names.items():
        pmi, p = pmi_from_counts(joint[axis], ng[axis], na, n)
        pairs = [{"group": groups[i], "attribute": words[j], "kind": kind_of[words[j]],
                  "rows": int(joint[axis][i, j]), "pmi": round(float(pmi[i, j]), 4), "p_value": float(f"{p[i, j]:.3g}")}
                 for i in range(len(groups)) for j in range(len(words))
                 if joint[axis][i, j] >= params.min_count and p[i, j] < params.alpha and math.isfinite(pmi[i, j])]
        out["axes"][axis] = sorted(pairs, key=lambda r: -r["pmi"])[: params.top_k]
    return out
