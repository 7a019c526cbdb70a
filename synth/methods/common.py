"""Helpers shared by the methods that start from existing rows: reading instruction rows out of the frame,
building chat prompts, and second-stage generations that are not candidates of their own."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import polars as pl

from gristmill.synth.engine import Generation, SamplingConfig
from gristmill.synth.methods.base import Ledger

Chat = list[dict[str, str]]


@dataclass(frozen=True)
class SourceRow:
    """The first exchange of an instruction row: the user turn and the assistant turn that answers it."""

    id: str
    instruction: str
    output: str


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


def chat(user: str, system: str | None = None) -> Chat:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def batch_size(missing: int, oversample: float) -> int:
    """Prompts to send for ``missing`` rows: ``ceil(missing * oversample)``, at least 1."""
    return max(1, math.ceil(missing * oversample - 1e-9))


def follow_up(ledger: Ledger, prompts: list[Chat], sampling: SamplingConfig) -> list[Generation]:
    """A second-stage batch (e.g. answers to accepted instructions): one engine call whose tokens and requests
    are counted, but whose outputs are not new candidates (``generated``, hence ``rows_added``, is unchanged)."""
    if not prompts:
        return []
    outputs = ledger.engine.chat(prompts, sampling)
    counts: dict[str, Any] = ledger.counts
    counts["follow_up_requests"] = counts.get("follow_up_requests", 0) + len(prompts)
    for gen in outputs:
        counts["prompt_tokens"] += gen.prompt_tokens
        counts["output_tokens"] += gen.output_tokens
    return outputs
