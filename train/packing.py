"""Batches: packed (one sequence per batch, no padding) or padded (batches of similar length), and their plan.

Packing concatenates a batch's examples into one row and restarts the position ids at every example, with no
attention mask. Attention then stays inside each example: flash-attention's varlen kernel on GPU, on CPU
``fused.varlen_sdpa`` (causal sdpa per example, from the row's example boundaries), or, for plain sdpa/eager, a
block-diagonal causal mask transformers builds from the position ids (``masking_utils.find_packed_sequence_indices``;
it computes the row's full square, so those rows are capped at ``max_seq_length``). The first label of every example is -100, so no example
predicts across a boundary. Packed and padded batches therefore give the same per-token losses.

Worked example: examples ``[5, 6, 7]`` and ``[8, 9]`` pack into input ids ``[[5, 6, 7, 8, 9]]`` with position ids
``[[0, 1, 2, 0, 1]]``; padded (pad 0) they are ``[[5, 6, 7], [8, 9, 0]]`` with attention mask
``[[1, 1, 1], [1, 1, 0]]``.
"""

from __future__ import annotations

import random
from typing import Any

from gristmill.train.formatting import IGNORE, Example


def pack_rows(lengths: list[int], max_row: int) -> list[list[int]]:
    """First-fit decreasing: example indices grouped into rows of at most ``max_row`` tokens (an example longer
    than ``max_row`` gets a row of its own).

    >>> pack_rows([300, 200, 250, 100], 512)
    [[0, 1], [2, 3]]
    """
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        fit = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if fit is None:
            rows.append([i])
            room.append(max_row - lengths[i])
        else:
            rows[fit].append(i)
            room[fit] -= lengths[i]
    return rows


def collate_packed(batch: list[Example], *, max_row: int | None = None, pad_id: int = 0,
                   flash_kwargs: bool = False) -> dict[str, Any]:
    """The batch's examples flattened into one row (transformers' ``DataCollatorWithFlattening``), or, with
    ``max_row``, into rows of at most ``max_row`` tokens (``pack_rows``), plus per-token ``weights`` (each token
    carries its example's weight). Without varlen flash attention, sdpa computes every row's full square and
    masks it, so bounded rows keep that waste small. Shorter rows are filled up with a padding block that restarts
    its own position ids (so it is a separate "example" nobody attends to), label -100 and weight 0."""
    import torch
    from transformers import DataCollatorWithFlattening

    groups = pack_rows([len(e.input_ids) for e in batch], max_row) if max_row else [list(range(len(batch)))]
    flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE,
                                         return_flash_attn_kwargs=flash_kwargs)
    rows = [flatten([{"input_ids": batch[i].input_ids, "labels": batch[i].labels} for i in g]) for g in groups]
    weights = [[batch[i].weight for i in g for _ in batch[i].input_ids] for g in groups]
    if len(rows) == 1:
        out = dict(rows[0])
        out["weights"] = torch.tensor(weights, dtype=torch.float32)
        return out
    width = max(r["input_ids"].shape[1] for r in rows)
    out = {"input_ids": torch.full((len(rows), width), pad_id, dtype=torch.long),
           "labels": torch.full((len(rows), width), IGNORE, dtype=torch.long),
           "position_ids": torch.arange(width).repeat(len(rows), 1),
           "weights": torch.zeros((len(rows), width), dtype=torch.float32)}
    for k, (row, w) in enumerate(zip(rows, weights, strict=True)):
        n = row["input_ids"].shape[1]
        out["input_ids"][k, :n] = row["input_ids"][0]
        out["labels"][k, :n] = row["labels"][0]
        out["position_ids"][k, :n] = row["position_ids"][0]
        out["position_ids"][k, n:] = torch.arange(width - n)
        out["weights"][k, :n] = torch.tensor(w)
    return out


def collate_padded(batch: list[Example], pad_id: int) -> dict[str, Any]:
    """Right-padded rows with an attention mask; padding has label -100 and weight 0."""
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    weights = torch.zeros((len(batch), width), dtype=torch.float32)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
        weights[i, :n] = e.weight
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "weights": weights}


def widen(batch: dict[str, Any], multiple: int, pad_id: int) -> dict[str, Any]:
    """Pad every row on the right to a width that is a multiple of ``multiple`` (a compiled model then meets few
    shapes). The added tokens are a block nobody attends to and nothing learns from: pad ids, label -100, weight
    0, attention mask 0, and position ids restarting at 0 (a separate packed "example").

    Worked example: width 5, multiple 4 -> width 8; a packed row's position ids ``[0, 1, 2, 0, 1]`` become
    ``[0, 1, 2, 0, 1, 0, 1, 2]``.
    """
    import torch

    rows, width = batch["input_ids"].shape
    extra = (-width) % multiple
    if not extra or "cu_seq_lens_q" in batch:  # varlen flash kwargs describe the exact flattened row
        return batch
    fill = {"input_ids": pad_id, "labels": IGNORE, "weights": 0.0, "attention_mask": 0}
    out = dict(batch)
    for key, value in fill.items():
        if key in batch:
            out[key] = torch.cat([batch[key], torch.full((rows, extra), value, dtype=batch[key].dtype)], 1)
    if "position_ids" in batch:
        out["position_ids"] = torch.cat([batch["position_ids"], torch.arange(extra).repeat(rows, 1)], 1)
    return out


def collate(batch: list[Example], pad_id: int, packing: bool, *, max_row: int | None = None,
            flash_kwargs: bool = False, pad_multiple: int | None = None) -> dict[str, Any]:
    """Packed (rows of at most ``max_row`` tokens, or one row) or padded; widths rounded up to ``pad_multiple``."""
    if packing:
        out = collate_packed(batch, max_row=max_row, pad_id=pad_id, flash_kwargs=flash_kwargs)
    else:
        out = collate_padded(batch, pad_id)
    return widen(out, pad_multiple, pad_id) if pad_multiple else out


def plan_epoch(lengths: list[int], batch_size: int, *, seed: int, epoch: int, by_length: bool) -> list[list[int]]:
    """The batches (lists of example indices) of one epoch, a pure function of its arguments so that a resumed
    run replays the same order. ``by_length`` groups examples of similar length (transformers'
    ``get_length_grouped_indices``: shuffled mega-batches of 50 batches sorted by length) to cut padding; else a plain
    shuffle. A last incomplete batch is dropped so that every step sees ``batch_size`` examples.

    >>> plan_epoch([3, 1, 2, 4], 2, seed=0, epoch=0, by_length=False)
    [[2, 0], [1, 3]]
    """
    if by_length:
        import torch
        from transformers.trainer_pt_utils import get_length_grouped_indices

        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = list(get_length_grouped_indices(lengths, batch_size, mega_batch_mult=50, generator=gen))
    else:
        order = list(range(len(lengths)))
        random.Random(seed * 100_003 + epoch).shuffle(order)
    return [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]


def length_batches(lengths: list[int], token_budget: int) -> list[list[int]]:
    """Example indices sorted by length and cut into batches of at most ``token_budget`` tokens (padded size:
    rows x longest), for evaluation, where order does not matter.

    >>> length_batches([5, 1, 4, 2], 8)
    [[1, 3], [2], [0]]
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[i] <= token_budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches
