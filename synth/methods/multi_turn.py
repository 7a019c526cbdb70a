"""Multi-turn: continue existing conversations by one follow-up user turn and its answer, as new rows.

Sources are the frame's conversations whose turns alternate user/assistant and end with an answer (system turns
allowed), taken in a seeded order, reshuffled each pass. Two batched calls per round (the shared loop, loop.py):

1. one prompt per candidate showing the conversation as a transcript and asking, as JSON ``{"question"}``, for the
   user's next message: a follow-up that builds on the last answer;
2. the questions that pass, appended to their conversation as a user turn, as plain chat prompts; the answer is
   the new assistant turn.

A new row's messages are the source conversation + the question + the answer (``source_ids`` = the source row);
the post-filter compares only the two new turns, since repeating the source is the point. Rejections: the
parser's (``unparseable``, ``truncated``, ``empty``, ``refusal``, ...), ``not_novel`` when the question's
ROUGE-L with an earlier user turn is >= ``max_rouge_l`` (the user asking again), and the answer's (``too_short``,
``refusal``, ``truncated``, ...).

Example: source [user "What is a prime?", assistant "A number with exactly two divisors."] and the question
"Which numbers below 10 are prime?" (ROUGE-L 0.2 with "What is a prime?": LCS 1 word, P 1/6, R 1/4) answered
"2, 3, 5 and 7." give a new row of four turns; the question "Is 1 a prime?" (LCS 3, P = R = 3/4, ROUGE-L 0.75)
is ``not_novel``.
"""

from __future__ import annotations

import random
from collections.abc import Hashable
from typing import Any, Literal

import polars as pl
from pydantic import Field

from gristmill.synth.engine import Generation
from gristmill.synth.methods.base import AnsweredParams
from gristmill.synth.methods.common import Conversation, NoveltyPool, Rotation, chat, conversation_rows
from gristmill.synth.methods.loop import Draft, LoopMethod, Proposal, RoundState
from gristmill.synth.parse import parse_record

VERSION = "1"

SYSTEM = ("You continue conversations between a user and an assistant by writing the user's next message. You "
          "never answer it. Answer only with JSON.")
TEMPLATE = (
    "Here is a conversation between a user and an assistant.\n\n{transcript}\n\nWrite the next message the user "
    "would plausibly send: a follow-up question or request that builds on the assistant's last answer, asks for "
    "something new rather than repeating an earlier question, and can be answered on its own terms. Do not answer "
    'it.\n\nReply as JSON: {{"question": "<the user\'s next message>"}}'
)
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"question": {"type": "string"}},
    "required": ["question"],
}
SPEAKERS = {"user": "User", "assistant": "Assistant"}


class MultiTurnParams(AnsweredParams):
    method: Literal["multi_turn"] = "multi_turn"
    """Extend conversations by a follow-up user turn and its answer (new rows)."""
    max_rouge_l: float = Field(0.7, gt=0, le=1)
    """Reject a follow-up whose ROUGE-L with an earlier user turn of its conversation is >= this
    (``not_novel``)."""


def transcript(messages: list[dict[str, str]]) -> str:
    """The spoken turns as ``User: ...`` / ``Assistant: ...`` paragraphs (system turns left out)."""
    return "\n\n".join(f"{SPEAKERS[m['role']]}: {m['content']}" for m in messages if m["role"] in SPEAKERS)


class MultiTurn(LoopMethod[MultiTurnParams]):
    """Each prompt asks for the next user turn of one conversation; a kept question is answered in stage 2."""

    name, system, template, schema = "multi_turn", SYSTEM, TEMPLATE, SCHEMA

    def __init__(self, frame: pl.DataFrame, params: MultiTurnParams) -> None:
        super().__init__(frame, params)
        self.sources = conversation_rows(frame)
        if not self.sources:
            raise ValueError("synthesize.multi_turn: the frame has no conversations (messages alternating user and "
                             "assistant turns, ending with a non-empty assistant turn) to continue; ingest with "
                             "mapping alpaca, sharegpt or messages")
        self.rotation: Rotation[Conversation] | None = None

    def propose(self, state: RoundState, bucket: Hashable, count: int, rng: random.Random) -> list[Proposal]:
        self.rotation = self.rotation or Rotation(self.sources, rng, reshuffle=True)
        picks = [self.rotation.take() for _ in range(count)]
        return [Proposal(chat(TEMPLATE.format(transcript=transcript(c.messages)), SYSTEM), key=(c.id,),
                         provenance={"source_ids": [c.id]}, context=c) for c in picks]

    def parse(self, proposal: Proposal, gen: Generation) -> str:
        return parse_record(gen.text, gen.finish_reason, ("question",), refusal_field="question")["question"]

    def judge(self, proposal: Proposal, question: str) -> Draft:
        source: Conversation = proposal.context
        score = NoveltyPool(source.user_turns, self.params.max_rouge_l).check(question)
        messages = [*source.messages, {"role": "user", "content": question}]
        return Draft(messages, {"rouge_l_max": round(score, 4)}, carried=len(source.messages))
