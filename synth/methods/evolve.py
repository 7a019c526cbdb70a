"""Evol-Instruct (Xu et al. 2023, "WizardLM"): harder or rarer variants of existing instructions, answered anew.

Each round picks source rows (instruction rows of the frame, a seeded shuffle cycled as needed) and gives each
candidate one evolution operation: in-depth (``add_constraints``, ``deepen``, ``concretize``,
``increase_reasoning``: the same task made harder) or in-breadth (``breadth``: a new, rarer task of the same
domain). Generation is two batched calls per round, as in the paper:

1. all rewrite prompts, as one batch with a JSON schema ``{"instruction"}``;
2. the instructions that survive the instruction checks, as one batch of plain chat prompts (the answer is
   generated exactly like an assistant turn, and rejected rewrites cost no answer tokens).

Elimination (the paper's filter, with ROUGE-L standing in for its ChatGPT equality check): ``not_evolved`` when
the rewrite's ROUGE-L with its source is >= ``max_rouge_l``; ``leaked_template`` when it copies the rewriting
prompt ("#Rewritten Prompt#", "the given prompt", or 6 words of the template); ``empty`` / ``too_short`` when
the answer is only stop words and punctuation or shorter than ``min_output_words``; ``refusal`` when it opens
with a refusal or says "sorry" in fewer than 80 words. Evolved rows are new rows; source rows stay. A candidate
is one rewrite (``rows_added`` counts rewrites); its answer is a follow-up, not a candidate of its own.
"""

from __future__ import annotations

import json
import random
from typing import Any, Literal

import polars as pl
from pydantic import Field

from gristmill.synth.methods.base import (
    Engine,
    Ledger,
    NewRowParams,
    Screen,
    messages_row,
    sampling_config,
    template_hash,
)
from gristmill.synth.methods.common import SourceRow, batch_size, chat, follow_up, require_instruction_rows
from gristmill.synth.parse import Rejected, leaks_template, parse_answer, parse_record
from gristmill.synth.rouge import rouge_l, tokens

VERSION = "2"  # 2: post-filter

Operation = Literal["add_constraints", "deepen", "concretize", "increase_reasoning", "breadth"]

SYSTEM = "You rewrite tasks for training a helpful assistant. You never answer the task. Answer only with JSON."
IN_DEPTH = (
    "Make the task below somewhat harder for a capable assistant while keeping it a single, self-contained, "
    "answerable request in the same language. {how} Add no more than about twenty words, and do not answer it."
)
OPERATIONS: dict[str, str] = {
    "add_constraints": IN_DEPTH.format(
        how="Do it by adding one more requirement the answer has to meet, such as a limit on length, a format, "
            "an audience or an extra condition."),
    "deepen": IN_DEPTH.format(
        how="Do it by asking for more depth: the reasons behind the answer, its trade-offs or its consequences, "
            "not only the surface facts."),
    "concretize": IN_DEPTH.format(
        how="Do it by swapping general ideas for one specific, concrete case: a particular setting, named "
            "quantities or a worked situation."),
    "increase_reasoning": IN_DEPTH.format(
        how="Do it so that a good answer needs several explicit steps of reasoning; if one simple step solves "
            "it now, change it so that it does not."),
    "breadth": (
        "Invent a brand-new task inspired by the task below. It must belong to the same domain but be about a "
        "rarer, less common topic, with similar length and difficulty. It must be self-contained and "
        "answerable; do not answer it."),
}
TEMPLATE = '{operation}\n\nTask:\n{instruction}\n\nReply as JSON: {{"instruction": "<the new task>"}}'
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"instruction": {"type": "string"}},
    "required": ["instruction"],
}


