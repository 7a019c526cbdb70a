"""A quality classifier trained from labelled rows: logistic regression on sentence embeddings, as a signal.

Labels come from a file (``labels:``) or from a column of the input itself (``label_column:``). A labels file
(jsonl, json, csv or parquet) has a ``label`` column (1/0, true/false, good/bad, accept/reject) and, per row, one
of: ``text``; ``instruction`` (+ optional ``input``) and ``response`` (or ``output``); or ``id``, the id of a row
of this step's input, the form a review import writes (``id,label``). Rows are embedded by their ``text`` (for
chat rows the user and assistant turns, as ingest writes it; instruction/response labels are joined the same way).

Training: a seeded, stratified share (``holdout``) of the labelled rows is held out; a class-balanced logistic
regression (scikit-learn) fit on the rest gives the held-out accuracy and ROC AUC in ``stats``; the model that
scores rows is then refit on every labelled row. The fitted weights are cached as JSON under the cache directory,
keyed on the labelled texts and labels, the embedding model's identity and the split and fit settings, so a rerun with
the same labels trains nothing.

Worked example: embeddings good (1, 0), (0.9, 0.1), bad (0, 1), (0.1, 0.9); a row at (1, 0) scores P(good) > 0.5
and a row at (0, 1) scores < 0.5; with ``min_score: 0.5`` the second is dropped, detail
``classifier_score=0.2xx < 0.5``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gristmill.common.errors import InputError
from gristmill.common.readers import read_table

_GOOD = {"1", "true", "good", "accept", "accepted", "yes", "keep", "1.0"}
_BAD = {"0", "false", "bad", "reject", "rejected", "no", "drop", "0.0"}


class ClassifierParams(BaseModel):
    """Train a good/bad classifier on embeddings of labelled rows and record its P(good) as a signal."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    labels: str | None = Field(None, json_schema_extra={"path": True})
    """A labelled file (jsonl/json/csv/parquet): column ``label`` (1/0, true/false, good/bad) with ``text``, or
    ``instruction`` (+ ``input``) and ``response``/``output``, or ``id`` of a row of this step's input (what a
    review import writes)."""
    label_column: str | None = None
    """Instead of a file: a column of the input holding 1/0 labels (rows with a null label are only scored)."""
    min_score: float | None = Field(None, ge=0, le=1)
    """Drop rows whose P(good) (meta.classifier_score) is below this; None records the score only."""
    holdout: float = Field(0.2, gt=0, lt=1)
    """Share of the labelled rows held out (stratified, seeded) for the accuracy and AUC in the stats."""
    seed: int = 0
    """Seed of the held-out split."""
    c: float = Field(10.0, gt=0)
    """Inverse L2 regularization strength of the logistic regression (scikit-learn's C). Sentence embeddings are
    unit vectors, so the usual C=1 keeps every P(good) near 0.5; 10 separated a 16-row set cleanly."""

    @model_validator(mode="after")
    def _one_source(self) -> ClassifierParams:
        if (self.labels is None) == (self.label_column is None):
            raise ValueError("give exactly one of labels (a file) or label_column (a column of the input)")
        return self


@dataclass
class Classifier:
    """A fitted logistic regression: ``P(good | x) = sigmoid(x . coef + intercept)``."""

    coef: np.ndarray
    intercept: float
    stats: dict[str, Any] = field(default_factory=dict)

    def score(self, vectors: np.ndarray) -> np.ndarray:
        """P(good) of each row of ``vectors``: with coef (2, -2) and intercept 0, row (1, 0) -> sigmoid(2) = 0.881."""
        if vectors.shape[0] == 0:
            return np.zeros(0)
        return 1.0 / (1.0 + np.exp(-(vectors @ self.coef + self.intercept)))


