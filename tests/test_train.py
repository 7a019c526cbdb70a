"""The trainer on a tiny random-init Llama: masking, EOS check, over-length rows, weights, packing equivalence,
eval outputs, checkpoint resume after a real kill."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gristmill.train.formatting import IGNORE, EncodeStats, Example, TemplateError, encode_row, encode_rows
from gristmill.train.packing import collate_packed, collate_padded, length_batches, plan_epoch, widen
from gristmill.train.params import TrainParams
from tests.conftest import ROOT
from tests.test_train_support import NO_EOS, sum_rows, tiny_model_dir, tiny_tokenizer

torch = pytest.importorskip("torch")
pytest.importorskip("peft")


def _answers(tok, example: Example) -> list[str]:
    return tok.convert_ids_to_tokens([t for t in example.labels if t != IGNORE])


def test_every_assistant_turn_is_trained_and_nothing_else() -> None:
    tok = tiny_tokenizer()
    row = sum_rows(1, start=1, turns=2)[0]
    ex = encode_row(tok, row, 512)
    assert ex is not None
    # Both answers with their end-of-turn token; no user/system/role tokens.
    assert _answers(tok, ex) == ["the", "answer", "is", "10", ".", "<|im_end|>", "the", "answer", "is", "13", ".",
                                 "<|im_end|>"]
    assert ex.labels[0] == IGNORE
    # A row ending on a user turn has no answer to learn.
    stats = EncodeStats()
    assert encode_row(tok, {"messages": [{"role": "user", "content": "hi"}]}, 512, stats=stats) is None
    assert stats.skipped == {"no_assistant_turn": 1}


def test_template_without_stop_token_is_refused_or_fixed() -> None:
    tok = tiny_tokenizer(NO_EOS)
    row = sum_rows(1, turns=2)[0]
    with pytest.raises(TemplateError, match="never stop.*fix_eos"):
        encode_row(tok, row, 512)
    stats = EncodeStats()
    ex = encode_row(tok, row, 512, fix_eos=True, stats=stats)
    assert ex is not None and stats.eos_fixed == 2
    answers = _answers(tok, ex)
    assert answers.count("<|im_end|>") == 2 and answers[-1] == "<|im_end|>"
    assert ex.input_ids.count(tok.eos_token_id) == 2


def test_overlength_rows_are_counted_and_dropped_or_truncated() -> None:
    tok = tiny_tokenizer()
    rows = sum_rows(3) + sum_rows(1, start=3, turns=4)  # the last row is ~4x longer
    n_long = len(tok.apply_chat_template(rows[-1]["messages"], tokenize=True)["input_ids"])
    kept, stats = encode_rows(tok, rows, 30, overlength="drop")
    assert n_long > 30 and len(kept) == 3 and stats.overlength == 1 and stats.skipped == {"overlength": 1}
    kept, stats = encode_rows(tok, rows, 30, overlength="truncate")
    assert len(kept) == 4 and stats.overlength == 1 and len(kept[-1].input_ids) == 30
    assert kept[-1].source == 3


def test_weights_are_read_and_zero_weight_rows_skipped() -> None:
    tok = tiny_tokenizer()
    rows = sum_rows(3)
    rows[0]["weight"], rows[1]["weight"] = 2.5, 0.0
    kept, stats = encode_rows(tok, rows, 512)
    assert [e.weight for e in kept] == [2.5, 1.0] and stats.skipped == {"zero_weight": 1}


def test_rows_of_bounded_length_are_filled_first_fit_decreasing() -> None:
    from gristmill.train.packing import pack_rows

    assert pack_rows([300, 200, 250, 100], 512) == [[0, 1], [2, 3]]
    assert pack_rows([600, 10], 512) == [[0], [1]]  # too long for a row: a row of its own
    a, b, c = Example([5, 6, 7], [IGNORE, 6, 7]), Example([8, 9], [IGNORE, 9]), Example([4], [IGNORE])
    rows = collate_packed([a, b, c], max_row=4, pad_id=0)
    assert rows["input_ids"].tolist() == [[5, 6, 7, 4], [8, 9, 0, 0]]
    assert rows["position_ids"].tolist() == [[0, 1, 2, 0], [0, 1, 0, 1]]  # the padding block restarts at 0
    assert rows["labels"].tolist() == [[IGNORE, 6, 7, IGNORE], [IGNORE, 9, IGNORE, IGNORE]]
    assert rows["weights"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_collate_packed_restarts_positions_and_masks_boundaries() -> None:
    a, b = Example([5, 6, 7], [IGNORE, 6, 7], 2.0), Example([8, 9], [IGNORE, 9], 1.0)
    packed = collate_packed([a, b])
    assert packed["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert packed["labels"].tolist() == [[IGNORE, 6, 7, IGNORE, 9]]
    assert packed["weights"].tolist() == [[2.0, 2.0, 2.0, 1.0, 1.0]]
    padded = collate_padded([a, b], pad_id=0)
    assert padded["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert padded["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert padded["labels"].tolist() == [[IGNORE, 6, 7], [IGNORE, 9, IGNORE]]


def test_widen_pads_to_a_multiple_with_a_block_nobody_learns_from() -> None:
    a, b = Example([5, 6, 7], [IGNORE, 6, 7], 2.0), Example([8, 9], [IGNORE, 9], 1.0)
    packed = widen(collate_packed([a, b]), 4, pad_id=0)
    assert packed["input_ids"].tolist() == [[5, 6, 7, 8, 9, 0, 0, 0]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    assert packed["labels"].tolist() == [[IGNORE, 6, 7, IGNORE, 9, IGNORE, IGNORE, IGNORE]]
    assert packed["weights"].tolist() == [[2.0, 2.0, 2.0, 1.0, 1.0, 0.0, 0.0, 0.0]]
    padded = widen(collate_padded([a, b], pad_id=0), 4, pad_id=0)
    assert padded["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]
    assert widen(padded, 4, pad_id=0)["input_ids"].shape == (2, 4)  # already a multiple: unchanged


def test_batch_plans_are_reproducible_and_length_grouped() -> None:
    lengths = [10, 200, 12, 190, 11, 210, 9, 205]
    assert plan_epoch(lengths, 2, seed=3, epoch=1, by_length=True) == \
        plan_epoch(lengths, 2, seed=3, epoch=1, by_length=True)
    grouped = plan_epoch(lengths, 2, seed=3, epoch=1, by_length=True)
    assert sorted(i for b in grouped for i in b) == list(range(8))
    assert all((lengths[x] > 100) == (lengths[y] > 100) for x, y in grouped)  # short with short, long with long
    assert plan_epoch(lengths, 3, seed=0, epoch=0, by_length=False) != \
        plan_epoch(lengths, 3, seed=0, epoch=1, by_length=False)
    assert length_batches([5, 1, 4, 2], 8) == [[1, 3], [2], [0]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("tiny"))


@pytest.mark.parametrize("method", ["qlora", "lora"])
def test_packed_and_padded_batches_give_the_same_token_losses(tiny: Path, method: str) -> None:
    from gristmill.train.model import load_model, token_losses, varlen_attention
    from gristmill.train.packing import collate

    model, tok = load_model(str(tiny), TrainParams(method=method, bf16=False))  # fp32: exact comparison
    with torch.no_grad():  # make the adapter non-trivial
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    examples, _ = encode_rows(tok, sum_rows(3, turns=1) + sum_rows(1, start=5, turns=3), 512)
    model.eval()
    with torch.no_grad():
        packed, _ = token_losses(model, collate(examples, tok.pad_token_id, packing=True))
        padded, _ = token_losses(model, collate(examples, tok.pad_token_id, packing=False))
        alone = torch.cat([token_losses(model, collate([e], tok.pad_token_id, packing=False))[0] for e in examples])
        rows = collate(examples, tok.pad_token_id, packing=True, max_row=40)  # several rows + padding blocks
        multi, _ = token_losses(model, rows)
        wide, _ = token_losses(model, collate(examples, tok.pad_token_id, packing=True, max_row=40, pad_multiple=128))
        # One row with its example boundaries: per-example causal attention (fused.varlen_sdpa on CPU).
        varlen, _ = token_losses(model, collate(examples, tok.pad_token_id, packing=True, flash_kwargs=True))
    assert varlen_attention(model)  # CPU: the trainer runs the per-example path
    assert torch.allclose(varlen, alone, atol=2e-4)
    assert rows["input_ids"].shape[0] > 1
    assert packed.shape == padded.shape == alone.shape == (sum(e.n_targets for e in examples),)
    # Per example: token losses are in example order in packed/padded/alone; rows reorder examples.
    assert torch.allclose(packed, alone, atol=2e-4) and torch.allclose(padded, alone, atol=2e-4)
    assert torch.allclose(multi.sort().values, alone.sort().values, atol=2e-4)
    assert torch.allclose(wide, multi, atol=2e-4)  # train.compile's padding to 128 changes no loss


def test_dequantized_weight_cache_gives_bitsandbytes_results(tiny: Path) -> None:
    """train.dequant_cache: same logits and LoRA gradients as bitsandbytes' per-call dequantization, nothing saved."""
    from gristmill.train.model import load_model, token_losses
    from gristmill.train.packing import collate

    runs = {}
    for cache in (False, True):
        torch.manual_seed(0)
        model, tok = load_model(str(tiny), TrainParams(method="qlora", bf16=False, dequant_cache=cache))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
        examples, _ = encode_rows(tok, sum_rows(3), 512)
        losses, _ = token_losses(model, collate(examples, tok.pad_token_id, packing=True))
        losses.sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        cached = [m for m in model.modules() if hasattr(m, "gristmill_dense_weight")]
        runs[cache] = (losses.detach(), grads, set(model.state_dict()), len(cached))
    assert runs[False][3] == 0 and runs[True][3] > 0
    assert torch.equal(runs[False][0], runs[True][0])
    assert runs[False][1].keys() == runs[True][1].keys() and len(runs[True][1]) > 0
    assert all(torch.allclose(runs[False][1][n], runs[True][1][n], atol=1e-6) for n in runs[True][1])
    assert runs[False][2] == runs[True][2]  # the copy is not part of the model's state


