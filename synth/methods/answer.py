"""Answer: fill in the assistant turn of instruction-only rows, rewriting those rows in place (same id).

A row needs an answer when its ``messages`` end with a user turn, or hold an assistant turn with empty content
(the first such turn is filled). Each round sends one plain chat prompt per row still unanswered (the
conversation up to the open turn, after an optional ``system`` prompt) as one batch; answers are checked with
the plain-text parser (``truncated``, ``empty``, ``too_short``, ``refusal``, ``too_long``) and a failed row is
asked again next round, up to ``max_rounds``.

Accounting is per row, not per attempt: answering adds no rows (the ``StepResult``'s ``added`` = 0).
``kept`` holds every input row in its original order, the answered ones rewritten (messages, text,
``meta.synth`` provenance with ``source_ids`` = the row's own id); ``dropped`` holds the rows still unanswered
after the last round, with the reason of their last attempt, so ``rows_in == kept + dropped``. Rows beyond the ``n`` cap stay unchanged in
``kept`` (``left_unanswered``); every rejected attempt is counted in ``attempts_rejected_by_reason``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import polars as pl
from pydantic import Field

from gristmill.common.contract import StepResult, no_drops
from gristmill.common.text import messages_text
from gristmill.synth.methods.base import Engine, GenerationParams, Ledger, sampling_config, template_hash
from gristmill.synth.methods.common import Chat
from gristmill.synth.parse import Rejected, parse_answer

VERSION = "2"  # 2: StepResult, text by gristmill.common.text (whitespace-only turns skipped)


class AnswerParams(GenerationParams):
    method: Literal["answer"] = "answer"
    """Generate the missing assistant answers of instruction-only rows (rows are rewritten, not added)."""
    n: int | None = Field(None, ge=1)  # type: ignore[assignment]
    """Rows to answer at most, in frame order; default: every row without an answer."""
    system: str | None = None
    """System prompt put before conversations that have none."""
    min_output_words: int = Field(1, ge=1)
    """Reject an answer with fewer words (``too_short``)."""


@dataclass
class AnswerLedger(Ledger):
    """A ledger whose candidates rewrite input rows: answered rows by row index, and the last failure of each
    row that is still unanswered."""

    answered: dict[int, dict[str, Any]] = field(default_factory=dict)
    failed: dict[int, tuple[str, str, dict[str, Any]]] = field(default_factory=dict)
    attempt_reasons: dict[str, int] = field(default_factory=dict)

    def fail(self, row: int, raw_text: str, reason: str, provenance: dict[str, Any]) -> None:
        self.attempt_reasons[reason] = self.attempt_reasons.get(reason, 0) + 1
        self.failed[row] = (raw_text, reason, provenance)

    def rewrite(self, row: int, messages: list[dict[str, str]], provenance: dict[str, Any]) -> None:
        self.failed.pop(row, None)
        self.answered[row] = {"messages": messages, "text": messages_text(messages), "synth": provenance}

    def result(self, frame: pl.DataFrame) -> StepResult:
        indexed = frame.with_row_index("__row")
        rows = indexed.filter(pl.col("__row").is_in(list(self.answered))).to_dicts()
        for row in rows:
            new = self.answered[row["__row"]]
            row.update(messages=new["messages"], text=new["text"], meta=(row.get("meta") or {}) | {"synth": new["synth"]})
        touched = pl.col("__row").is_in([*self.answered, *self.failed])
        parts = [indexed.filter(~touched)]
        if rows:
            parts.append(pl.DataFrame(rows, schema_overrides={"messages": frame.schema["messages"]},
                                      infer_schema_length=None))
        kept = pl.concat(parts, how="diagonal_relaxed").sort("__row").drop("__row")
        lost = indexed.filter(pl.col("__row").is_in(list(self.failed))).to_dicts()
        for row in lost:
            raw, reason, prov = self.failed[row["__row"]]
            row.update(reason=reason, meta=(row.get("meta") or {}) | {"synth": prov | {"last_output": raw}})
        dropped = pl.DataFrame(lost, infer_schema_length=None).drop("__row") if lost else no_drops(frame)
        stats = self.yield_stats(len(self.answered)) | {
            "answered": len(self.answered), "attempts_rejected_by_reason": dict(self.attempt_reasons)}
        return StepResult(kept, dropped, stats, rows_in=frame.height)


def open_turn(messages: list[dict[str, str]] | None) -> int | None:
    """Index of the turn to fill: the first empty assistant turn after a user turn, or the end when the
    conversation ends with a user turn; ``None`` when the row needs no answer.

    >>> open_turn([{"role": "user", "content": "Hi"}]), open_turn([{"role": "user", "content": "Hi"},
    ...                                                           {"role": "assistant", "content": " "}])
    (1, 1)
    """
    if not messages:
        return None
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and not (m["content"] or "").strip():
            return i if any(x["role"] == "user" for x in messages[:i]) else None
    return len(messages) if messages[-1]["role"] == "user" else None


def run(frame: pl.DataFrame, params: AnswerParams, *, engine: Engine, model_name: str) -> StepResult:
    """Answer the open turns of ``frame``'s rows (its own small driver: rows are rewritten, not added, so the
    new-row loop's quotas and post-filter do not apply; the ledger, the answer parser and rounds are shared)."""
    sampling = sampling_config(params, params.max_tokens)
    ledger = AnswerLedger("answer", model_name, engine, sampling, params.seed, template_hash(params.system or ""))
    todo: list[tuple[int, str, Chat, int]] = []  # (row index, id, messages, open turn)
    if "messages" in frame.columns:
        for row, (row_id, msgs) in enumerate(zip(frame["id"].to_list(), frame["messages"].to_list(), strict=True)):
            turn = open_turn(msgs)
            if turn is not None:
                todo.append((row, str(row_id), [{"role": m["role"], "content": m["content"] or ""} for m in msgs],
                             turn))
    cap = len(todo) if params.n is None else min(params.n, len(todo))
    pending, left = todo[:cap], len(todo) - cap
    for round_no in range(params.max_rounds):
        if not pending:
            break
        prompts: list[Chat] = []
        for _, _, msgs, turn in pending:
            has_system = any(m["role"] == "system" for m in msgs)
            prompts.append(([{"role": "system", "content": params.system}] if params.system and not has_system
                            else []) + msgs[:turn])
        retry = []
        for (row, row_id, msgs, turn), gen in zip(pending, ledger.generate(prompts), strict=True):
            prov = ledger.provenance(source_ids=[row_id], round=round_no, turn=turn)
            try:
                text = parse_answer(gen.text, gen.finish_reason, min_words=params.min_output_words)
                ledger.counts["parsed"] += 1
            except Rejected as rej:
                ledger.fail(row, gen.text, rej.reason, prov)
                retry.append((row, row_id, msgs, turn))
                continue
            reply = {"role": "assistant", "content": text}
            ledger.rewrite(row, [*msgs[:turn], reply, *msgs[turn + 1:]], prov)
        pending = retry
    result = ledger.result(frame)
    result.stats |= {"needed_answer": len(todo), "left_unanswered": left}
    return result
