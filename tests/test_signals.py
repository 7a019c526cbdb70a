"""Quality signals: relevance, small-model loss/IFD and the judge (known answers; real models marked slow)."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from gristmill.common.contract import MESSAGES_DTYPE
from gristmill.curation.lm_loss import mean_nll
from gristmill.curation.signals import (
    JudgeParams,
    SignalsParams,
    parse_judgement,
    prompt_response,
    relevance_scores,
    score_signals,
)
from tests.conftest import make_frame

ROWS = {
    "bread": ("How do I bake bread at home?", "Mix flour, water, salt and yeast, let it rise, then bake the bread hot."),
    "tax": ("How do I bake bread at home?", "File your tax return before the April deadline."),
    "empty": ("How do I bake bread at home?", ""),
}


def _frame(rows: dict[str, tuple[str, str]]) -> pl.DataFrame:
    msgs = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in rows.values()]
    return make_frame([f"{q}\n\n{a}" for q, a in rows.values()], ids=list(rows)).with_columns(
        pl.Series("messages", msgs, dtype=MESSAGES_DTYPE))


def _bow(texts: list[str]) -> np.ndarray:
    vocab = ["bake", "bread", "flour", "tax", "file", "home"]
    vecs = np.array([[t.lower().count(w) for w in vocab] for t in texts], dtype=np.float64) + 1e-9
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def _meta(result: object, field: str) -> dict[str, float | None]:
    kept, dropped, _ = result  # type: ignore[misc]
    rows = [*kept.iter_rows(named=True), *dropped.iter_rows(named=True)]
    return {r["id"]: r["meta"][field] for r in rows}


def test_known_answers() -> None:
    assert relevance_scores(np.array([[1.0, 0.0]]), np.array([[0.6, 0.8]])).tolist() == [0.6]
    assert mean_nll([math.log(0.5), math.log(0.25)]) == pytest.approx(1.0397, abs=1e-4)
    assert prompt_response([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                            {"role": "user", "content": "thanks"}]) == ([{"role": "user", "content": "q"}], "a")
    assert prompt_response([{"role": "user", "content": "q"}]) == ([{"role": "user", "content": "q"}], "")


def test_relevance_recorded_and_thresholded_with_detail() -> None:
    frame = _frame(ROWS)
    result = score_signals(frame, SignalsParams(), embed=_bow)
    assert result.dropped.height == 0  # no threshold: recorded only
    rel = _meta(result, "relevance")
    assert rel["bread"] > 0.5 > rel["tax"] and rel["empty"] is None
    kept, dropped, stats = score_signals(frame, SignalsParams(min_relevance=0.5), embed=_bow)
    assert kept["id"].to_list() == ["bread", "empty"]
    assert dropped["reason"].to_list() == ["signals.min_relevance"]
    assert dropped["detail"].to_list() == [f"relevance={rel['tax']:.3f} < 0.5"]
    assert "detail" not in kept.columns and len(stats["relevance_p10_p50_p90"]) == 3


def test_small_model_ifd_from_losses() -> None:
    def losses(prompts: list, responses: list[str]) -> tuple[list[float], list[float]]:
        table = {"bread": (1.0, 2.0), "tax": (3.0, 2.5)}
        keys = ["bread" if "flour" in r else "tax" if r else "" for r in responses]
        return [table.get(k, (math.nan,))[0] for k in keys], [table.get(k, (0, math.nan))[1] for k in keys]

    params = SignalsParams(relevance=False, small_model="lm", max_ifd=1.0)
    result = score_signals(_frame(ROWS), params, losses=losses)
    assert _meta(result, "ifd") == {"bread": 0.5, "tax": 1.2, "empty": None}
    assert _meta(result, "response_loss") == {"bread": 1.0, "tax": 3.0, "empty": None}
    assert result.dropped["detail"].to_list() == ["ifd=1.200 > 1"]


def test_judge_scores_parsed_and_bad_outputs_never_drop() -> None:
    answers = iter(['{"helpfulness": 5, "correctness": 4, "completeness": 5}',
                    'I think {"helpfulness": 1, "correctness": 2, "completeness": 1} overall',
                    "no json at all"])
    seen: list[list[dict[str, str]]] = []

    def judge(prompts: list[list[dict[str, str]]]) -> list[str]:
        seen.extend(prompts)
        return [next(answers) for _ in prompts]

    params = SignalsParams(relevance=False, judge=JudgeParams(min_score=3))
    kept, dropped, stats = score_signals(_frame(ROWS), params, judge=judge)
    assert dropped["id"].to_list() == ["tax"] and dropped["detail"].to_list() == ["judge_score=1.333 < 3"]
    assert stats["judge_unparsed"] == 1 and kept["id"].to_list() == ["bread", "empty"]
    assert seen[0][0]["role"] == "system" and "How do I bake bread" in seen[0][1]["content"]


@pytest.mark.parametrize("bad", ['{"helpfulness": 7}', '{"helpfulness": "five"}', '{"helpfulness": true}', "{",
                                 "", '["helpfulness", 5]', '{"other": 3}'])
def test_judge_parsing_rejects_crafted_bad_outputs(bad: str) -> None:
    assert parse_judgement(bad) is None


def test_judge_parsing_takes_the_first_grade() -> None:
    assert parse_judgement('{"a": 1} then {"helpfulness": 2} and {"helpfulness": 5}') == 2.0
    assert parse_judgement('```json\n{"helpfulness": 4, "correctness": 5, "completeness": 3}\n```') == 4.0


def test_wiring_errors() -> None:
    with pytest.raises(TypeError, match="embed"):
        score_signals(_frame(ROWS), SignalsParams())
    with pytest.raises(ValueError, match="at least one signal"):
        score_signals(_frame(ROWS), SignalsParams(relevance=False))


@pytest.mark.slow
def test_real_models_rank_an_off_topic_answer_lower(tmp_path: object) -> None:
    from gristmill.curation.embed import Embedder
    from gristmill.curation.lm_loss import response_losses
    from gristmill.models import resolve

    rows = {
        "bread": ("How do I bake bread at home?",
                  "Mix flour, water, salt and yeast into a dough, knead it, let it rise for an hour, then bake it."),
        "tax": ("How do I bake bread at home?", "File your tax return online before the April deadline to avoid "
                                                "a late-payment penalty."),
    }
    embedder = Embedder(resolve("minilm-l6"), cache_path=tmp_path / "emb.sqlite")  # type: ignore[operator]
    lm = resolve("smollm2-135m-instruct")
    result = score_signals(_frame(rows), SignalsParams(small_model=lm), embed=embedder.encode,
                           losses=lambda p, r: response_losses(lm, p, r))
    rel, ifd = _meta(result, "relevance"), _meta(result, "ifd")
    assert rel["bread"] > rel["tax"]  # type: ignore[operator]
    assert ifd["bread"] < ifd["tax"]  # type: ignore[operator]


def test_quality_step_names_its_score_and_explains_drops() -> None:
    from pydantic import ValidationError

    from gristmill.curation.quality import KeepRule, QualityParams, score_quality

    with pytest.raises(ValidationError, match="keep"):  # top_fraction is never a default
        QualityParams(reference="gold")
    frame = make_frame(["bread", "tax"])
    table = {"bread": [1.0, 0.0], "tax": [0.6, 0.8]}
    params = QualityParams(reference="gold", keep=KeepRule(min_score=0.7), k=1)
    kept, dropped, _ = score_quality(frame, params, embed=lambda t: np.array([table[x] for x in t]),
                                     reference=np.array([[1.0, 0.0]]))
    assert kept["meta"].struct.field("reference_similarity").to_list() == [1.0]
    assert dropped["detail"].to_list() == ["reference_similarity=0.6 < 0.7"] and "detail" not in kept.columns
