"""Quality signals that measure an instruction row itself, each recorded in ``meta`` and optionally thresholded.

- ``relevance``: cosine between the embeddings of the prompt (user turns) and the response (assistant turns);
  an answer about something else scores low. ``meta.relevance``.
- ``small_model``: per-token loss of the response given the prompt under a small causal LM, and the
  instruction-following difficulty ``ifd = loss(A | Q) / loss(A)`` (curation/lm_loss.py). ``meta.response_loss``,
  ``meta.ifd``.
- ``judge``: an LLM scores each row 1-5 against a rubric (helpfulness, correctness, completeness) in JSON; the
  orchestrator hands over the engine as a plain ``judge(prompts) -> answers`` callable. ``meta.judge_score``
  (null when the answer could not be parsed, with the reason in ``meta.judge_error``; such rows are never dropped
  for it). The judge's cache counters go into the stats.
- ``classifier``: P(good) from a logistic regression trained on embeddings of labelled rows (a labels file, review
  labels by id, or a label column; curation/classifier.py), held-out accuracy/AUC in the stats.
  ``meta.classifier_score``.

A signal without a threshold is only recorded: thresholds are explicit, never a share of the data. A row failing
a threshold is dropped with reason ``signals.<threshold>`` and ``detail`` e.g. ``relevance=0.08 < 0.15``.

Worked example: prompt vector (1, 0), response vector (0.6, 0.8): relevance 0.6; with ``min_relevance: 0.7`` the
row is dropped, detail ``relevance=0.6 < 0.7``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from gristmill.common.contract import StepResult, require, split, with_meta
from gristmill.common.embedding import EmbeddingParams
from gristmill.common.errors import InputError
from gristmill.curation.classifier import Classifier, ClassifierParams, fit_cached, labelled_rows, parse_label
from gristmill.curation.rulebase import fmt_number

VERSION = "2"  # 2: classifier signal, meta.judge_error

Chat = list[dict[str, str]]
LossFn = Callable[[list[Chat], list[str]], tuple[list[float], list[float]]]
JudgeFn = Callable[[list[Chat]], list[str]]


class JudgeParams(BaseModel):
    """An LLM judge through the synthesis engine (vLLM in-process or an OpenAI-compatible server), cached."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    model: str = "smollm2-135m-instruct"
    """Judge model: a registered name or local directory (engine vllm), or the server's model name (openai)."""
    engine: Literal["vllm", "openai"] = "vllm"
    """vllm (in-process) or openai (an OpenAI-compatible server at base_url)."""
    base_url: str | None = None
    """engine openai: the server's base URL, e.g. http://127.0.0.1:8000/v1."""
    api_key_env: str | None = None
    """engine openai: the environment variable holding the API key, if the server needs one."""
    max_tokens: int = Field(96, ge=16)
    """Tokens the judge may write (a short JSON object)."""
    min_score: float | None = Field(None, ge=1, le=5)
    """Drop rows whose mean rubric score is below this (1-5); None records the score only."""


class SignalsParams(EmbeddingParams):
    """Per-row quality signals of instruction rows; every score lands in meta, thresholds are explicit."""

    relevance: bool = True
    """Record meta.relevance, the prompt-response embedding cosine (model: the embedding fields)."""
    min_relevance: float | None = Field(None, ge=-1, le=1)
    """Drop rows whose relevance is below this; None records it only."""
    small_model: str | None = None
    """A causal LM (registered name or local HF directory) for meta.response_loss and meta.ifd; None skips it."""
    max_response_loss: float | None = Field(None, gt=0)
    """Drop rows whose response loss (nats per token, given the prompt) is above this; None records it only."""
    max_ifd: float | None = Field(None, gt=0)
    """Drop rows whose IFD (loss with the prompt / loss without) is above this; None records it only."""
    lm_max_tokens: int = Field(256, ge=8)
    """Response tokens scored by the small model (longer responses are cut)."""
    lm_batch_size: int = Field(8, ge=1)
    """Sequences per small-model forward pass."""
    judge: JudgeParams | None = None
    """An LLM judge's rubric score (meta.judge_score); None skips it."""
    classifier: ClassifierParams | None = None
    """A good/bad classifier trained on embeddings of labelled rows (meta.classifier_score); None skips it."""