def test_lora_linear_matches_the_unfused_formula_and_its_gradients() -> None:
    """fused.lora_linear: y = x W^T + b + s (x A^T) B^T, gradients for x, A, B; a 1-token known answer too."""
    from gristmill.train.fused import lora_linear

    x = torch.tensor([[1.0, 2.0]], requires_grad=True)
    w, bias = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.tensor([0.5, 0.0, 0.0])
    a, b = torch.tensor([[1.0, -1.0]], requires_grad=True), torch.tensor([[1.0], [0.0], [2.0]], requires_grad=True)
    y = lora_linear(x, w, bias, a, b, 2.0)  # x A^T = -1 -> 2 * -1 * [1, 0, 2] = [-2, 0, -4]
    assert y.tolist() == [[1.5 - 2.0, 2.0, 3.0 - 4.0]]
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    w, bias = torch.randn(6, 8, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    a = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, a, b: lora_linear(x, w, bias, a, b, 0.5), (x, a, b))
    reference = x @ w.T + bias + 0.5 * (x @ a.T) @ b.T
    assert torch.allclose(lora_linear(x, w, None, a, b, 0.5), reference - bias)


def test_varlen_sdpa_is_per_example_causal_attention() -> None:
    """fused.varlen_sdpa on a packed row = sdpa on each example alone (GQA: 4 query heads over 2 kv heads)."""
    from types import SimpleNamespace

    from gristmill.train.fused import varlen_sdpa

    torch.manual_seed(0)
    lengths = [3, 5, 1]
    q = torch.randn(1, 4, 9, 8, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(1, 2, 9, 8, dtype=torch.float64, requires_grad=True) for _ in range(2))
    module = SimpleNamespace(num_key_value_groups=2, is_causal=True)
    bounds = torch.tensor([0, 3, 8, 9], dtype=torch.int32)
    out, _ = varlen_sdpa(module, q, k, v, None, cu_seq_lens_q=bounds, cu_seq_lens_k=bounds)
    alone = [torch.nn.functional.scaled_dot_product_attention(qs, ks.repeat_interleave(2, 1),
                                                              vs.repeat_interleave(2, 1), is_causal=True)
             for qs, ks, vs in zip(q.split(lengths, 2), k.split(lengths, 2), v.split(lengths, 2), strict=True)]
    assert out.shape == (1, 9, 4, 8)
    assert torch.allclose(out, torch.cat(alone, 2).transpose(1, 2))
    # The 1-token example attends only to itself: its output is its own value vector.
    assert torch.allclose(out[0, 8, :2], v[0, 0, 8].expand(2, 8)) and torch.allclose(out[0, 8, 2:], v[0, 1, 8].expand(2, 8))
    assert torch.autograd.gradcheck(
        lambda q, k, v: varlen_sdpa(module, q, k, v, None, cu_seq_lens_q=bounds)[0], (q, k, v))


