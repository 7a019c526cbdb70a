from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from gristmill.common.contract import with_meta
from gristmill.curation import semdedup
from gristmill.curation.semdedup import (
    SemanticDedupParams,
    cluster_labels,
    dedup_semantic,
    preference_rank,
    similar_pairs,
)
from tests.conftest import make_frame


def _unit(rows: list[list[float]]) -> np.ndarray:
    v = np.asarray(rows, dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# Rows 0, 2, 4 are near-identical (cosine > 0.99); rows 1 and 3 point elsewhere.
VECS = _unit([[1, 0, 0, 0], [0, 1, 0, 0], [1, 0.05, 0, 0], [0, 0, 1, 0], [1, 0, 0.08, 0]])


def _fake_embed(vecs: np.ndarray) -> tuple[list[list[str]], Callable[[list[str]], np.ndarray]]:
    calls: list[list[str]] = []

    def embed(texts: list[str]) -> np.ndarray:
        calls.append(texts)
        return vecs[: len(texts)]

    return calls, embed


def _meta(frame: pl.DataFrame, name: str) -> dict[str, object]:
    return dict(zip(frame["id"], frame["meta"].struct.field(name).to_list(), strict=True))


def _accounted(frame: pl.DataFrame, kept: pl.DataFrame, dropped: pl.DataFrame) -> None:
    assert kept.height + dropped.height == frame.height
    assert dropped["reason"].null_count() == 0
    assert sorted(kept["id"].to_list() + dropped["id"].to_list()) == sorted(frame["id"].to_list())


@pytest.mark.parametrize("n_clusters", [None, 1, 2])
def test_near_identical_vectors_collapse_to_the_first(n_clusters: int | None) -> None:
    frame = make_frame(list("abcde"))
    calls, embed = _fake_embed(VECS)
    kept, dropped, stats = dedup_semantic(frame, SemanticDedupParams(n_clusters=n_clusters), embed=embed)
    _accounted(frame, kept, dropped)
    assert calls == [list("abcde")]
    assert kept["id"].to_list() == ["r0", "r1", "r3"]
    assert set(dropped["reason"]) == {"semantic_duplicate"}
    assert _meta(dropped, "duplicate_of") == {"r2": "r0", "r4": "r0"}
    assert _meta(kept, "duplicate_of") == {"r0": None, "r1": None, "r3": None}
    clusters = {**_meta(kept, "semantic_cluster"), **_meta(dropped, "semantic_cluster")}
    assert clusters["r0"] == clusters["r2"] == clusters["r4"]
    assert _meta(kept, "source_line") == {"r0": 1, "r1": 2, "r3": 4}  # earlier meta survives
    assert stats["similar_pairs"] == 3 and stats["duplicate_groups"] == 1
    assert stats["clusters"] == (n_clusters or 2)


def test_keep_quality_picks_the_highest_score() -> None:
    frame = with_meta(make_frame(list("abcde")), quality_score=pl.Series([0.2, 0.5, 0.9, 0.1, None]))
    _, embed = _fake_embed(VECS)
    kept, dropped, _ = dedup_semantic(frame, SemanticDedupParams(n_clusters=1), embed=embed)
    assert kept["id"].to_list() == ["r1", "r2", "r3"]
    assert _meta(dropped, "duplicate_of") == {"r0": "r2", "r4": "r2"}
    kept, _, _ = dedup_semantic(frame, SemanticDedupParams(n_clusters=1, keep="first"), embed=embed)
    assert kept["id"].to_list() == ["r0", "r1", "r3"]


def test_keep_random_is_seeded_and_keeps_one_per_group() -> None:
    frame = make_frame(list("abcde"))
    _, embed = _fake_embed(VECS)
    runs = [dedup_semantic(frame, SemanticDedupParams(keep="random", seed=s, n_clusters=1), embed=embed)
            for s in (3, 3, 4, 5, 6)]
    assert runs[0].kept["id"].to_list() == runs[1].kept["id"].to_list()
    for kept, dropped, _ in runs:
        survivor = ({"r0", "r2", "r4"} & set(kept["id"])).pop()
        assert {"r1", "r3"} <= set(kept["id"]) and set(_meta(dropped, "duplicate_of").values()) == {survivor}


def test_groups_are_transitive_and_threshold_one_catches_identical() -> None:
    # cos(a,b) = cos(b,c) ~ 0.966 but cos(a,c) = 0.866: one group at threshold 0.95.
    angles = np.radians([0, 15, 30, 90])
    vecs = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    frame = make_frame(list("abcd"))
    _, dropped, _ = dedup_semantic(frame, SemanticDedupParams(n_clusters=1), embed=lambda t: vecs)
    assert _meta(dropped, "duplicate_of") == {"r1": "r0", "r2": "r0"}
    same = _unit([[0.3, 0.4, 0.5]] * 3 + [[0.5, 0.4, 0.3]])
    _, dropped, _ = dedup_semantic(frame, SemanticDedupParams(threshold=1.0), embed=lambda t: same)
    assert _meta(dropped, "duplicate_of") == {"r1": "r0", "r2": "r0"}


def test_similar_pairs_only_within_a_cluster_and_across_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    vecs = _unit([[1, 0], [0.99, 0.14], [0, 1], [1, 0], [0.01, 1]])
    left, right = similar_pairs(vecs, np.array([0, 0, 0, 1, 0]), 0.95)
    assert sorted(zip(left.tolist(), right.tolist(), strict=True)) == [(0, 1), (2, 4)]  # row 3 is alone
    monkeypatch.setattr(semdedup, "_BLOCK", 2)
    left, right = similar_pairs(vecs, np.zeros(5, dtype=np.int64), 0.95)
    assert sorted(zip(left.tolist(), right.tolist(), strict=True)) == [(0, 1), (0, 3), (1, 3), (2, 4)]


def test_cluster_labels_and_preference_rank_known_answer() -> None:
    vecs = _unit([[1, 0], [1, 0.01], [0, 1], [0.01, 1]])
    labels = cluster_labels(vecs, 2, seed=0)
    assert labels[0] == labels[1] != labels[2] == labels[3]
    assert cluster_labels(vecs, 10, seed=0).max() <= 3  # capped at the number of rows
    frame = with_meta(make_frame(list("abc")), quality_score=pl.Series([0.2, 0.9, None]))
    assert preference_rank(frame, "quality", 0).tolist() == [-0.2, -0.9, float("inf")]
    assert preference_rank(frame, "first", 0).tolist() == [0.0, 0.0, 0.0]


def test_empty_frame_and_bad_embedding_shape() -> None:
    frame = make_frame(["x"]).head(0)
    kept, dropped, stats = dedup_semantic(frame, SemanticDedupParams(), embed=lambda t: np.zeros((0, 4)))
    assert kept.height == dropped.height == 0 and stats["clusters"] == 0
    with pytest.raises(ValueError, match=r"embed returned shape \(1, 4\) for 2 texts"):
        dedup_semantic(make_frame(["a", "b"]), SemanticDedupParams(), embed=lambda t: np.zeros((1, 4)))


def test_params_validate() -> None:
    with pytest.raises(ValueError):
        SemanticDedupParams(threshold=1.5)
    with pytest.raises(ValueError):
        SemanticDedupParams(keep="best")
    with pytest.raises(ValueError):
        SemanticDedupParams(n_clusters=0)


@pytest.mark.slow
def test_real_minilm_groups_paraphrases(tmp_path: Path) -> None:
    from gristmill import models
    from gristmill.curation.embed import Embedder
    from gristmill.steps import STEPS, Context

    texts = [
        "How do I reset my password?",
        "The cat sat on the warm windowsill all afternoon.",
        "What is the way to reset my password?",
        "Quarterly tax filings are due at the end of the month.",
        "Photosynthesis converts sunlight into chemical energy in plants.",
    ]
    frame = make_frame(texts)
    embedder = Embedder(models.resolve("minilm-l6"))
    kept, dropped, _ = dedup_semantic(frame, SemanticDedupParams(), embed=embedder.encode)
    assert _meta(dropped, "duplicate_of") == {"r2": "r0"}
    assert kept["id"].to_list() == ["r0", "r1", "r3", "r4"]

    # Through the registered step: model from the registry, vectors from the shared cache on a re-run.
    ctx = Context(cache_dir=tmp_path)
    step = STEPS["dedup_semantic"]
    _, dropped, stats = step.run(frame, SemanticDedupParams(), ctx)
    assert _meta(dropped, "duplicate_of") == {"r2": "r0"} and stats["embeddings_computed"] == 5
    assert ctx.models["dedup_semantic"] == models.resolve("minilm-l6")
    _, _, stats = step.run(frame, SemanticDedupParams(), ctx)
    assert stats["embeddings_cached"] == 5 and (tmp_path / "embeddings.sqlite").exists()
