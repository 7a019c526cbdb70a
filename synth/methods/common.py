"""Helpers shared by the methods: reading instruction rows and conversations out of the frame, building chat
prompts, cycling over sources, and the ROUGE-L novelty pool."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import polars as pl

from gristmill.synth.parse import Rejected
from gristmill.synth.rouge import max_rouge_l, tokens

Chat = list[dict[str, str]]
T = TypeVar("T")


@dataclass(frozen=True)
class SourceRow:
    """The first exchange of an instruction row: the user turn and the assistant turn that answers it."""

    id: str
    instruction: str
    output: str


@dataclass(frozen=True)
class Conversation:
    """A row whose turns (after any system turns) alternate user, assistant, ... and end with an answer."""

    id: str
    messages: Chat
    """All turns, system ones included, as ``{role, content}``."""

    @property
    def user_turns(self) -> list[str]:
        return [m["content"] for m in self.messages if m["role"] == "user"]


def instruction_rows(frame: pl.DataFrame) -> list[SourceRow]:
    """Rows whose ``messages`` hold a user turn followed by a non-empty assistant turn (first exchange only)."""
    if "messages" not in frame.columns:
        return []
    out = []
    for row_id, msgs in zip(frame["id"].to_list(), frame["messages"].to_list(), strict=True):
        turns = [m for m in msgs or [] if m.get("role") != "system"]
        for user, reply in zip(turns, turns[1:], strict=False):
            if user["role"] == "user" and reply["role"] == "assistant":
                if (user["content"] or "").strip() and (reply["content"] or "").strip():
                    out.append(SourceRow(str(row_id), user["content"].strip(), reply["content"].strip()))
                break
    return out


def require_instruction_rows(frame: pl.DataFrame, method: str) -> list[SourceRow]:
    """``instruction_rows`` or a ValueError saying what the method needs."""
    sources = instruction_rows(frame)
    if not sources:
        raise ValueError(f"synthesize.{method}: the frame has no instruction rows (messages with a user turn and a "
                         "non-empty assistant turn) to work from; ingest with mapping alpaca, sharegpt or messages")
    return sources


def conversation_rows(frame: pl.DataFrame) -> list[Conversation]:
    """Rows whose non-system turns are user, assistant, user, ... ending with an assistant turn, none empty.

    >>> f = pl.DataFrame({"id": ["a", "b"], "messages": [[{"role": "user", "content": "Hi"},
    ...     {"role": "assistant", "content": "Hello"}], [{"role": "user", "content": "Hi"}]]})
    >>> [c.id for c in conversation_rows(f)]
    ['a']
    """
    if "messages" not in frame.columns:
        return []
    out = []
    for row_id, msgs in zip(frame["id"].to_list(), frame["messages"].to_list(), strict=True):
        turns = [{"role": m["role"], "content": (m["content"] or "").strip()} for m in msgs or []]
        spoken = [m for m in turns if m["role"] != "system"]
        roles = [m["role"] for m in spoken]
        if (len(roles) >= 2 and len(roles) % 2 == 0 and roles == ["user", "assistant"] * (len(roles) // 2)
                and all(m["content"] for m in spoken)):
            out.append(Conversation(str(row_id), turns))
    return out


def chat(user: str, system: str | None = None) -> Chat:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def batch_size(missing: int, oversample: float) -> int:
    """Prompts to send for ``missing`` rows: ``ceil(missing * oversample)``, at least 1.
    ``batch_size(3, 1.5) == 5``; ``batch_size(2, 1.0) == 2``."""
    return max(1, math.ceil(missing * oversample - 1e-9))


class Rotation(Generic[T]):
    """Sources taken in a seeded random order, cycled, so ``n`` candidates spread evenly over them; each pass is
    shuffled anew (``reshuffle``) or repeats the first order.

    >>> r = Rotation(["a", "b"], random.Random(0), reshuffle=False)
    >>> [r.take() for _ in range(4)]
    ['b', 'a', 'b', 'a']
    """

    def __init__(self, items: Sequence[T], rng: random.Random, *, reshuffle: bool) -> None:
        self.items, self.rng, self.reshuffle = list(items), rng, reshuffle
        self._order: list[T] | None = None
        self._turn = 0

    def take(self) -> T:
        if self._order is None or (self.reshuffle and self._turn % len(self.items) == 0):
            self._order = self.rng.sample(self.items, len(self.items))
        item = self._order[self._turn % len(self.items)]
        self._turn += 1
        return item


class NoveltyPool:
    """Tokenized texts a new one must differ from: ``check`` rejects ROUGE-L >= ``max_rouge_l`` (``not_novel``)
    with any of them; ``add`` puts an accepted text in.

    >>> pool = NoveltyPool(["Add two numbers."], 0.7)
    >>> pool.check("Name a prime number.") < 0.7
    True
    """

    def __init__(self, texts: list[str], max_rouge_l: float) -> None:
        self.pool = [tokens(t) for t in texts]
        self.max_rouge_l = max_rouge_l

    def check(self, text: str) -> float:
        """The highest ROUGE-L of ``text`` against the pool; ``Rejected("not_novel")`` at or above the limit."""
        score = max_rouge_l(text, self.pool)
        if score >= self.max_rouge_l:
            raise Rejected("not_novel", f"ROUGE-L {score:.2f}")
        return score

    def add(self, text: str) -> None:
        self.pool.append(tokens(text))
