"""Turn rows into token ids, loss labels and a weight.

Chat rows (``messages``) are rendered with the tokenizer's chat template and every assistant turn is trained on:
the tokens the template adds for assistant turn ``i`` are those between the rendering of ``messages[:i]`` with the
generation prompt and the rendering of ``messages[:i+1]``; everything else (system, user turns, role headers) gets
label -100. Plain-text rows (no messages) train on all tokens plus EOS. The first token of every example is never a
target (nothing precedes it), so its label is -100 too: packed examples cannot learn across their boundary.

Worked example (ids stand for tokens): the conversation renders to ``[S, u, A, a1, E, u, A, a2, E]`` where ``[S, u,
A]`` is the prompt of the first assistant turn and ``[S, u, A, a1, E, u, A]`` that of the second, so the labels
are ``[-100, -100, -100, a1, E, -100, -100, a2, E]``.

End-of-turn check: each assistant span must contain a token generation stops on (the tokenizer's EOS or the
generation config's ``eos_token_id``), or the adapter learns answers that never stop. A template without one is
refused, or with ``fix_eos`` the EOS token is appended to each assistant span.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from gristmill.common.errors import InputError

IGNORE = -100


class TemplateError(InputError):
    """The chat template cannot be trained on as it is (no stop token after answers, or not prefix-stable)."""


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    weight: float = 1.0
    source: int = -1
    """Index of the row it came from (``encode_rows``)."""

    @property
    def n_targets(self) -> int:
        return sum(label != IGNORE for label in self.labels)


@dataclass
class EncodeStats:
    rows: int = 0
    kept: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    overlength: int = 0
    """Rows longer than max_seq_length (dropped or truncated, as the params say)."""
    eos_fixed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "kept": self.kept, "skipped": dict(self.skipped),
                "overlength_rows": self.overlength, "eos_fixed_turns": self.eos_fixed}


def _ids(encoded: Any) -> list[int]:
    if isinstance(encoded, dict) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    return list(encoded)


def stop_token_ids(tokenizer: Any, generation_config: Any = None) -> set[int]:
    """The ids generation stops on: the generation config's ``eos_token_id`` (int or list) and the tokenizer's."""
    ids: set[int] = set()
    eos = getattr(generation_config, "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def mask_prompt(prompt_ids: list[int], full_ids: list[int]) -> list[int]:
    """Labels for ``full_ids`` with the ``prompt_ids`` prefix masked.

    >>> mask_prompt([1, 2, 3], [1, 2, 3, 4, 5])
    [-100, -100, -100, 4, 5]
    """
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise TemplateError("the chat template's prompt is not a prefix of the full conversation")
    return [IGNORE] * len(prompt_ids) + full_ids[len(prompt_ids) :]


def assistant_spans(tokenizer: Any, messages: list[dict[str, Any]]) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of the whole conversation and the ``[start, end)`` span of every assistant turn in them."""
    full = _ids(tokenizer.apply_chat_template(messages, tokenize=True))
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _ids(tokenizer.apply_chat_template(messages[:i], tokenize=True, add_generation_prompt=True))
        upto = _ids(tokenizer.apply_chat_template(messages[: i + 1], tokenize=True))
        if full[: len(upto)] != upto or upto[: len(prompt)] != prompt:
            raise TemplateError(
                f"the chat template renders assistant turn {i} differently once later turns follow (it is not "
                "prefix-stable, e.g. it drops earlier reasoning), so the answer tokens cannot be located; use a "
                "template that renders each turn the same way, or train on single-turn rows")
        spans.append((len(prompt), len(upto)))
    return full, spans


def encode_row(
    tokenizer: Any,
    row: dict[str, Any],
    max_len: int,
    *,
    stop_ids: set[int] | None = None,
    fix_eos: bool = False,
    overlength: Literal["drop", "truncate"] = "truncate",
    stats: EncodeStats | None = None,
) -> Example | None:
    """Encode one row; ``None`` when nothing is left to train on (the reason is counted in ``stats``)."""
    stats = stats if stats is not None else EncodeStats()
    stats.rows += 1
    weight = row.get("weight")
    weight = 1.0 if weight is None else float(weight)
    if not math.isfinite(weight) or weight < 0:
        raise InputError(f"row {row.get('id', '?')}: weight must be a finite number >= 0, got {weight}")
    if weight == 0:
        stats.skipped["zero_weight"] += 1
        return None
    messages = row.get("messages")
    if messages:
        full, spans = assistant_spans(tokenizer, messages)
        if not spans:
            stats.skipped["no_assistant_turn"] += 1
            return None
        stops = stop_ids if stop_ids is not None else stop_token_ids(tokenizer)
        for start, end in reversed(spans):  # from the end: an inserted token shifts only later spans
            if not any(t in stops for t in full[start:end]):
                if not fix_eos:
                    raise TemplateError(
                        f"assistant turns rendered by the chat template do not end with a token generation stops "
                        f"on ({sorted(stops)}): the adapter would never stop. Fix the template, or set "
                        "train.fix_eos: true to append the EOS token to every assistant turn")
                full.insert(end, tokenizer.eos_token_id)
                spans = [(s, e + 1) if (s, e) == (start, end) else (s + 1, e + 1) if s >= end else (s, e)
                         for s, e in spans]
                stats.eos_fixed += 1
        labels = [IGNORE] * len(full)
        for start, end in spans:
            labels[start:end] = full[start:end]
    else:
        full = _ids(tokenizer(row["text"])) + [tokenizer.eos_token_id]
        labels = list(full)
    labels[0] = IGNORE
    if len(full) > max_len:
        stats.overlength += 1
        if overlength == "drop":
            stats.skipped["overlength"] += 1
            return None
        full, labels = full[:max_len], labels[:max_len]
    if all(label == IGNORE for label in labels):
        stats.skipped["no_answer_within_max_seq_length" if messages else "empty"] += 1
        return None
    stats.kept += 1
    return Example(full, labels, weight)


def encode_rows(tokenizer: Any, rows: list[dict[str, Any]], max_len: int, **kwargs: Any
                ) -> tuple[list[Example], EncodeStats]:
    stats = EncodeStats()
    examples = []
    for i, row in enumerate(rows):
        example = encode_row(tokenizer, row, max_len, stats=stats, **kwargs)
        if example is not None:
            example.source = i
            examples.append(example)
    return examples, stats
