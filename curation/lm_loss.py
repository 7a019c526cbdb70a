"""Per-token loss of a response under a small causal LM, with and without its instruction (transformers, CPU).

``loss(A | Q)`` is the mean negative log-likelihood of the response tokens after the chat-formatted prompt;
``loss(A)`` that of the response tokens alone. Their ratio is the instruction-following difficulty (IFD, Li et
al. 2024, "From Quantity to Quality", arXiv:2308.12032): well under 1 when the instruction makes the answer
predictable, near or above 1 when it does not help (an answer to another question, or text the model finds no
easier after reading the prompt).

Worked example: token probabilities of a 2-token answer 0.5 and 0.25 give loss (ln 2 + ln 4) / 2 = 1.04; if the
answer alone has loss 2.08, IFD = 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

_HINT = "pip install 'gristmill[models]'  (transformers, torch)"


@lru_cache(maxsize=2)
def _load(model_path: str) -> tuple[Any, Any]:
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - exercised only without the dependency
        raise ImportError(f"the small-model signal needs transformers and torch: {_HINT}") from exc
    tok = AutoTokenizer.from_pretrained(model_path)
    # bf16 where the CPU runs it natively halves the time (docs/platform.md); losses agree to ~1e-2.
    dtype = torch.bfloat16 if _bf16_native() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).eval()
    return tok, model


def _bf16_native() -> bool:
    try:
        import torch

        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - any failure means: not native
        return False


def mean_nll(token_logprobs: Sequence[float]) -> float:
    """Mean negative log-likelihood: ``mean_nll([math.log(0.5), math.log(0.25)])`` -> 1.0397."""
    return -sum(token_logprobs) / len(token_logprobs) if token_logprobs else math.nan


def response_losses(model_path: str, prompts: list[list[dict[str, str]]], responses: list[str], *,
                    max_tokens: int = 256, batch_size: int = 8) -> tuple[list[float], list[float]]:
    """``(loss(A | Q), loss(A))`` per row; the response is cut to ``max_tokens`` tokens; NaN for an empty one."""
    import torch

    tok, model = _load(model_path)
    with_q: list[tuple[list[int], int]] = []  # (ids, where the response starts)
    alone: list[tuple[list[int], int]] = []
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    for prompt, response in zip(prompts, responses, strict=True):
        answer = tok(response, add_special_tokens=False)["input_ids"][:max_tokens]
        head = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
        if isinstance(head, dict) or hasattr(head, "input_ids"):
            head = head["input_ids"]
        head = list(head)[-2 * max_tokens:]  # a very long prompt keeps its end (the question is usually last)
        with_q.append((head + answer, len(head)))
        alone.append((bos + answer, len(bos) if bos else 1))  # without BOS the first token has no context
    out: list[list[float]] = []
    for seqs in (with_q, alone):
        losses = [math.nan] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))  # length-sorted batches pad little
        for start in range(0, len(order), batch_size):
            idx = [i for i in order[start:start + batch_size] if len(seqs[i][0]) > seqs[i][1]]
            if not idx:
                continue
            width = max(len(seqs[i][0]) for i in idx)
            pad = tok.pad_token_id if tok.pad_token_id is not None else 0
            ids = torch.tensor([seqs[i][0] + [pad] * (width - len(seqs[i][0])) for i in idx])
            mask = torch.tensor([[1] * len(seqs[i][0]) + [0] * (width - len(seqs[i][0])) for i in idx])
            with torch.inference_mode():
                logits = model(input_ids=ids, attention_mask=mask).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
            for row, i in enumerate(idx):
                ids_i, start_i = seqs[i]
                losses[i] = mean_nll(logp[row, start_i - 1:len(ids_i) - 1].tolist())
        out.append(losses)
    return out[0], out[1]