def parse_label(value: Any, where: str) -> int | None:
    """1 (good), 0 (bad) or None (unlabelled) from a file's cell: ``"good"`` -> 1, ``False`` -> 0, ``None`` -> None."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in _GOOD:
        return 1
    if text in _BAD:
        return 0
    if text == "":
        return None
    raise InputError(f"{where}: label {value!r} is not one of 1/0, true/false, good/bad, accept/reject")


def labelled_rows(labels_path: Path, frame: pl.DataFrame) -> tuple[list[str], np.ndarray, int]:
    """(texts, 0/1 labels, unmatched) of a labels file (see the module docstring). ``id`` rows take their text from
    ``frame``; ids that are not rows of it (a review label of a row an earlier step dropped) are skipped and
    counted in ``unmatched``, and it is an error only when no labelled row is left."""
    table = read_table(labels_path, options=None)
    data = table.frame
    if "label" not in data.columns:
        raise InputError(f"signals.classifier.labels: {labels_path} has no `label` column (columns: {data.columns}); "
                         "write one label per row: 1/0, true/false or good/bad")
    texts: list[str] = []
    labels: list[int] = []
    by_id = dict(zip(frame["id"].to_list(), frame["text"].to_list(), strict=True)) if "id" in data.columns else {}
    answered = "response" in data.columns or "output" in data.columns
    if "text" not in data.columns and "id" not in data.columns and not ("instruction" in data.columns and answered):
        raise InputError(f"signals.classifier.labels: {labels_path} needs `text`, `instruction` + `response` (or "
                         f"`output`), or `id` (a row of the input) beside `label`; columns: {data.columns}")
    unknown: list[str] = []
    for i, row in enumerate(data.iter_rows(named=True)):
        where = table.where(int(table.number[i]))
        label = parse_label(row["label"], where)
        if label is None:
            continue
        if row.get("text") is not None:
            text = str(row["text"])
        elif "id" in data.columns and row.get("id") is not None:
            key = str(row["id"])
            if key not in by_id:
                unknown.append(key)
                continue
            text = by_id[key] or ""
        elif answered and row.get("instruction") is not None:
            reply = row.get("response") if row.get("response") is not None else row.get("output")
            parts = (row.get("instruction") or "", row.get("input") or "", reply or "")
            text = "\n\n".join(p for p in parts if p.strip())
        else:
            raise InputError(f"{where}: a labelled row needs text, id or instruction + response")
        texts.append(text)
        labels.append(label)
    if unknown and not texts:
        raise InputError(f"signals.classifier.labels: {labels_path}: none of its {len(unknown)} id(s) is a row of "
                         f"this step's input, e.g. {unknown[:3]}; label rows of this recipe's input (review import)")
    return texts, np.asarray(labels, dtype=np.int8), len(unknown)


def cache_key(texts: list[str], labels: np.ndarray, model_key: str, params: ClassifierParams) -> str:
    """The classifier's cache key: the labelled content, the embedding model's identity and the split."""
    h = hashlib.sha256(f"v1|{model_key}|{params.holdout}|{params.seed}|{params.c}\n".encode())
    for text, label in zip(texts, labels.tolist(), strict=True):
        h.update(f"{label}\t{hashlib.sha256(text.encode()).hexdigest()}\n".encode())
    return h.hexdigest()[:32]


def train(vectors: np.ndarray, labels: np.ndarray, params: ClassifierParams) -> Classifier:
    """Held-out accuracy/AUC from a fit on the training share, then the model refit on every labelled row."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split

    counts = np.bincount(labels, minlength=2)
    if counts.min() < 2:
        raise InputError(f"signals.classifier: the labelled rows need at least 2 good and 2 bad examples (good "
                         f"{counts[1]}, bad {counts[0]})")
    stats: dict[str, Any] = {"classifier_rows": {"good": int(counts[1]), "bad": int(counts[0])}}
    n_test = max(2, round(len(labels) * params.holdout))
    if len(labels) - n_test >= 2:
        x_train, x_test, y_train, y_test = train_test_split(vectors, labels, test_size=n_test, stratify=labels,
                                                            random_state=params.seed)
        if len(set(y_train.tolist())) == 2:
            held = LogisticRegression(C=params.c, max_iter=1000, class_weight="balanced").fit(x_train, y_train)
            proba = held.predict_proba(x_test)[:, 1]
            stats["classifier_holdout"] = {
                "rows": int(len(y_test)), "accuracy": round(float(((proba >= 0.5) == y_test).mean()), 4),
                "auc": round(float(roc_auc_score(y_test, proba)), 4) if len(set(y_test.tolist())) == 2 else None}
    model = LogisticRegression(C=params.c, max_iter=1000, class_weight="balanced").fit(vectors, labels)
    stats["classifier_train_accuracy"] = round(float(model.score(vectors, labels)), 4)
    return Classifier(model.coef_[0].astype(np.float64), float(model.intercept_[0]), stats)


def fit_cached(texts: list[str], labels: np.ndarray, embed: Callable[[list[str]], np.ndarray], model_key: str,
               params: ClassifierParams, cache_dir: Path | None) -> Classifier:
    """:func:`train` on the embeddings of ``texts``, or the cached fit of the same labels and embedding model."""
    key = cache_key(texts, labels, model_key, params)
    path = cache_dir / "classifiers" / f"{key}.json" if cache_dir is not None else None
    if path is not None and path.is_file():
        saved = json.loads(path.read_text())
        return Classifier(np.asarray(saved["coef"]), saved["intercept"], saved["stats"] | {"classifier_cached": True})
    fitted = train(embed(texts), labels, params)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"coef": fitted.coef.tolist(), "intercept": fitted.intercept, "stats": fitted.stats}))
        tmp.replace(path)
    fitted.stats["classifier_cached"] = False
    return fitted