def test_weights_scale_the_loss_as_the_formula_says(tiny: Path) -> None:
    """step loss = Σ_tokens w(row) · ℓ / number of labelled tokens."""
    from gristmill.train.model import load_model, token_losses
    from gristmill.train.packing import collate

    model, tok = load_model(str(tiny), TrainParams(method="lora", bf16=False))
    rows = sum_rows(2)
    rows[0]["weight"], rows[1]["weight"] = 3.0, 0.5
    examples, _ = encode_rows(tok, rows, 512)
    with torch.no_grad():
        losses, weights = token_losses(model, collate(examples, tok.pad_token_id, packing=True))
        l0, _ = token_losses(model, collate([examples[0]], tok.pad_token_id, packing=True))
        l1, _ = token_losses(model, collate([examples[1]], tok.pad_token_id, packing=True))
    expected = (3.0 * l0.sum() + 0.5 * l1.sum()) / (l0.numel() + l1.numel())
    assert torch.isclose((losses * weights).sum() / losses.numel(), expected, atol=1e-5)


def _params(**kw) -> TrainParams:
    base = {"method": "qlora", "max_steps": 6, "batch_size": 4, "learning_rate": 3e-3, "max_seq_length": 128,
            "min_eval_rows": 6, "eval_generate_rows": 4, "eval_max_new_tokens": 8, "save_steps": 2,
            "report_to": ["tensorboard"]}
    return TrainParams(**(base | kw))


