"""Evol-Instruct (Xu et al. 2023, "WizardLM"): harder or rarer variants of existing instructions, answered anew.

Each round picks source rows (instruction rows of the frame, a seeded shuffle cycled as needed) and gives each
candidate one evolution operation: in-depth (``add_constraints``, ``deepen``, ``concretize``,
``increase_reasoning``: the same task made harder) or in-breadth (``breadth``: a new, rarer task of the same
domain). Generation is two batched calls per round, as in the paper:

1. all rewrite prompts, as one batch with a JSON schema ``{"instruction"}``;
2. the instructions that survive the instruction checks, as one batch of plain chat prompts (the shared loop's
   answer stage, loop.py: the answer is generated exactly like an assistant turn, and rejected rewrites cost no
   answer tokens).

Elimination (the paper's filter, with ROUGE-L standing in for its ChatGPT equality check): ``not_evolved`` when
the rewrite's ROUGE-L with its source is >= ``max_rouge_l``; ``leaked_template`` when it copies the rewriting
prompt ("#Rewritten Prompt#", "the given prompt", or 6 words of the template); ``empty`` / ``too_short`` when
the answer is only stop words and punctuation or shorter than ``min_output_words``; ``refusal`` when it opens
with a refusal or says "sorry" in fewer than 80 words. Evolved rows are new rows; source rows stay. A candidate
is one rewrite (``rows_added`` counts rewrites); its answer is a follow-up, not a candidate of its own.
"""

from __future__ import annotations

import random
from collections.abc import Hashable
from typing import Any, Literal

import polars as pl
from pydantic import Field

from gristmill.synth.engine import Generation
from gristmill.synth.methods.base import AnsweredParams
from gristmill.synth.methods.common import Rotation, SourceRow, chat, require_instruction_rows
from gristmill.synth.methods.loop import Draft, LoopMethod, Proposal, RoundState
from gristmill.synth.parse import Rejected, leaks_template, parse_record
from gristmill.synth.rouge import rouge_l, tokens

VERSION = "3"  # 2: post-filter; 3: the shared loop (sources taken front to back of each shuffled pass)

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


class EvolveParams(AnsweredParams):
    method: Literal["evolve"] = "evolve"
    """Evolve existing instructions into harder or rarer ones and answer them (Evol-Instruct)."""
    operations: list[Operation] = Field(
        default_factory=lambda: ["add_constraints", "deepen", "concretize", "increase_reasoning", "breadth"],
        min_length=1)
    """Evolution operations; each candidate gets one, drawn uniformly (seeded) from this list (repeat an operation
    to weight it)."""
    max_rouge_l: float = Field(0.9, gt=0, le=1)
    """Reject a rewrite whose ROUGE-L with its source instruction is >= this (``not_evolved``)."""


class Evolve(LoopMethod[EvolveParams]):
    """Each prompt rewrites one source instruction by one operation; a kept rewrite is answered in stage 2."""

    name, system, template, schema = "evolve", SYSTEM, TEMPLATE, SCHEMA

    def __init__(self, frame: pl.DataFrame, params: EvolveParams) -> None:
        super().__init__(frame, params)
        self.sources = require_instruction_rows(frame, "evolve")
        self.rotation: Rotation[SourceRow] | None = None

    def template_parts(self) -> tuple[str, ...]:
        return (SYSTEM, TEMPLATE, *(OPERATIONS[o] for o in sorted(set(self.params.operations))))

    def propose(self, state: RoundState, bucket: Hashable, count: int, rng: random.Random) -> list[Proposal]:
        self.rotation = self.rotation or Rotation(self.sources, rng, reshuffle=True)
        out = []
        for _ in range(count):
            src, op = self.rotation.take(), rng.choice(self.params.operations)
            out.append(Proposal(chat(TEMPLATE.format(operation=OPERATIONS[op], instruction=src.instruction), SYSTEM),
                                key=(src.id, op), provenance={"source_ids": [src.id], "operation": op},
                                context=(src, op)))
        return out

    def parse(self, proposal: Proposal, gen: Generation) -> str:
        return parse_record(gen.text, gen.finish_reason, ("instruction",), refusal_field="instruction")["instruction"]

    def judge(self, proposal: Proposal, instruction: str) -> Draft:
        src, op = proposal.context
        if leaks_template(instruction, SYSTEM + "\n" + TEMPLATE.format(operation=OPERATIONS[op], instruction="")):
            raise Rejected("leaked_template")
        score = rouge_l(tokens(instruction), tokens(src.instruction))
        if score >= self.params.max_rouge_l:
            raise Rejected("not_evolved", f"ROUGE-L {score:.2f} with the source")
        return Draft(chat(instruction), {"rouge_l_source": round(score, 4)})
