"""Eval-set metrics: answer loss / perplexity, generation (ROUGE-L F1, exact match) and multiple-choice accuracy by
log-likelihood, for a model as it is loaded (the base, or one of its adapters made active by ``side``).

Answer loss: the rows are encoded as for training (``formatting.encode_rows``: only the assistant tokens are
targets) and the loss is the token-weighted mean cross-entropy over all of them (``evaluate.eval_loss``), i.e. the
sum of every answer token's loss over the number of answer tokens; perplexity = exp(loss).

Generation: greedy answers to every turn before the last assistant one, scored against that turn:

- ROUGE-L F1 over lower-cased ``\\w+`` words (``gristmill.common.rouge``);
- exact match after SQuAD's normalisation (lower-case, drop punctuation, drop the articles a/an/the, collapse
  whitespace): ``"The Eiffel Tower."`` matches ``"eiffel tower"``.

Multiple choice (the lm-evaluation-harness convention for ARC / CommonsenseQA): the context is
``"Question: <question>\\nAnswer:"``, each choice the continuation ``" <choice>"``; its score is the sum of the
log-probabilities of the continuation's tokens given the context (context and continuation tokenized together and
split where the context's own tokens end, as the harness does). ``acc``: the best-scoring choice is the gold one.
``acc_norm``: the same after dividing each score by the choice's length in characters. Worked example: choices
``["yes", "no way"]`` with log-likelihoods ``[-3.0, -4.0]``, gold 1 -> acc picks "yes" (wrong, 0);
acc_norm compares -3/3 = -1.0 with -4/6 = -0.67 and picks "no way" (right, 1). Ties go to the first choice.
"""

from __future__ import annotations

import contextlib
import math
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gristmill.common.rouge import rouge_l, tokens
from gristmill.train.formatting import encode_rows
from gristmill.train.model import autocast, device_of

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
MC_TEMPLATE = "Question: {question}\nAnswer:"


@dataclass
class ChoiceItem:
    """One multiple-choice question: its choices' texts and the index of the right one."""

    id: str
    question: str
    choices: list[str]
    labels: list[str]
    gold: int


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation. ``normalize_answer("The  Eiffel-Tower!") == "eiffeltower"``."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(reference)


