"""The trained classifier signal: label sources, held-out figures, the cache, errors; the real MiniLM marked slow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from gristmill.common.contract import MESSAGES_DTYPE
from gristmill.common.errors import InputError
from gristmill.curation.classifier import Classifier, ClassifierParams, cache_key, parse_label
from gristmill.curation.signals import SignalsParams, fit_classifier, score_signals
from tests.conftest import make_frame

GOOD = [
    ("How do I boil an egg?", "Put the egg in boiling water for nine minutes, then cool it in cold water."),
    ("How do I make tea?", "Steep the tea leaves in hot water for three minutes, then strain and serve."),
    ("How do I cook rice?", "Rinse the rice, simmer it in twice its volume of water for fifteen minutes."),
    ("How do I toast bread?", "Put the slices in the toaster or under the grill until they are golden brown."),
    ("How do I fry an egg?", "Heat oil in a pan, crack the egg in and cook it until the white is set."),
    ("How do I make porridge?", "Simmer oats in milk for five minutes, stirring, then add honey to taste."),
    ("How do I roast potatoes?", "Toss potato chunks in oil and salt, roast them at 200 C for forty minutes."),
    ("How do I brew coffee?", "Pour hot water over ground coffee in a filter and let it drip into the pot."),
]
BAD = [  # other questions than GOOD's: a row's embedding is mostly its question, so shared ones hide the label
    ("How do I grill fish?", "I'm sorry, but I can't help with that request."),
    ("How do I make pancakes?", "I cannot fulfill this request, sorry."),
    ("How do I steam broccoli?", "As an AI language model, I am unable to help with that."),
    ("How do I bake cookies?", "Sorry, I can't assist with requests like this one."),
    ("How do I make soup?", "I apologize, but I am unable to comply with that request."),
    ("How do I scramble eggs?", "I'm sorry, I cannot provide that kind of content."),
    ("How do I cook pasta?", "Unfortunately I can't help with this request."),
    ("How do I make a salad?", "I am not able to answer that, sorry."),
]
UNSEEN = {"good": ("How do I poach an egg?", "Slide the egg into simmering water and cook it for three minutes."),
          "bad": ("How do I bake a cake?", "Sorry, but I cannot help with that request.")}


def _frame(rows: dict[str, tuple[str, str]], **extra: list[object]) -> pl.DataFrame:
    msgs = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in rows.values()]
    return make_frame([f"{q}\n\n{a}" for q, a in rows.values()], ids=list(rows), **extra).with_columns(
        pl.Series("messages", msgs, dtype=MESSAGES_DTYPE))


def _bow(texts: list[str]) -> np.ndarray:
    """A 2-d "embedding": apology words vs cooking words (separable by construction)."""
    sorry = ("sorry", "cannot", "can't", "unable", "apologize", "not able")
    vecs = np.array([[sum(w in t.lower() for w in sorry), 1 + sum(w in t.lower() for w in ("water", "oil", "egg",
                      "minutes", "hot", "simmer"))] for t in texts], dtype=np.float64)
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def _labels_file(path: Path, rows: list[dict[str, object]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_known_answers() -> None:
    clf = Classifier(np.array([2.0, -2.0]), 0.0)
    assert clf.score(np.array([[1.0, 0.0], [0.0, 1.0]])).round(3).tolist() == [0.881, 0.119]
    assert [parse_label(v, "x") for v in ("good", "0", True, 1, None, "reject", "1.0")] == [1, 0, 1, 1, None, 0, 1]
    with pytest.raises(InputError, match="label 'maybe'"):
        parse_label("maybe", "labels.jsonl:3")


def test_labels_file_of_instruction_response_rows_trains_scores_and_thresholds(tmp_path: Path) -> None:
    labels = _labels_file(tmp_path / "labels.jsonl", [{"instruction": q, "response": a, "label": 1} for q, a in GOOD]
                          + [{"instruction": q, "output": a, "label": "bad"} for q, a in BAD])
    params = SignalsParams(relevance=False, classifier=ClassifierParams(labels=labels, min_score=0.5))
    frame = _frame(UNSEEN)
    clf = fit_classifier(frame, params.classifier, embed=_bow, model_key="bow", cache_dir=tmp_path)  # type: ignore[arg-type]
    kept, dropped, stats = score_signals(frame, params, embed=_bow, classifier=clf)
    assert kept["id"].to_list() == ["good"] and dropped["reason"].to_list() == ["signals.min_classifier_score"]
    score = dropped["meta"].struct.field("classifier_score")[0]
    assert score < 0.5 < kept["meta"].struct.field("classifier_score")[0]
    assert dropped["detail"].to_list() == [f"classifier_score={score:.3f} < 0.5"]
    assert stats["classifier_rows"] == {"good": 8, "bad": 8}
    assert stats["classifier_holdout"] == {"rows": 3, "accuracy": 1.0, "auc": 1.0}  # 20% of 16, stratified
    assert stats["classifier_train_accuracy"] == 1.0 and stats["classifier_cached"] is False


def test_review_labels_by_id_csv_and_a_label_column_and_the_cache(tmp_path: Path) -> None:
    rows = {f"g{i}": r for i, r in enumerate(GOOD)} | {f"b{i}": r for i, r in enumerate(BAD)}
    frame = _frame(rows)
    csv = tmp_path / "review.csv"  # what a review import writes: id,label
    csv.write_text("id,label\n" + "".join(f"{k},{1 if k[0] == 'g' else 0}\n" for k in rows)
                   + "dropped-earlier,0\n")  # a review label of a row this step never sees: skipped, counted
    by_id = ClassifierParams(labels=str(csv))
    column = ClassifierParams(label_column="label")
    framed = frame.with_columns(pl.Series("label", [1 if k[0] == "g" else 0 for k in rows]))
    calls: list[int] = []

    def embed(texts: list[str]) -> np.ndarray:
        calls.append(len(texts))
        return _bow(texts)

    first = fit_classifier(frame, by_id, embed=embed, model_key="bow", cache_dir=tmp_path)
    again = fit_classifier(frame, by_id, embed=embed, model_key="bow", cache_dir=tmp_path)
    assert calls == [16] and again.stats["classifier_cached"] is True  # the second fit read the cache
    assert first.stats["classifier_unmatched_ids"] == 1
    assert np.allclose(first.coef, again.coef) and first.intercept == pytest.approx(again.intercept)
    from_column = fit_classifier(framed, column, embed=embed, model_key="bow", cache_dir=tmp_path)
    assert from_column.stats["classifier_cached"] is True  # same texts and labels: the same cached model
    fit_classifier(frame, by_id, embed=embed, model_key="other-model", cache_dir=tmp_path)
    assert calls == [16, 16]  # another embedding model is another key
    assert cache_key(["a"], np.array([1]), "m", by_id) != cache_key(["a"], np.array([0]), "m", by_id)


def test_label_errors_name_the_file_and_the_fix(tmp_path: Path) -> None:
    frame = _frame({"a": GOOD[0], "b": BAD[0]})
    no_label = _labels_file(tmp_path / "a.jsonl", [{"text": "x"}])
    with pytest.raises(InputError, match="no `label` column"):
        fit_classifier(frame, ClassifierParams(labels=no_label), embed=_bow, model_key="m", cache_dir=None)
    unknown = _labels_file(tmp_path / "b.jsonl", [{"id": "zzz", "label": 1}])
    with pytest.raises(InputError, match="none of its 1 id"):
        fit_classifier(frame, ClassifierParams(labels=unknown), embed=_bow, model_key="m", cache_dir=None)
    one_class = _labels_file(tmp_path / "c.jsonl", [{"text": t, "label": 1} for t in ("a", "b", "c")])
    with pytest.raises(InputError, match="2 good and 2 bad"):
        fit_classifier(frame, ClassifierParams(labels=one_class), embed=_bow, model_key="m", cache_dir=None)
    with pytest.raises(InputError, match="no column 'label'"):
        fit_classifier(frame, ClassifierParams(label_column="label"), embed=_bow, model_key="m", cache_dir=None)
    with pytest.raises(ValueError, match="exactly one of labels"):
        ClassifierParams()


@pytest.mark.slow
def test_real_minilm_separates_refusals_from_answers_through_the_step(tmp_path: Path) -> None:
    from gristmill.steps import STEPS, Context

    labels = _labels_file(tmp_path / "labels.jsonl", [{"text": f"{q}\n\n{a}", "label": 1} for q, a in GOOD]
                          + [{"text": f"{q}\n\n{a}", "label": 0} for q, a in BAD])
    params = SignalsParams(relevance=False, classifier=ClassifierParams(labels=labels, min_score=0.5))
    ctx = Context(cache_dir=tmp_path / "cache")
    kept, dropped, stats = STEPS["signals"].run(_frame(UNSEEN), params, ctx)
    assert kept["id"].to_list() == ["good"] and dropped["id"].to_list() == ["bad"]
    assert stats["classifier_holdout"] == {"rows": 3, "accuracy": 1.0, "auc": 1.0}
    assert stats["classifier_cached"] is False and stats["embeddings_computed"] == 18  # 16 labelled + 2 rows
    again = STEPS["signals"].run(_frame(UNSEEN), params, ctx).stats
    assert again["classifier_cached"] is True and again["embeddings_computed"] == 0
