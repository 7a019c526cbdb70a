"""A tiny word-level chat tokenizer and a tiny random-init Llama, built in a temporary folder, so the trainer's
tests run in seconds without downloaded weights (the real-model tests are in test_models_real.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHATML = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)
# A template whose assistant turns end with a token generation does not stop on (<|end|> is not EOS).
NO_EOS = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)
WORDS = ["user", "assistant", "system", "what", "is", "plus", "times", "?", ".", "the", "answer", "hello", "hi"]


def tiny_tokenizer(template: str = CHATML) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<|im_start|>", "<|im_end|>", "<|end|>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS + [str(n) for n in range(200)])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<|im_start|>",
                                  eos_token="<|im_end|>", pad_token="<|im_end|>",
                                  additional_special_tokens=["<|end|>"])
    tok.chat_template = template
    return tok


def tiny_model_dir(root: Path, template: str = CHATML, seed: int = 0) -> Path:
    """A 2-layer, 64-wide Llama (random init) with the tiny tokenizer, saved as an HF directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = root / "tiny-llama"
    if (path / "config.json").exists():
        return path
    tok = tiny_tokenizer(template)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def sum_rows(n: int, start: int = 0, turns: int = 1) -> list[dict[str, Any]]:
    """Chat rows "what is a plus b ?" -> "the answer is a+b ." (``turns`` question/answer pairs each)."""
    rows = []
    for i in range(start, start + n):
        messages = []
        for t in range(turns):
            a, b = (i * 7 + t) % 50, (i * 3 + 2 * t) % 40
            messages += [{"role": "user", "content": f"what is {a} plus {b} ?"},
                         {"role": "assistant", "content": f"the answer is {a + b} ."}]
        rows.append({"id": f"r{i}", "messages": messages})
    return rows