def test_training_writes_adapter_eval_and_predictions(tiny: Path, tmp_path: Path) -> None:
    import polars as pl

    from gristmill.train.qlora import train_qlora

    phases: set[str] = set()
    metrics = train_qlora(sum_rows(40, turns=2), _params(), model_path=str(tiny), out_dir=tmp_path / "a",
                          progress=lambda phase, done, total, note: phases.add(phase))
    assert {"eval (before)", "train", "eval (after)", "generate (base)", "generate (adapter)"} <= phases
    assert metrics["eval_rows"] == 6 and metrics["train_rows"] == 34 and metrics["steps"] == 6
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"]
    assert metrics["train_seconds"] > 0 and metrics["eval_seconds"] > 0
    assert metrics["seconds"] >= metrics["train_seconds"] + metrics["eval_seconds"]
    ev = json.loads((tmp_path / "a" / "eval.json").read_text())
    for side in ("base", "adapter"):
        assert {"loss", "perplexity", "rougeL", "exact_match"} <= set(ev[side])
    assert math.isclose(ev["base"]["perplexity"], math.exp(ev["base"]["loss"]), rel_tol=1e-6)
    preds = pl.read_parquet(tmp_path / "a" / "eval_predictions.parquet")
    assert preds.columns == ["id", "prompt", "reference", "base", "adapter"] and preds.height == 4
    assert (tmp_path / "a" / "adapter_model.safetensors").exists()
    assert "| loss |" in (tmp_path / "a" / "README.md").read_text()
    assert list((tmp_path / "a" / "logs" / "tensorboard").glob("events.out.tfevents.*"))


def test_eval_split_is_capped(tiny: Path, tmp_path: Path) -> None:
    from gristmill.train.qlora import train_qlora

    metrics = train_qlora(sum_rows(60), _params(max_steps=1, max_eval_rows=5, eval_generate_rows=0, report_to=[]),
                          model_path=str(tiny), out_dir=tmp_path / "a")
    assert metrics["eval_rows"] == 5 and metrics["train_rows"] == 55
    assert not (tmp_path / "a" / "eval_predictions.parquet").exists()


_CHILD = """
import json, os, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from gristmill.train.params import TrainParams
from gristmill.train.qlora import train_qlora
from tests.test_train_support import sum_rows

def progress(phase, done, total, note):
    if phase == "train" and done == 5 and os.environ.get("HANG_AT_5"):
        print("hanging", flush=True)
        time.sleep(600)  # the parent kills us here, after the step-4 checkpoint

params = TrainParams(**json.loads(sys.argv[3]))
m = train_qlora(sum_rows(40, turns=2), params, model_path=sys.argv[1], out_dir=Path(sys.argv[2]),
                progress=progress, checkpoint_dir=Path(sys.argv[2] + "-ckpt"))
print(json.dumps(m))
"""


def test_resume_after_sigkill_gives_the_same_curve(tiny: Path, tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(root=str(ROOT)))
    params = _params(eval_generate_rows=0, report_to=[]).model_dump_json()
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def run(out: str, **extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, str(script), str(tiny), str(tmp_path / out), params],
                                env=env | extra, text=True, stdout=subprocess.PIPE)

    straight = run("straight")
    out, _ = straight.communicate(timeout=600)
    reference = json.loads(out.strip().splitlines()[-1])

    killed = run("killed", HANG_AT_5="1")
    assert killed.stdout is not None and killed.stdout.readline().strip() == "hanging"
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert [p.name for p in (tmp_path / "killed-ckpt").iterdir()] == ["step-000004"]
    resumed = run("killed")
    out, _ = resumed.communicate(timeout=600)
    metrics = json.loads(out.strip().splitlines()[-1])
    assert metrics["resumed_from_step"] == 4 and reference["resumed_from_step"] == 0
    assert len(metrics["loss_curve"]) == 6
    assert metrics["loss_curve"] == pytest.approx(reference["loss_curve"], rel=1e-4, abs=1e-5)
    assert metrics["eval_loss_after"] == pytest.approx(reference["eval_loss_after"], rel=1e-4)
