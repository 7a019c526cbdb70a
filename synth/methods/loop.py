"""The one synthesis loop: rounds of propose -> generate -> judge -> quota -> answer -> accept -> post-filter.

A method that adds rows is a ``LoopMethod``: it says how it builds prompts and how it reads and judges the
answers (the split distilabel calls ``format_input`` / ``format_output``), nothing else:

- ``propose(state, bucket, count, rng)``: ``count`` ``Proposal`` s (chat prompt, candidate-id parts, provenance);
- ``parse(proposal, generation)``: the record in an answer, or ``Rejected`` (a returned record counts as
  ``parsed``);
- ``judge(proposal, record)``: a ``Draft`` (the new row's messages) or ``Rejected``. A draft whose messages end
  with a user turn needs an answer: the loop asks for all of a round's answers in one second batch (the method's
  params are then ``AnsweredParams``) and appends the answer as the assistant turn;
- optional: ``quotas()`` (rows wanted per bucket, default ``{None: n}``; gap_fill has one bucket per gap),
  ``on_accept(draft)`` (novelty pools) and ``stats(done)``.

The loop owns the rest, once for all methods: each round asks ``batch_size(missing, oversample)`` =
``ceil(missing * oversample)`` prompts per bucket still short; a candidate that passes the judge when its bucket
is full is rejected ``over_quota`` (checked before its answer is generated, so it costs no answer tokens); an
answer is judged by ``parse_answer`` (``truncated``, ``empty``, ``too_short``, ``refusal``, ``too_long``); after
each round the post-filter settles the round's rows, and the rows it removes are asked for again next round.

Worked example (n=2, oversample=1.5, one stage, no post-filter): round 0 sends ceil(2 * 1.5) = 3 prompts; the
answers judge [ok, not_novel, ok] -> 2 accepted, 1 rejected, no round 1. Had all three passed, the third would be
``over_quota``. The result: ``StepResult(added=3, kept=rows_in + 2, dropped=1)``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import polars as pl

from gristmill.common.contract import StepResult
from gristmill.common.text import messages_text
from gristmill.synth.engine import Generation
from gristmill.synth.methods.base import (
    AnsweredParams,
    Engine,
    Ledger,
    NewRowParams,
    Screen,
    sampling_config,
    template_hash,
)
from gristmill.synth.methods.common import Chat, batch_size
from gristmill.synth.parse import Rejected, parse_answer

VERSION = "1"
"""Part of every loop method's step version (``methods.version_for``): bump when the loop's behaviour changes."""

SORRY_BELOW_WORDS = 80
"""An answer saying "sorry" in fewer words is a refusal (WizardLM's elimination rule)."""

P = TypeVar("P", bound=NewRowParams)


@dataclass(frozen=True)
class Proposal:
    """One prompt of a round and what the method needs to judge its answer."""

    prompt: Chat
    key: tuple[object, ...] = ()
    """Parts of the candidate id besides round, index and answer text (e.g. the source id)."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """Provenance fields of the candidate (``source_ids``, ``seed_ids``, ...); the loop adds ``round``."""
    context: Any = None
    """The method's own data about the prompt (its source row, operation, ...)."""
    bucket: Hashable = None
    """The quota the candidate counts toward (see ``LoopMethod.quotas``)."""


@dataclass(frozen=True)
class Draft:
    """A judged candidate: the new row's conversation, ending with a user turn when it still needs an answer."""

    messages: Chat
    provenance: dict[str, Any] = field(default_factory=dict)
    """Provenance fields the judge adds (scores)."""
    data: Any = None
    """The method's own payload, kept with the row (self_instruct shows accepted tasks as examples)."""
    carried: int = 0
    """Leading turns copied from a source row: the post-filter compares only the turns after them (a continued
    conversation repeats its source by design)."""

    @property
    def needs_answer(self) -> bool:
        return bool(self.messages) and self.messages[-1]["role"] == "user"


@dataclass(frozen=True)
class Kept:
    """An accepted candidate still kept (post-filtered ones leave ``RoundState.kept``)."""

    id: str
    proposal: Proposal
    draft: Draft


@dataclass
class RoundState:
    round_no: int = 0
    kept: list[Kept] = field(default_factory=list)


class LoopMethod(Generic[P]):
    """Base of the methods that add rows; subclasses set the class variables and implement the three hooks."""

    name: ClassVar[str]
    system: ClassVar[str]
    template: ClassVar[str]
    schema: ClassVar[dict[str, Any] | None] = None
    """JSON schema of the first stage's answers (None: plain text)."""

    def __init__(self, frame: pl.DataFrame, params: P) -> None:
        self.frame, self.params = frame, params

    def template_parts(self) -> tuple[str, ...]:
        """The prompt text the template hash (provenance, candidate ids) covers."""
        return (self.system, self.template)

    def quotas(self) -> dict[Hashable, int]:
        return {None: self.params.n}

    def propose(self, state: RoundState, bucket: Hashable, count: int, rng: random.Random) -> list[Proposal]:
        raise NotImplementedError

    def parse(self, proposal: Proposal, gen: Generation) -> Any:
        raise NotImplementedError

    def judge(self, proposal: Proposal, record: Any) -> Draft:
        raise NotImplementedError

    def on_accept(self, draft: Draft) -> None:
        """Called for each accepted candidate, in order (before the next one is judged)."""

    def stats(self, done: dict[Hashable, int]) -> dict[str, Any]:
        """Method-specific stats; ``done``: rows kept per bucket."""
        return {}


def run_loop(method: LoopMethod[Any], *, engine: Engine, model_name: str, screen: Screen | None = None
             ) -> StepResult:
    """Run ``method`` over its frame until every quota is met or ``max_rounds`` rounds have run."""
    params, frame = method.params, method.frame
    ledger = Ledger(method.name, model_name, engine, sampling_config(params, params.max_tokens, method.schema),
                    params.seed, template_hash(*method.template_parts()), screen=screen)
    answer_sampling = (sampling_config(params, params.answer_max_tokens)
                       if isinstance(params, AnsweredParams) else None)
    rng = random.Random(params.seed)
    quotas = method.quotas()
    done = dict.fromkeys(quotas, 0)
    state = RoundState()

    def accept(cand_id: str, proposal: Proposal, draft: Draft, prov: dict[str, Any]) -> None:
        row = {"text": messages_text(draft.messages), "messages": draft.messages}
        new_turns = messages_text(draft.messages[draft.carried :]) if draft.carried else None
        ledger.accept(cand_id, row, prov | draft.provenance, new_turns)
        done[proposal.bucket] += 1
        state.kept.append(Kept(cand_id, proposal, draft))
        method.on_accept(draft)

    for round_no in range(params.max_rounds):
        wanted = {b: q - done[b] for b, q in quotas.items() if q > done[b]}
        if not wanted:
            break
        state.round_no = round_no
        proposals = [p for b, missing in wanted.items()
                     for p in method.propose(state, b, batch_size(missing, params.oversample), rng)]
        reserved = dict(done)
        waiting: list[tuple[str, Proposal, Draft, dict[str, Any]]] = []
        for idx, (proposal, gen) in enumerate(zip(proposals, ledger.generate([p.prompt for p in proposals]),
                                                  strict=True)):
            cand_id = ledger.candidate_id(round_no, idx, *proposal.key, gen.text)
            prov = ledger.provenance(**proposal.provenance, round=round_no)
            try:
                record = method.parse(proposal, gen)
                ledger.counts["parsed"] += 1
                draft = method.judge(proposal, record)
                if reserved[proposal.bucket] >= quotas[proposal.bucket]:
                    raise Rejected("over_quota", "the quota is already met")
            except Rejected as rej:
                ledger.reject(cand_id, gen.text, rej.reason, prov)
                continue
            reserved[proposal.bucket] += 1
            if draft.needs_answer and answer_sampling is not None:
                waiting.append((cand_id, proposal, draft, prov))
            else:
                accept(cand_id, proposal, draft, prov)
        if answer_sampling is not None:
            answered = json.dumps(answer_sampling.as_dict(), sort_keys=True)
            answers = ledger.follow_up([d.messages for _, _, d, _ in waiting], answer_sampling)
            for (cand_id, proposal, draft, prov), gen in zip(waiting, answers, strict=True):
                full = prov | draft.provenance | {"answer_sampling": answered}
                try:
                    text = parse_answer(gen.text, gen.finish_reason, min_words=params.min_output_words,
                                        sorry_below_words=SORRY_BELOW_WORDS)
                except Rejected as rej:
                    raw = messages_text([*draft.messages, {"role": "assistant", "content": gen.text}])
                    ledger.reject(cand_id, raw, rej.reason, full)
                    continue
                reply = {"role": "assistant", "content": text}
                accept(cand_id, proposal, Draft([*draft.messages, reply], full, draft.data, draft.carried), prov)
        removed = ledger.settle(frame)
        for kept in state.kept:
            if kept.id in removed:
                done[kept.proposal.bucket] -= 1
        state.kept = [k for k in state.kept if k.id not in removed]
    result = ledger.result(frame)
    result.stats.update(method.stats(done))
    return result
