"""Continuous fine-tuning: resume_adapter (weights, step count, LoRA shape), replay, the lineage's automatic dedup
and decontamination with a persisted MinHash index, and ``gristmill runs``. Tiny random-init Llama throughout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import yaml

from gristmill.common.errors import InputError
from gristmill.curation import minhash
from gristmill.lineage import replay_count, replay_rows
from tests.test_train_support import sum_rows, tiny_model_dir


def test_replay_count_and_rows_known_answer() -> None:
    assert replay_count(25, 100, 0.1) == 3  # 2.5 rounds half up
    assert replay_count(24, 100, 0.1) == 2  # 2.4
    assert replay_count(25, 2, 0.1) == 2  # capped at the earlier rows
    assert replay_count(10, 100, 0.0) == 0
    earlier = pl.DataFrame({"id": [f"e{i}" for i in range(10)], "text": [f"t{i}" for i in range(10)]})
    a = replay_rows(earlier, 30, 0.1, seed=0)
    # random.Random(0).sample(range(10), 3), in the earlier set's order; ids marked as replayed.
    assert a["id"].to_list() == ["replay:e0", "replay:e6", "replay:e9"] and a["text"].to_list() == ["t0", "t6", "t9"]
    assert a.equals(replay_rows(earlier, 30, 0.1, seed=0))  # seeded


def test_sketch_key_and_persisted_sketch_give_the_same_dedup() -> None:
    assert minhash.sketch_key(minhash.MinhashParams()) == "word5-p128-s1-v1"
    base = "the quick brown fox jumps over the lazy dog near the river bank today"
    new = pl.DataFrame({"id": ["n0", "n1", "n2"], "text": [base + " again", "something else entirely here now ok", ""]})
    earlier = pl.DataFrame({"id": ["e0", "e1"], "text": [base, "an unrelated earlier row about gardening tools"]})
    params = minhash.MinhashParams(threshold=0.7)
    sk = minhash.sketch(earlier["text"], params)
    back = minhash.frame_sketch(minhash.sketch_frame(earlier["id"], sk), params.num_perm)
    assert np.array_equal(back.sig, sk.sig) and np.array_equal(back.offsets, sk.offsets)
    assert np.array_equal(back.shingles, sk.shingles) and np.array_equal(back.has_shingles, sk.has_shingles)
    from_text = minhash.dedup_minhash(new, params, earlier=earlier)
    from_sketch = minhash.dedup_minhash(new, params, earlier=earlier.select("id"), earlier_sketch=back)
    assert from_text.dropped["id"].to_list() == from_sketch.dropped["id"].to_list() == ["n0"]
    assert from_text.dropped["reason"].to_list() == ["near_duplicate_of_earlier"]
    assert from_text.stats["earlier_rows_hashed"] == 2 and from_sketch.stats["earlier_rows_hashed"] == 0


def test_resume_needs_the_same_lora_shape(tmp_path: Path) -> None:
    from gristmill.train.model import check_resume_shape
    from gristmill.train.params import LoraParams, TrainParams

    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"r": 8, "lora_alpha": 16, "use_dora": False, "target_modules": ["q_proj", "v_proj"]}))
    check_resume_shape(tmp_path, TrainParams(lora=LoraParams(r=8, alpha=16)))  # all-linear: expanded by peft
    with pytest.raises(InputError) as err:
        check_resume_shape(tmp_path, TrainParams())
    assert "'r': 8" in str(err.value) and "'r': 16" in str(err.value) and "train.resume_adapter" in str(err.value)


def _lora_tensors(adapter: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(adapter / "adapter_model.safetensors"))


def test_resumed_training_starts_from_the_earlier_adapter_and_continues_the_steps(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from gristmill.train.model import load_model
    from gristmill.train.params import TrainParams
    from gristmill.train.qlora import train_qlora

    tiny = tiny_model_dir(tmp_path)
    params = TrainParams(max_steps=3, batch_size=4, max_seq_length=128, min_eval_rows=4, learning_rate=0.003,
                         eval_generate_rows=0, report_to=[], bf16=False)
    first = train_qlora(sum_rows(16), params, model_path=str(tiny), out_dir=tmp_path / "a1")
    assert first["start_step"] == 0 and first["global_step"] == 3
    saved = _lora_tensors(tmp_path / "a1")
    model, _ = load_model(str(tiny), params, adapter=tmp_path / "a1")
    loaded = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    name = next(k for k in saved if "lora_B" in k)
    match = [p for n, p in loaded.items() if n.replace(".default", "").endswith(name.split("base_model.model.")[-1])]
    assert len(match) == 1 and float(saved[name].abs().sum()) > 0  # trained: B is no longer zero
    assert (match[0].detach().cpu() == saved[name]).all() and match[0].requires_grad
    second = train_qlora(sum_rows(16, start=50), params.model_copy(update={"max_steps": 2}), model_path=str(tiny),
                         out_dir=tmp_path / "a2", resume_adapter=tmp_path / "a1", start_step=3)
    assert second["start_step"] == 3 and second["global_step"] == 5 and second["steps"] == 2
    # The earlier adapter, evaluated before the new steps, is not the base model.
    assert second["eval_loss_start"] != second["eval_loss_before"]


def _alpaca(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps({"instruction": r["messages"][0]["content"], "output": r["messages"][1]["content"]})
                   + "\n" for r in rows)


def _recipe(tmp_path: Path, name: str, batch: str, evalfile: str, **train: Any) -> Path:
    tiny = tiny_model_dir(tmp_path)
    recipe = {
        "name": name, "inputs": [{"path": batch, "mapping": "alpaca"}],
        "steps": [{"dedup_minhash": {"threshold": 0.8}}], "output": {"dir": str(tmp_path / "runs" / name)},
        "eval": [{"name": f"{name}_qa", "path": evalfile, "mapping": "alpaca", "metrics": ["loss"]}],
        "train": {"base_model": str(tiny), "max_steps": 2, "batch_size": 4, "learning_rate": 0.003,
                  "max_seq_length": 128, "min_eval_rows": 4, "eval_generate_rows": 0, "report_to": [],
                  "bf16": False, **train},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_continued_run_dedups_decontaminates_replays_and_lists_its_lineage(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    from gristmill.cli import main
    from gristmill.lineage import describe
    from gristmill.recipe import load_recipe
    from gristmill.runner import Runner

    (tmp_path / "b1.jsonl").write_text(_alpaca(sum_rows(20)))
    (tmp_path / "e1.jsonl").write_text(_alpaca(sum_rows(5, start=100)))
    first = Runner(load_recipe(_recipe(tmp_path, "g1", "b1.jsonl", "e1.jsonl"))).run().manifest
    assert "continues" not in first and first["rows_final"] == 20
    assert first["index"][0]["rows"] == 20  # the curated set's sketch, persisted for the next round
    assert (tmp_path / "runs" / "g1" / "index" / "minhash-word5-p128-s1-v1.parquet").is_file()

    # Round 2: 25 new rows + 3 copies of round-1 rows + 2 rows leaking round 1's eval set.
    batch2 = sum_rows(25, start=40) + sum_rows(3) + sum_rows(2, start=100)  # (a, b) repeat every 200
    (tmp_path / "b2.jsonl").write_text(_alpaca(batch2))
    (tmp_path / "e2.jsonl").write_text(_alpaca(sum_rows(5, start=150)))
    path2 = _recipe(tmp_path, "g2", "b2.jsonl", "e2.jsonl", resume_adapter="runs/g1", replay_fraction=0.1)
    second = Runner(load_recipe(path2)).run().manifest
    cont = second["continues"]
    assert cont["run"] == str((tmp_path / "runs" / "g1").resolve()) and cont["start_step"] == 2
    assert cont["dedup_against"] == [str((tmp_path / "runs" / "g1" / "dataset" / "data.parquet").resolve())]
    assert cont["decontaminate_against"] == [str(tmp_path / "e1.jsonl")]
    assert cont["eval_sets_added"] == ["g1_qa"]
    dedup = next(s for s in second["steps"] if s["step"] == "dedup_minhash")
    assert dedup["dropped_by_reason"] == {"near_duplicate_of_earlier": 3}
    assert dedup["earlier_rows_from_index"] == 20 and dedup["earlier_rows_hashed"] == 0  # not re-hashed
    decon = next(s for s in second["steps"] if s["step"] == "eval_decontaminate")
    assert decon["dropped_by_reason"] == {"eval_contamination": 2}
    assert second["rows_final"] == 25
    train = second["train"]
    assert train["new_rows"] == 25 and train["replay_rows"] == 3 == cont["replay_rows"]  # round(0.1 x 25) = 3
    assert train["start_step"] == 2 and train["global_step"] == 4
    assert {r["set"] for r in second["eval"]["table"]} == {"g2_qa", "g1_qa"}  # its own and the lineage's

    found = describe(tmp_path / "runs")
    assert [(r["run"], r["generation"]) for r in found["runs"]] == [("g1", 1), ("g2", 2)]
    assert found["runs"][1]["continues"] == cont["run"] and found["runs"][1]["rows_curated"] == 25
    g1_loss = next(r for r in found["eval_table"] if r["set"] == "g1_qa")
    assert g1_loss["g1"] is not None and g1_loss["g2"] is not None  # did round 2 forget round 1's set?
    assert main(["runs", str(tmp_path / "runs" / "g2")]) == 0
    out = capsys.readouterr()
    assert "g1_qa" in out.out + out.err and "2→4" in out.out + out.err
    assert main(["runs", str(tmp_path / "runs"), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["runs"]) == 2


def test_resume_adapter_errors_name_the_key(tmp_path: Path) -> None:
    from gristmill.common.errors import UserError
    from gristmill.recipe import load_recipe
    from gristmill.runner import Runner

    (tmp_path / "b1.jsonl").write_text(_alpaca(sum_rows(4)))
    (tmp_path / "e1.jsonl").write_text(_alpaca(sum_rows(2, start=100)))
    missing = _recipe(tmp_path, "g9", "b1.jsonl", "e1.jsonl", resume_adapter="runs/nope")
    with pytest.raises(UserError, match="train.resume_adapter: .*runs/nope is not a run directory"):
        Runner(load_recipe(missing)).run()
    itself = _recipe(tmp_path, "g8", "b1.jsonl", "e1.jsonl", resume_adapter="runs/g8")
    with pytest.raises(UserError, match="this run's own output.dir"):
        Runner(load_recipe(itself)).run()


def test_a_third_round_checks_against_the_whole_lineage(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from gristmill.lineage import describe
    from gristmill.recipe import load_recipe
    from gristmill.runner import Runner

    (tmp_path / "b1.jsonl").write_text(_alpaca(sum_rows(20)))
    (tmp_path / "e1.jsonl").write_text(_alpaca(sum_rows(5, start=100)))
    Runner(load_recipe(_recipe(tmp_path, "g1", "b1.jsonl", "e1.jsonl"))).run()
    (tmp_path / "b2.jsonl").write_text(_alpaca(sum_rows(12, start=40)))
    (tmp_path / "e2.jsonl").write_text(_alpaca(sum_rows(5, start=150)))
    Runner(load_recipe(_recipe(tmp_path, "g2", "b2.jsonl", "e2.jsonl", resume_adapter="runs/g1"))).run()
    # Round 3: 10 new rows, 2 copies of round-1 rows, 2 of round-2 rows, 1 leak of each earlier eval set.
    batch3 = sum_rows(10, start=70) + sum_rows(2) + sum_rows(2, start=40) + sum_rows(1, start=100) \
        + sum_rows(1, start=150)
    (tmp_path / "b3.jsonl").write_text(_alpaca(batch3))
    (tmp_path / "e3.jsonl").write_text(_alpaca(sum_rows(5, start=180)))
    third = Runner(load_recipe(_recipe(tmp_path, "g3", "b3.jsonl", "e3.jsonl", resume_adapter="runs/g2",
                                       replay_fraction=0.5))).run().manifest
    runs = tmp_path / "runs"
    assert third["continues"]["lineage"] == [str((runs / "g2").resolve()), str((runs / "g1").resolve())]
    dedup = next(s for s in third["steps"] if s["step"] == "dedup_minhash")
    assert dedup["dropped_by_reason"] == {"near_duplicate_of_earlier": 4}
    assert dedup["earlier_rows_from_index"] == 20 + 12 and dedup["earlier_rows_hashed"] == 0
    decon = next(s for s in third["steps"] if s["step"] == "eval_decontaminate")
    assert decon["dropped_by_reason"] == {"eval_contamination": 2}
    assert third["train"]["start_step"] == 4 and third["train"]["global_step"] == 6
    assert third["train"]["replay_rows"] == 5  # round(0.5 x 10), drawn from round 2's curated rows
    assert {r["set"] for r in third["eval"]["table"]} == {"g1_qa", "g2_qa", "g3_qa"}
    assert [(r["run"], r["generation"]) for r in describe(runs)["runs"]] == [("g1", 1), ("g2", 2), ("g3", 3)]


def test_an_unindexed_earlier_run_is_hashed_once_then_read_back(tmp_path: Path) -> None:
    from gristmill.lineage import curated_file, earlier_sketches, open_run

    run = tmp_path / "old"
    (run / "dataset").mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"status": "ok", "name": "old", "steps": []}))
    data = run / "dataset" / "data.parquet"
    texts = ["one two three four five six seven", "alpha beta gamma delta epsilon zeta eta", ""]
    pl.DataFrame({"id": ["a", "b", "c"], "text": texts}).write_parquet(data)
    assert curated_file(open_run(run, need_adapter=False)) == data.resolve()
    params = minhash.MinhashParams(against=[str(data)])
    ids, sk, stats = earlier_sketches(params)
    assert stats == {"earlier_rows_from_index": 0, "earlier_rows_hashed": 3}
    assert ids is not None and ids["id"].to_list() == [f"{data}:a", f"{data}:b", f"{data}:c"]
    assert (run / "index" / "minhash-word5-p128-s1-v1.parquet").is_file()
    ids2, sk2, stats2 = earlier_sketches(params)
    assert stats2 == {"earlier_rows_from_index": 3, "earlier_rows_hashed": 0}
    assert sk is not None and sk2 is not None and np.array_equal(sk.sig, sk2.sig)
    assert np.array_equal(sk.shingles, sk2.shingles) and sk2.has_shingles.tolist() == [True, True, False]
    pl.DataFrame({"id": ["a"], "text": texts[:1]}).write_parquet(data)  # the earlier set changed: index is stale
    _, sk3, stats3 = earlier_sketches(params)
    assert stats3 == {"earlier_rows_from_index": 0, "earlier_rows_hashed": 1} and sk3 is not None and len(sk3) == 1
    other = minhash.MinhashParams(against=[str(data)], num_perm=64)  # another key: its own index
    assert earlier_sketches(other)[2]["earlier_rows_hashed"] == 1
    assert (run / "index" / "minhash-word5-p64-s1-v1.parquet").is_file()
