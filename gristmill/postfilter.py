"""The synthesize step's post-filter: a ``synth.methods.base.PostFilter`` turned into a screen over curation's code.

synth/ cannot import curation/ (stage packages stay independent), so the orchestrator builds the screen and hands
it to the method as a plain callable. The eval-set index and the reference embeddings are built once per step;
near-dedup runs per round against the step's input rows and the generated rows kept in earlier rounds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from gristmill.common.embedding import EmbeddingParams
from gristmill.common.errors import MissingFileError
from gristmill.curation import decontam, minhash
from gristmill.curation.scoring import similarity_scores
from gristmill.synth.methods.base import PostFilter, Screen

Embed = Callable[[list[str]], np.ndarray]


def build_screen(params: PostFilter, embedder: Callable[[EmbeddingParams], Embed] | None = None) -> Screen | None:
    """``screen(candidates, pool) -> {candidate id: reason}`` for ``params``; None when nothing is checked.

    Reasons: ``contaminated`` (shares a ``params.ngram``-word n-gram with an eval item), ``near_duplicate_of_earlier``
    (Jaccard >= ``params.threshold`` with a pool row), ``near_duplicate`` (with an earlier candidate of the same
    round, which is kept), ``low_quality`` (embedding score under ``params.quality.min_score``). A row failing
    several checks gets the first reason of that list. ``embedder(params.quality)`` returns an ``embed(texts)`` function
    (normalized rows); it is required with ``params.quality``.
    """
    if not params.near_duplicates and not params.eval_sets and params.quality is None:
        return None
    for path in params.eval_sets:
        if not Path(path).is_file():
            raise MissingFileError(f"synthesize.post_filter.eval_sets: {path} does not exist")
    index = None
    if params.eval_sets:
        items = decontam.load_eval_items(params.eval_sets)
        index = decontam.eval_ngrams(items["text"], params.ngram, min_item_words=min(5, params.ngram))
    dedup = minhash.MinhashParams(threshold=params.threshold)
    gate = params.quality
    embed: Embed | None = None
    reference = np.zeros((0, 0), dtype=np.float32)
    if gate is not None:
        if embedder is None:
            raise TypeError("synthesize.post_filter.quality needs an embedding model (pass `embedder`)")
        from gristmill.ingest import InputSpec, ingest

        ref, _ = ingest(InputSpec(path=gate.reference, mapping=gate.reference_mapping), Path(gate.reference))
        embed = embedder(gate)
        reference = embed(ref["text"].to_list())

    def screen(candidates: pl.DataFrame, pool: pl.DataFrame) -> dict[str, str]:
        ids = candidates["id"].to_list()
        reasons: dict[str, str] = {}
        if index is not None:
            hits = decontam.contamination_hits(candidates["text"], index)
            reasons.update((ids[row], "contaminated") for row in hits["row"].unique().to_list())
        if params.near_duplicates:
            # dedup_minhash annotates meta (cluster_id, duplicate_of); candidates carry a placeholder struct.
            frame = candidates.with_columns(pl.struct(pl.lit(None, pl.String).alias("synth_id")).alias("meta"))
            _, dropped, _ = minhash.dedup_minhash(frame, dedup, earlier=pool)
            for row_id, reason in dropped.select("id", "reason").iter_rows():
                reasons.setdefault(row_id, reason)
        if gate is not None and embed is not None:
            scores = similarity_scores(embed(candidates["text"].to_list()), reference, gate.k)
            for row_id, score in zip(ids, scores.tolist(), strict=True):
                if score < gate.min_score:
                    reasons.setdefault(row_id, "low_quality")
        return reasons

    return screen