RUBRIC = (
    "You grade an assistant's answer to a user's request. Rate it from 1 (bad) to 5 (excellent) on helpfulness, "
    "correctness and completeness. Reply with only a JSON object: "
    '{"helpfulness": <1-5>, "correctness": <1-5>, "completeness": <1-5>}.'
)
_RUBRIC_KEYS = ("helpfulness", "correctness", "completeness")
JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object", "required": list(_RUBRIC_KEYS), "additionalProperties": False,
    "properties": {k: {"type": "integer", "minimum": 1, "maximum": 5} for k in _RUBRIC_KEYS},
}
"""Structured output for engines that support it (vLLM, OpenAI-compatible servers); parsing never relies on it."""


def judge_prompt(prompt: str, response: str) -> Chat:
    """The judge's chat for one row (a system rubric and the row to grade)."""
    return [{"role": "system", "content": RUBRIC},
            {"role": "user", "content": f"Request:\n{prompt}\n\nAnswer:\n{response}\n\nJSON grade:"}]


def parse_judgement(answer: str) -> float | None:
    """The mean rubric score of a judge's answer, or None when it holds no usable grade.

    Takes the first JSON object holding any rubric key; scores must be numbers in 1..5.
    >>> parse_judgement('Sure! {"helpfulness": 4, "correctness": 5, "completeness": 3}')
    4.0
    >>> parse_judgement('{"helpfulness": 9}'), parse_judgement("great answer"), parse_judgement('{"x": 1}')
    (None, None, None)
    """
    return judgement(answer)[0]


def judgement(answer: str) -> tuple[float | None, str | None]:
    """(mean rubric score, None) of a judge's answer, or (None, why it holds no usable grade).

    >>> judgement('{"helpfulness": 4, "correctness": 5, "completeness": 3}'), judgement('{"helpfulness": 9}')
    ((4.0, None), (None, 'helpfulness=9 not a number in 1-5'))
    """
    if not (answer or "").strip():
        return None, "empty answer"
    for match in re.finditer(r"\{[^{}]*\}", answer):
        try:
            data = json.loads(match.group(0))
        except json.JSONDecodeError:
            continue
        if not isinstance(data, dict):
            continue
        scores = {k: data[k] for k in _RUBRIC_KEYS if k in data}
        if not scores:
            continue
        for k, v in scores.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or not 1 <= v <= 5:
                return None, f"{k}={json.dumps(v)} not a number in 1-5"
        return float(sum(scores.values()) / len(scores)), None
    return None, f"no JSON object with a rubric key in {answer.strip()[:60]!r}"


def fit_classifier(frame: pl.DataFrame, params: ClassifierParams, *, embed: Callable[[list[str]], np.ndarray],
                   model_key: str, cache_dir: Path | None) -> Classifier:
    """The classifier of ``params``: trained (or read from the cache) on the labels file or the label column."""
    require(frame, ["id", "text"], "signals (classifier)")
    unmatched = 0
    if params.labels is not None:
        texts, labels, unmatched = labelled_rows(Path(params.labels), frame)
    else:
        column = params.label_column
        if column not in frame.columns:
            raise InputError(f"signals.classifier.label_column: the input has no column {column!r}; columns: "
                             f"{frame.columns}")
        pairs = [(t or "", parse_label(v, f"signals.classifier.label_column {column!r}, row {i}"))
                 for i, (t, v) in enumerate(zip(frame["text"].to_list(), frame[column].to_list(), strict=True))]
        texts = [t for t, v in pairs if v is not None]
        labels = np.asarray([v for _, v in pairs if v is not None], dtype=np.int8)
    fitted = fit_cached(texts, labels, embed, model_key, params, cache_dir)
    fitted.stats["classifier_unmatched_ids"] = unmatched
    return fitted


def prompt_response(messages: list[dict[str, Any]] | None) -> tuple[Chat, str]:
    """(the conversation up to the last assistant turn, that turn's content); ([], "") without one."""
    messages = messages or []
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    if last is None:
        return [{"role": m["role"], "content": m["content"] or ""} for m in messages], ""
    return ([{"role": m["role"], "content": m["content"] or ""} for m in messages[:last]],
            messages[last].get("content") or "")


def _user_text(chat: Chat) -> str:
    return "\n\n".join(m["content"] for m in chat if m["role"] == "user")


def relevance_scores(prompt_vecs: np.ndarray, response_vecs: np.ndarray) -> np.ndarray:
    """Row-wise cosine of normalized vectors: ``[[1, 0]]`` vs ``[[0.6, 0.8]]`` -> ``[0.6]``."""
    if prompt_vecs.shape[0] == 0:
        return np.zeros(0)
    return np.einsum("ij,ij->i", prompt_vecs, response_vecs)


