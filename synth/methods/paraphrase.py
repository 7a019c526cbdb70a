"""Paraphrase: reworded copies of existing instruction rows (instruction and answer), to augment a small set.

Sources are the frame's instruction rows (first user turn + its assistant answer), visited round-robin in a
seeded order, so ``n`` rewrites spread evenly over the sources. Each round sends one prompt per rewrite still
missing (times ``oversample``) as one batch with a JSON schema ``{"instruction", "output"}``. A rewrite is
compared with its source on the whole exchange (instruction + answer, word tokens): ``not_novel`` when ROUGE-L
>= ``max_rouge_l`` (too close to a copy), ``length_mismatch`` when its length over the source's falls outside
[``min_length_ratio``, ``max_length_ratio``]. Accepted rewrites are new rows carrying ``source_ids``.
"""

from __future__ import annotations

import random
from collections.abc import Hashable
from typing import Any, Literal

import polars as pl
from pydantic import Field, model_validator

from gristmill.common.text import instruction_messages
from gristmill.synth.engine import Generation
from gristmill.synth.methods.base import NewRowParams
from gristmill.synth.methods.common import Rotation, SourceRow, chat, require_instruction_rows
from gristmill.synth.methods.loop import Draft, LoopMethod, Proposal, RoundState
from gristmill.synth.parse import Rejected, parse_record
from gristmill.synth.rouge import rouge_l, tokens

VERSION = "3"  # 2: post-filter; 3: the shared loop (quota checked after the filters)

SYSTEM = "You reword training examples for a helpful assistant. Answer only with JSON."
TEMPLATE = (
    "Rewrite the task and its answer below in different words and with a different sentence structure. Keep "
    "the meaning, every fact, number and name, and any code exactly; the new answer must still answer the new "
    "task correctly and be about as long as the old one.\n\nTask:\n{instruction}\n\nAnswer:\n{output}\n\n"
    'Reply as JSON: {{"instruction": "<reworded task>", "output": "<reworded answer>"}}'
)
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"instruction": {"type": "string"}, "output": {"type": "string"}},
    "required": ["instruction", "output"],
}


class ParaphraseParams(NewRowParams):
    method: Literal["paraphrase"] = "paraphrase"
    """Reword existing instruction rows (instruction and answer) into new rows."""
    max_rouge_l: float = Field(0.8, gt=0, le=1)
    """Reject a rewrite whose ROUGE-L with its source exchange is >= this (``not_novel``)."""
    min_length_ratio: float = Field(0.5, gt=0)
    """Reject a rewrite shorter than this share of its source, in words (``length_mismatch``)."""
    max_length_ratio: float = Field(2.0, gt=0)
    """Reject a rewrite longer than this multiple of its source, in words (``length_mismatch``)."""

    @model_validator(mode="after")
    def _ratios_ordered(self) -> ParaphraseParams:
        if self.min_length_ratio > self.max_length_ratio:
            raise ValueError(f"min_length_ratio {self.min_length_ratio} > max_length_ratio "
                             f"{self.max_length_ratio}; swap them")
        return self


def _words(instruction: str, output: str) -> list[str]:
    return tokens(f"{instruction}\n{output}")


class Paraphrase(LoopMethod[ParaphraseParams]):
    """Each prompt rewords one source exchange; a rewrite is kept when novel enough and of similar length."""

    name, system, template, schema = "paraphrase", SYSTEM, TEMPLATE, SCHEMA

    def __init__(self, frame: pl.DataFrame, params: ParaphraseParams) -> None:
        super().__init__(frame, params)
        self.sources = require_instruction_rows(frame, "paraphrase")
        self.source_words = {s.id: _words(s.instruction, s.output) for s in self.sources}
        self.rotation: Rotation[SourceRow] | None = None

    def propose(self, state: RoundState, bucket: Hashable, count: int, rng: random.Random) -> list[Proposal]:
        self.rotation = self.rotation or Rotation(self.sources, rng, reshuffle=False)
        picks = [self.rotation.take() for _ in range(count)]
        return [Proposal(chat(TEMPLATE.format(instruction=s.instruction, output=s.output), SYSTEM), key=(s.id,),
                         provenance={"source_ids": [s.id]}, context=s) for s in picks]

    def parse(self, proposal: Proposal, gen: Generation) -> dict[str, str]:
        return parse_record(gen.text, gen.finish_reason, ("instruction", "output"))

    def judge(self, proposal: Proposal, pair: dict[str, str]) -> Draft:
        new, old = _words(pair["instruction"], pair["output"]), self.source_words[proposal.context.id]
        score = rouge_l(new, old)
        if score >= self.params.max_rouge_l:
            raise Rejected("not_novel", f"ROUGE-L {score:.2f} with the source")
        ratio = len(new) / max(1, len(old))
        if not self.params.min_length_ratio <= ratio <= self.params.max_length_ratio:
            raise Rejected("length_mismatch", f"{ratio:.2f}x the source's length")
        _, messages = instruction_messages(pair["instruction"], "", pair["output"])
        return Draft(messages, {"rouge_l_source": round(score, 4), "length_ratio": round(ratio, 3)})
