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
from typing import Any, Literal

import polars as pl
from pydantic import Field, model_validator

from gristmill.synth.methods.base import (
    Engine,
    Ledger,
    NewRowParams,
    Screen,
    messages_row,
    sampling_config,
    template_hash,
)
from gristmill.synth.methods.common import SourceRow, batch_size, chat, require_instruction_rows
from gristmill.synth.parse import Rejected, parse_record
from gristmill.synth.rouge import rouge_l, tokens

VERSION = "2"  # 2: post-filter

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


def paraphrase(
    frame: pl.DataFrame, params: ParaphraseParams, *, engine: Engine, model_name: str, screen: Screen | None = None
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    sources = require_instruction_rows(frame, "paraphrase")
    order = random.Random(params.seed).sample(sources, len(sources))
    sampling = sampling_config(params, params.max_tokens, SCHEMA)
    ledger = Ledger("paraphrase", model_name, engine, sampling, params.seed, template_hash(SYSTEM, TEMPLATE),
                    screen=screen)
    source_words = {s.id: _words(s.instruction, s.output) for s in sources}
    turn, accepted = 0, 0
    for round_no in range(params.max_rounds):
        missing = params.n - accepted
        if missing <= 0:
            break
        picks: list[SourceRow] = []
        for _ in range(batch_size(missing, params.oversample)):
            picks.append(order[turn % len(order)])
            turn += 1
        prompts = [chat(TEMPLATE.format(instruction=s.instruction, output=s.output), SYSTEM) for s in picks]
        for idx, (src, gen) in enumerate(zip(picks, ledger.generate(prompts), strict=True)):
            cand_id = ledger.candidate_id(round_no, idx, src.id, gen.text)
            prov = ledger.provenance(source_ids=[src.id], round=round_no)
            try:
                pair = parse_record(gen.text, gen.finish_reason, ("instruction", "output"))
                ledger.counts["parsed"] += 1
                new, old = _words(pair["instruction"], pair["output"]), source_words[src.id]
                score = rouge_l(new, old)
                if score >= params.max_rouge_l:
                    raise Rejected("not_novel", f"ROUGE-L {score:.2f} with the source")
                ratio = len(new) / max(1, len(old))
                if not params.min_length_ratio <= ratio <= params.max_length_ratio:
                    raise Rejected("length_mismatch", f"{ratio:.2f}x the source's length")
                if accepted >= params.n:
                    raise Rejected("over_quota", "n rows already accepted")
            except Rejected as rej:
                ledger.reject(cand_id, gen.text, rej.reason, prov)
                continue
            accepted += 1
            row = messages_row(pair["instruction"], "", pair["output"])
            ledger.accept(cand_id, row, prov | {"rouge_l_source": round(score, 4), "length_ratio": round(ratio, 3)})
        accepted -= len(ledger.settle(frame))
    return ledger.result(frame)


def run(
    frame: pl.DataFrame, params: ParaphraseParams, *, engine: Engine, model_name: str, screen: Screen | None = None
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    return paraphrase(frame, params, engine=engine, model_name=model_name, screen=screen)
