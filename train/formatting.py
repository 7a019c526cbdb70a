"""Turn rows into token ids and loss labels.

Chat rows (``messages``) are rendered with the tokenizer's chat template; only the final assistant turn is trained
on: every token of the prompt (the template output for the earlier turns plus the generation prompt) gets label
-100. Plain-text rows (no messages) train on all tokens. Examples longer than ``max_len`` are cut from the right.

Worked example: prompt ids [1, 2, 3], full ids [1, 2, 3, 4, 5] -> labels [-100, -100, -100, 4, 5].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IGNORE = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]


def _ids(encoded: Any) -> list[int]:
    if isinstance(encoded, dict) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    return list(encoded)


def mask_prompt(prompt_ids: list[int], full_ids: list[int]) -> list[int]:
    """Labels for ``full_ids`` with the ``prompt_ids`` prefix masked.

    >>> mask_prompt([1, 2, 3], [1, 2, 3, 4, 5])
    [-100, -100, -100, 4, 5]
    """
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError("the chat template's prompt is not a prefix of the full conversation")
    return [IGNORE] * len(prompt_ids) + full_ids[len(prompt_ids) :]


def encode_row(tokenizer: Any, row: dict[str, Any], max_len: int) -> Example | None:
    """Encode one row; ``None`` when nothing is left to train on (no assistant tokens)."""
    messages = row.get("messages")
    if messages:
        if messages[-1]["role"] != "assistant":
            return None
        full = _ids(tokenizer.apply_chat_template(messages, tokenize=True))
        prompt = _ids(tokenizer.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True))
        labels = mask_prompt(prompt, full)
    else:
        full = _ids(tokenizer(row["text"])) + [tokenizer.eos_token_id]
        labels = list(full)
    full, labels = full[:max_len], labels[:max_len]
    if all(label == IGNORE for label in labels[1:]):
        return None
    return Example(full, labels)


def collate(batch: list[Example], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