def rouge_l_f1(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over words. ``rouge_l_f1("the cat sat", "the cat ran") == 2/3``."""
    return rouge_l(tokens(prediction), tokens(reference))


def generation_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-L F1 and exact-match rate over the pairs (0 for no pairs)."""
    pairs = list(zip(predictions, references, strict=True))
    n = max(len(pairs), 1)
    return {"rougeL": sum(rouge_l_f1(p, r) for p, r in pairs) / n,
            "exact_match": sum(exact_match(p, r) for p, r in pairs) / n}


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of ``context`` and of ``continuation`` after it, the harness's way: trailing spaces of the
    context move to the continuation, the whole text is tokenized once and split after the context's tokens."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = list(tokenizer(context + continuation, add_special_tokens=False)["input_ids"])
    ctx = list(tokenizer(context, add_special_tokens=False)["input_ids"])
    return ctx, whole[len(ctx):]


def continuation_logprobs(model: Any, tokenizer: Any, requests: list[tuple[str, str]], *,
                          batch_size: int = 8) -> list[float]:
    """Sum of log p(continuation tokens | context) per ``(context, continuation)`` request; right-padded batches
    of similar length (padding sits after every scored position, so it changes nothing they attend to)."""
    import torch

    pairs = [encode_pair(tokenizer, c, x) for c, x in requests]
    order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
    out = [0.0] * len(pairs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = device_of(model)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            seqs = [pairs[i][0] + pairs[i][1] for i in idx]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, seq in enumerate(seqs):
                ids[row, :len(seq)] = torch.tensor(seq)
                mask[row, :len(seq)] = 1
            with autocast(model):
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for row, i in enumerate(idx):
                ctx, cont = pairs[i]
                n = len(ctx) + len(cont)
                # Position t predicts token t + 1: the continuation's tokens are predicted from n-len(cont)-1 on.
                logp = logits[row, n - len(cont) - 1:n - 1].float().log_softmax(-1)
                out[i] = float(logp.gather(1, torch.tensor(cont, device=logp.device)[:, None]).sum())
    model.train(was_training)
    return out


def choose(scores: list[float], choices: list[str]) -> tuple[int, int]:
    """Indices of the best choice by raw log-likelihood and by log-likelihood per character (first on ties)."""
    norm = [s / max(len(c), 1) for s, c in zip(scores, choices, strict=True)]
    return max(range(len(scores)), key=lambda i: (scores[i], -i)), max(range(len(norm)), key=lambda i: (norm[i], -i))


def multiple_choice(model: Any, tokenizer: Any, items: list[ChoiceItem], *, batch_size: int = 8
                    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """``acc`` and ``acc_norm`` over ``items``, and per item the choice picked and the choices' scores."""
    requests = [(MC_TEMPLATE.format(question=it.question), f" {c}") for it in items for c in it.choices]
    flat = continuation_logprobs(model, tokenizer, requests, batch_size=batch_size)
    rows, acc, acc_norm, k = [], 0, 0, 0
    for it in items:
        scores = flat[k:k + len(it.choices)]
        k += len(it.choices)
        best, best_norm = choose(scores, it.choices)
        acc += best == it.gold
        acc_norm += best_norm == it.gold
        rows.append({"id": it.id, "pred": it.labels[best], "pred_norm": it.labels[best_norm],
                     "scores": [round(s, 4) for s in scores]})
    n = max(len(items), 1)
    return {"acc": acc / n, "acc_norm": acc_norm / n}, rows


def answer_loss(model: Any, tokenizer: Any, rows: list[dict[str, Any]], *, max_len: int, encode: dict[str, Any],
                batch_size: int = 8) -> dict[str, float]:
    """Token-weighted mean loss on the rows' assistant tokens and its perplexity; ``tokens`` is the number of
    answer tokens, ``rows`` the rows encoded (rows without an answer within ``max_len`` are not)."""
    from gristmill.train.evaluate import eval_loss  # evaluate scores its generations with this module

    examples, stats = encode_rows(tokenizer, rows, max_len, **encode)
    if not examples:
        return {"loss": math.nan, "perplexity": math.nan, "tokens": 0, "rows": 0}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = eval_loss(model, examples, pad_id=pad, packing=False, token_budget=batch_size * max_len)
    return {"loss": out["loss"], "perplexity": out["perplexity"], "tokens": out["tokens"], "rows": stats.kept}


def answers(model: Any, tokenizer: Any, rows: list[dict[str, Any]], *, max_new_tokens: int, stop_ids: set[int],
            batch_size: int = 8) -> list[str]:
    """Greedy answers to each row's messages up to (not including) its last turn."""
    from gristmill.train.evaluate import generate

    return generate(model, tokenizer, [r["messages"][:-1] for r in rows], max_new_tokens=max_new_tokens,
                    stop_ids=stop_ids, batch_size=batch_size, phase="eval generate")


@contextlib.contextmanager
def side(model: Any, adapter: str | None) -> Iterator[Any]:
    """The model as the base (``adapter`` None: every adapter disabled) or with the named adapter active."""
    if adapter is None:
        from peft import PeftModel

        if isinstance(model, PeftModel):
            with model.disable_adapter():
                yield model
        else:  # a bare transformers model (its own disable_adapter is for adapters loaded into it)
            yield model
        return
    model.set_adapter(adapter)
    yield model


def load_for_eval(model_path: str, params: Any, adapters: dict[str, str]) -> tuple[Any, Any]:
    """The base model loaded as training loads it (``params``: a ``TrainParams``; NF4 for qlora) with each
    adapter directory under its name, and the tokenizer (pad = EOS when it has none)."""
    from transformers import AutoTokenizer

    from gristmill.train.model import load_base

    model = load_base(model_path, params)
    if adapters:
        from peft import PeftModel

        names = list(adapters)
        model = PeftModel.from_pretrained(model, adapters[names[0]], adapter_name=names[0])
        for name in names[1:]:
            model.load_adapter(adapters[name], adapter_name=name)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
