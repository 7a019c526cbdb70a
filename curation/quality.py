"""Embedding quality scoring: similarity to a reference ("gold") set.

A row's score is the mean cosine similarity of its embedding to its ``k`` nearest reference embeddings, so a row
close to any part of a varied gold set scores high (a centroid would favour the average topic). The score goes to
``meta.quality_score``; rows below the keep rule are dropped with reason ``low_quality``.

Worked example with k=1: reference vectors {(1,0)}, rows (1,0) and (0,1) score 1.0 and 0.0; ``top_fraction: 0.5``
keeps the first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curation._frame import add_meta, base_stats, split
from curation.scoring import keep_mask, similarity_scores

VERSION = "1"


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


class QualityParams(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    reference: str = Field(json_schema_extra={"path": True})
    """Gold rows (jsonl/json/csv/parquet with the same mapping as the inputs) that define good data."""
    reference_mapping: Literal["alpaca", "sharegpt", "messages", "text"] = "alpaca"
    """How to read the reference file: alpaca | sharegpt | messages | text."""
    model: str = "minilm-l6"
    """Sentence-transformers model: a registered short name or a local model directory."""
    keep: KeepRule = KeepRule(top_fraction=0.8)
    """Which rows to keep by score."""
    k: int = Field(3, ge=1)
    """Number of nearest reference rows averaged into the score."""
    batch_size: int | None = Field(None, ge=1)
    """Texts per forward pass (default: 16 on CPU, 256 on GPU)."""
    max_seq_length: int = Field(256, ge=16)
    """Tokens per text the model sees (longer texts are truncated)."""
    precision: Literal["fast", "fp32"] = "fast"
    """fast: bf16 where the hardware runs it natively (AMX/AVX512-BF16 CPUs, GPUs; Spearman 0.9998 of scores vs
    fp32 in bench/embed.py); fp32: sentence-transformers' default."""


def score_quality(
    frame: pl.DataFrame,
    params: QualityParams,
    *,
    embed: Callable[[list[str]], np.ndarray],
    reference: np.ndarray,
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """Score rows against reference vectors; ``embed`` maps texts to normalized vectors (see ``Embedder``)."""
    if reference.shape[0] == 0:
        raise ValueError(f"quality.reference {params.reference!r} has no rows")
    scores = similarity_scores(embed(frame["text"].fill_null("").to_list()), reference, params.k)
    mask = keep_mask(scores, params.keep)
    scored = add_meta(frame, quality_score=pl.Series(scores.astype(np.float64)))
    reason = pl.Series([None if m else "low_quality" for m in mask], dtype=pl.String)
    kept, dropped = split(scored, reason)
    q = np.quantile(scores, [0.1, 0.5, 0.9]).round(4).tolist() if scores.size else []
    return kept, dropped, base_stats(frame.height, kept, dropped, score_p10_p50_p90=q)