class EvolveParams(NewRowParams):
    method: Literal["evolve"] = "evolve"
    """Evolve existing instructions into harder or rarer ones and answer them (Evol-Instruct)."""
    operations: list[Operation] = Field(
        default_factory=lambda: ["add_constraints", "deepen", "concretize", "increase_reasoning", "breadth"],
        min_length=1)
    """Evolution operations; each candidate gets one, drawn uniformly (seeded) from this list (repeat an operation
    to weight it)."""
    max_rouge_l: float = Field(0.9, gt=0, le=1)
    """Reject a rewrite whose ROUGE-L with its source instruction is >= this (``not_evolved``)."""
    min_output_words: int = Field(3, ge=1)
    """Reject an answer with fewer words (``too_short``)."""
    answer_max_tokens: int = Field(512, ge=16)
    """Output tokens per answer (evolved tasks need longer answers than rewrites)."""


def _prompt(op: str, source: SourceRow) -> list[dict[str, str]]:
    return chat(TEMPLATE.format(operation=OPERATIONS[op], instruction=source.instruction), SYSTEM)


def evolve(
    frame: pl.DataFrame, params: EvolveParams, *, engine: Engine, model_name: str, screen: Screen | None = None
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    sources = require_instruction_rows(frame, "evolve")
    rng = random.Random(params.seed)
    sampling = sampling_config(params, params.max_tokens, SCHEMA)
    answer_sampling = sampling_config(params, params.answer_max_tokens)
    answer_json = json.dumps(answer_sampling.as_dict(), sort_keys=True)
    ledger = Ledger("evolve", model_name, engine, sampling, params.seed,
                    template_hash(SYSTEM, TEMPLATE, *(OPERATIONS[o] for o in sorted(set(params.operations)))), screen=screen)
    order: list[SourceRow] = []
    accepted = 0
    for round_no in range(params.max_rounds):
        missing = params.n - accepted
        if missing <= 0:
            break
        picks = []
        for _ in range(batch_size(missing, params.oversample)):
            if not order:
                order = rng.sample(sources, len(sources))
            picks.append((order.pop(), rng.choice(params.operations)))
        outputs = ledger.generate([_prompt(op, src) for src, op in picks])
        survivors: list[tuple[str, dict[str, Any], str]] = []  # (candidate id, provenance, instruction)
        for idx, ((src, op), gen) in enumerate(zip(picks, outputs, strict=True)):
            cand_id = ledger.candidate_id(round_no, idx, src.id, op, gen.text)
            prov = ledger.provenance(source_ids=[src.id], operation=op, round=round_no)
            try:
                instruction = parse_record(gen.text, gen.finish_reason, ("instruction",),
                                           refusal_field="instruction")["instruction"]
                ledger.counts["parsed"] += 1
                if leaks_template(instruction, SYSTEM + "\n" + TEMPLATE.format(operation=OPERATIONS[op],
                                                                              instruction="")):
                    raise Rejected("leaked_template")
                score = rouge_l(tokens(instruction), tokens(src.instruction))
                if score >= params.max_rouge_l:
                    raise Rejected("not_evolved", f"ROUGE-L {score:.2f} with the source")
                if len(survivors) >= missing:
                    raise Rejected("over_quota", "n rows already accepted")
            except Rejected as rej:
                ledger.reject(cand_id, gen.text, rej.reason, prov)
                continue
            survivors.append((cand_id, prov | {"rouge_l_source": round(score, 4), "answer_sampling": answer_json},
                              instruction))
        answers = follow_up(ledger, [chat(s[2]) for s in survivors], answer_sampling)
        for (cand_id, prov, instruction), gen in zip(survivors, answers, strict=True):
            try:
                output = parse_answer(gen.text, gen.finish_reason, min_words=params.min_output_words,
                                      sorry_below_words=80)
            except Rejected as rej:
                ledger.reject(cand_id, f"{instruction}\n\n{gen.text}", rej.reason, prov)
                continue
            accepted += 1
            ledger.accept(cand_id, messages_row(instruction, "", output), prov)
        accepted -= len(ledger.settle(frame))
    return ledger.result(frame)


def run(
    frame: pl.DataFrame, params: EvolveParams, *, engine: Engine, model_name: str, screen: Screen | None = None
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    return evolve(frame, params, engine=engine, model_name=model_name, screen=screen)