def _reason(values: list[float | None], name: str, bound: float | None, below: bool) -> list[tuple[str, str] | None]:
    out: list[tuple[str, str] | None] = []
    for v in values:
        if bound is None or v is None or math.isnan(v) or (v >= bound if below else v <= bound):
            out.append(None)
        else:
            op = "<" if below else ">"
            key = ("min_" if below else "max_") + name
            out.append((f"signals.{key}", f"{name}={v:.3f} {op} {fmt_number(bound)}"))
    return out


def score_signals(frame: pl.DataFrame, params: SignalsParams, *, embed: Callable[[list[str]], np.ndarray] | None = None,
                  losses: LossFn | None = None, judge: JudgeFn | None = None,
                  classifier: Classifier | None = None) -> StepResult:
    """Compute the enabled signals; ``embed`` (normalized vectors), ``losses`` (loss with/without the prompt),
    ``judge`` and the fitted ``classifier`` (:func:`fit_classifier`) are supplied by the orchestrator for the
    signals the params enable."""
    require(frame, ["messages"], "signals")
    chats, responses = zip(*(prompt_response(m) for m in frame["messages"].to_list()), strict=True) if frame.height \
        else ((), ())
    meta: dict[str, pl.Series] = {}
    checks: list[list[tuple[str, str] | None]] = []
    stats: dict[str, Any] = {}
    if params.relevance:
        if embed is None:
            raise TypeError("signals: relevance needs an embed function")  # a wiring bug, not input
        prompts = [_user_text(c) for c in chats]
        rel = relevance_scores(embed(prompts), embed(list(responses))) if chats else np.zeros(0)
        values = [None if not r.strip() else float(v) for v, r in zip(rel, responses, strict=True)]
        meta["relevance"] = pl.Series(values, dtype=pl.Float64)
        checks.append(_reason(values, "relevance", params.min_relevance, below=True))
    if params.small_model is not None:
        if losses is None:
            raise TypeError("signals: small_model needs a losses function")
        with_q, alone = losses(list(chats), list(responses)) if chats else ([], [])
        ifd = [w / a if a and not math.isnan(a) and not math.isnan(w) else None for w, a in zip(with_q, alone,
                                                                                                strict=True)]
        loss = [None if math.isnan(w) else w for w in with_q]
        meta["response_loss"] = pl.Series(loss, dtype=pl.Float64)
        meta["ifd"] = pl.Series(ifd, dtype=pl.Float64)
        checks.append(_reason(loss, "response_loss", params.max_response_loss, below=False))
        checks.append(_reason(ifd, "ifd", params.max_ifd, below=False))
    if params.judge is not None:
        if judge is None:
            raise TypeError("signals: judge needs a judge function")
        answers = judge([judge_prompt(_user_text(c), r) for c, r in zip(chats, responses, strict=True)])
        graded = [judgement(a) for a in answers]
        scores = [g[0] for g in graded]
        meta["judge_score"] = pl.Series(scores, dtype=pl.Float64)
        meta["judge_error"] = pl.Series([g[1] for g in graded], dtype=pl.String)
        stats["judge_unparsed"] = sum(s is None for s in scores)
        checks.append(_reason(scores, "judge_score", params.judge.min_score, below=True))
    if params.classifier is not None:
        if classifier is None or embed is None:
            raise TypeError("signals: classifier needs the fitted classifier and an embed function")
        texts = frame["text"].fill_null("").to_list() if "text" in frame.columns else \
            [_user_text(c) + "\n\n" + r for c, r in zip(chats, responses, strict=True)]
        probs = [float(p) for p in classifier.score(embed(texts))] if texts else []
        meta["classifier_score"] = pl.Series(probs, dtype=pl.Float64)
        stats |= classifier.stats
        checks.append(_reason(probs, "classifier_score", params.classifier.min_score, below=True))
    if not checks:
        raise InputError("signals: enable at least one signal (relevance, small_model, judge or classifier)")
    scored = with_meta(frame, **meta) if meta else frame
    first = [next((c for c in row if c is not None), None) for row in zip(*checks, strict=True)] if checks else []
    reason = pl.Series([c[0] if c else None for c in first], dtype=pl.String)
    detail = pl.Series([c[1] if c else None for c in first], dtype=pl.String)
    kept, dropped = split(scored.with_columns(detail.alias("detail")), reason)
    for name, series in meta.items():
        if series.dtype == pl.String:
            continue
        valid = series.drop_nulls().drop_nans()
        stats[f"{name}_p10_p50_p90"] = [round(float(q), 4) for q in np.quantile(valid, [0.1, 0.5, 0.9])] \
            if valid.len() else []
    return StepResult(kept.drop("detail"), dropped, stats, rows_in=frame.height)
