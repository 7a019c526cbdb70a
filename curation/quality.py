"""Embedding scoring against a file: topical similarity to a reference ("gold") set, or a classifier of labelled rows.

``scorer: reference`` measures how close a row's *topic* is to the gold set, not whether the row is good: the mean
cosine similarity of its embedding to its ``k`` nearest reference embeddings (a good answer on a topic the gold
set lacks scores low). For measures of the row itself see the ``signals`` step (curation/signals.py). The score
goes to ``meta.quality_score`` (which dedup's ``keep: quality`` reads) and, named for what it is, to
``meta.reference_similarity`` or ``meta.classifier_score``; rows below the keep rule are dropped with reason
``low_quality`` and a ``detail`` such as ``reference_similarity=0.036 < 0.3``. The keep rule is explicit:
``top_fraction`` cuts a share whatever the data, so it is never a default.

Worked example with k=1: reference vectors {(1,0)}, rows (1,0) and (0,1) score 1.0 and 0.0; ``top_fraction: 0.5``
keeps the first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gristmill.common.contract import StepResult, require, split, with_meta
from gristmill.common.embedding import EmbeddingParams
from gristmill.common.errors import InputError
from gristmill.curation.scoring import keep_mask, similarity_scores

VERSION = "2"  # 2: meta.reference_similarity / classifier_score, detail, keep required


class KeepRule(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    top_fraction: float | None = Field(None, gt=0, le=1)
    """Keep this share of rows with the highest scores (ties at the cut are kept)."""
    min_score: float | None = Field(None, ge=-1, le=1)
    """Keep rows scoring at least this cosine similarity."""

    @model_validator(mode="after")
    def _one_rule(self) -> KeepRule:
        if (self.top_fraction is None) == (self.min_score is None):
            raise ValueError("give exactly one of top_fraction or min_score")
        return self


class QualityParams(EmbeddingParams):
    """Score rows by embedding similarity to a gold set (or a classifier of labelled rows); keep the best."""

    scorer: Literal["reference", "classifier"] = "reference"
    """reference: mean top-k cosine similarity to gold rows; classifier: probability of "good" from a logistic
    regression (scikit-learn) trained on embeddings of labelled good/bad rows."""
    reference: str = Field(json_schema_extra={"path": True})
    """scorer=reference: gold rows that define good data; scorer=classifier: labelled rows with ``label_column``
    (jsonl/json/csv/parquet, read with ``reference_mapping``)."""
    label_column: str = "label"
    """scorer=classifier: the column marking good rows (true/1) and bad rows (false/0)."""
    reference_mapping: Literal["alpaca", "sharegpt", "messages", "text"] = "alpaca"
    """How to read the reference file: alpaca | sharegpt | messages | text."""
    keep: KeepRule
    """Which rows to keep by score: {min_score: 0.3} (an explicit floor) or {top_fraction: 0.9} (a share)."""
    k: int = Field(3, ge=1)
    """Number of nearest reference rows averaged into the score."""


def score_quality(
    frame: pl.DataFrame,
    params: QualityParams,
    *,
    embed: Callable[[list[str]], np.ndarray],
    reference: np.ndarray,
    labels: np.ndarray | None = None,
) -> StepResult:
    """Score rows; ``embed`` maps texts to normalized vectors (see ``Embedder``), ``reference`` holds the vectors
    of the reference rows and ``labels`` their good (1) / bad (0) labels for ``scorer: classifier``."""
    require(frame, ["text"], "quality")
    if reference.shape[0] == 0:
        raise InputError(f"quality.reference {params.reference!r} has no rows")
    vectors = embed(frame["text"].fill_null("").to_list())
    extra: dict[str, Any] = {}
    if params.scorer == "classifier":
        if labels is None:
            raise InputError("quality: scorer classifier needs labels for the reference rows")
        scores, extra = classifier_scores(reference, labels, vectors)
    else:
        scores = similarity_scores(vectors, reference, params.k)
    mask = keep_mask(scores, params.keep)
    values = pl.Series(scores.astype(np.float64))
    name = "classifier_score" if params.scorer == "classifier" else "reference_similarity"
    scored = with_meta(frame, quality_score=values, **{name: values})
    reason = pl.Series([None if m else "low_quality" for m in mask], dtype=pl.String)
    if params.keep.min_score is not None:
        bound = f"< {params.keep.min_score:g}"
    else:
        cut = float(scores[mask].min()) if mask.any() else float("nan")
        bound = f"< {cut:.4g} (the cut keeping the top {params.keep.top_fraction:g})"
    detail = pl.Series([None if m else f"{name}={v:.4g} {bound}" for m, v in zip(mask, scores, strict=True)],
                       dtype=pl.String)
    kept, dropped = split(scored.with_columns(detail.alias("detail")), reason)
    kept = kept.drop("detail")
    q = np.quantile(scores, [0.1, 0.5, 0.9]).round(4).tolist() if scores.size else []
    return StepResult(kept, dropped, {"score_p10_p50_p90": q, **extra}, rows_in=frame.height)


def classifier_scores(train: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """P(good) for ``rows`` from a class-balanced logistic regression fit on ``train`` / ``labels`` (1 = good).

    Example: train [[1,0],[0.9,0.1],[0,1],[0.1,0.9]] with labels [1,1,0,0] scores row [1,0] above row [0,1].
    Also returns the training accuracy and 5-fold cross-validated accuracy (when each class has >= 5 rows).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    y = np.asarray(labels).astype(int)
    counts = np.bincount(y, minlength=2)
    if counts.min() == 0:
        raise InputError(f"quality: the labelled rows need both good and bad examples (good {counts[1]}, bad {counts[0]})")
    model = LogisticRegression(max_iter=1000, class_weight="balanced")
    model.fit(train, y)
    info: dict[str, Any] = {"classifier_rows": {"good": int(counts[1]), "bad": int(counts[0])},
                            "classifier_train_accuracy": round(float(model.score(train, y)), 4)}
    if counts.min() >= 5:
        cv = cross_val_score(LogisticRegression(max_iter=1000, class_weight="balanced"), train, y, cv=5)
        info["classifier_cv_accuracy"] = round(float(cv.mean()), 4)
    scores = model.predict_proba(rows)[:, 1] if rows.shape[0] else np.zeros(0)
    return scores, info
