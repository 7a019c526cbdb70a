"""Eval sets (``eval:``): the recipe section and its validation, the implicit decontamination of the training data,
the metrics against hand-computed answers, multiple-choice files in the shapes users bring (ARC-Easy, CommonsenseQA),
and the run / ``eval_run`` outputs for the base model and the adapter."""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
import pytest
import yaml

from gristmill.common.errors import InputError
from gristmill.eval_params import EvalSet
from gristmill.recipe import RecipeError, parse_recipe
from gristmill.train.eval_metrics import choose, exact_match, generation_scores, normalize_answer, rouge_l_f1
from tests.test_train_support import sum_rows, tiny_model_dir

torch = pytest.importorskip("torch")

ARC_ROWS = [  # question, four choices, answer (the ARC-Easy csv layout); written by the tests, not copied
    ("what is 2 plus 3 ?", "5", "6", "7", "8", "A"),
    ("what is 4 plus 4 ?", "2", "8", "9", "1", "B"),
    ("what is 10 plus 1 ?", "3", "4", "11", "12", "C"),
]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _alpaca(rows: list[dict]) -> list[dict]:
    return [{"instruction": r["messages"][0]["content"], "input": "", "output": r["messages"][1]["content"]}
            for r in rows]


# --- metrics: known answers -------------------------------------------------------------------------------------

def test_exact_match_uses_squad_normalisation() -> None:
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("An apple, a pear and THE plum.") == "apple pear and plum"
    assert exact_match("The Eiffel Tower.", "eiffel tower")
    assert not exact_match("Eiffel", "eiffel tower")


def test_rouge_l_and_generation_scores_by_hand() -> None:
    assert rouge_l_f1("the cat sat", "the cat ran") == pytest.approx(2 / 3)
    # "a b c d" vs "a c e": LCS a c = 2, P = 2/4, R = 2/3, F = 2PR/(P+R) = 4/7
    assert rouge_l_f1("a b c d", "a c e") == pytest.approx(4 / 7)
    scores = generation_scores(["The answer is 5.", "seven"], ["the answer is 5", "the answer is 7"])
    assert scores["exact_match"] == 0.5
    assert scores["rougeL"] == pytest.approx((1.0 + 0.0) / 2)


def test_choose_acc_and_acc_norm_worked_example() -> None:
    assert choose([-3.0, -4.0], ["yes", "no way"]) == (0, 1)  # -3/3 = -1.0 < -4/6: length-normalised picks 1
    assert choose([-2.0, -2.0], ["ab", "ab"]) == (0, 0)  # ties go to the first choice


# --- multiple-choice files -----------------------------------------------------------------------------------------

def _items(tmp_path: Path, name: str, text: str, **spec: object) -> list:
    from gristmill.evaluation import choice_items

    path = tmp_path / name
    path.write_text(text)
    return choice_items(EvalSet(name="mc", path=name, mapping="multiple_choice", **spec), path)


def test_arc_csv_without_header_and_with_letter_columns(tmp_path: Path) -> None:
    bare = "".join(",".join(f'"{c}"' for c in row) + "\n" for row in ARC_ROWS)
    items = _items(tmp_path, "arc.csv", bare)  # no header: question, choices..., answer by position
    assert [(it.question, it.choices, it.gold) for it in items][:2] == [
        ("what is 2 plus 3 ?", ["5", "6", "7", "8"], 0), ("what is 4 plus 4 ?", ["2", "8", "9", "1"], 1)]
    assert items[0].labels == ["A", "B", "C", "D"] and items[2].id == "arc.csv:3"
    headed = "question,A,B,C,D,answerKey\n" + bare
    assert [it.gold for it in _items(tmp_path, "arc2.csv", headed)] == [0, 1, 2]
    assert len(_items(tmp_path, "arc3.csv", headed, max_rows=2)) == 2


def test_choices_column_as_json_list_dict_and_struct(tmp_path: Path) -> None:
    as_list = 'question,choices,answer\n"what is 1 plus 1 ?","[""3"", ""2""]",2\n'
    items = _items(tmp_path, "l.csv", as_list)  # a number answers 1-based when the labels are letters
    assert items[0].choices == ["3", "2"] and items[0].gold == 1
    as_dict = ('question,choices,answerKey\n"what is 1 plus 2 ?",'
               '"{""label"": [""1"", ""2"", ""3""], ""text"": [""3"", ""4"", ""5""]}",1\n')
    items = _items(tmp_path, "d.csv", as_dict)  # ARC's own numeric labels: "1" is the label, not a position
    assert items[0].labels == ["1", "2", "3"] and items[0].gold == 0
    csqa = {"id": "q7", "question": "where do you keep milk ?", "answerKey": "B",
            "choices": {"label": ["A", "B", "C"], "text": ["oven", "fridge", "car"]}}
    items = _items(tmp_path, "c.jsonl", json.dumps(csqa) + "\n")
    assert (items[0].id, items[0].choices, items[0].gold) == ("q7", ["oven", "fridge", "car"], 1)
    by_text = 'q,opts,ans\n"pick",oven|fridge,fridge\n'.replace("oven|fridge", '"[""oven"", ""fridge""]"')
    items = _items(tmp_path, "t.csv", by_text, question="q", choices="opts", answer="ans")
    assert items[0].gold == 1  # the answer given as the choice's text


def test_multiple_choice_errors_name_the_row_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"bad\.csv:2: answer 'Z' is neither a label"):
        _items(tmp_path, "bad.csv", 'question,A,B,answerKey\n"what is it ?",x,y,Z\n')
    with pytest.raises(InputError, match=r"no column\(s\) \['prompt'\]"):
        _items(tmp_path, "cols.csv", 'question,A,B,answerKey\n"q ?",x,y,A\n', question="prompt")


# --- the recipe section ----------------------------------------------------------------------------------------

def _recipe_text(tmp_path: Path, eval_section: object, steps: list | None = None, **extra: object) -> str:
    data = {"name": "e", "inputs": [{"path": "in.jsonl", "mapping": "messages"}],
            "steps": steps if steps is not None else [{"normalize": {}}, {"audit": {}}],
            "output": {"dir": str(tmp_path / "run"), "formats": ["parquet"]}, "eval": eval_section, **extra}
    return yaml.safe_dump(data, sort_keys=False)


def test_eval_section_errors_name_the_key_path(tmp_path: Path) -> None:
    bad = [{"name": "qa", "path": "qa.jsonl", "metrics": ["multiple_choice"]},
           {"name": "mc", "path": "mc.csv", "mapping": "multiple_choice", "max_new_tokens": 0},
           {"name": "qa", "path": "b.jsonl", "choices": ["A", "B"]}]
    with pytest.raises(RecipeError) as err:
        parse_recipe(_recipe_text(tmp_path, bad), tmp_path / "r.yaml")
    text = str(err.value)
    assert "eval[0]: Value error, metric multiple_choice needs `mapping: multiple_choice`" in text
    assert "eval[1].max_new_tokens: Input should be greater than or equal to 1" in text
    assert "eval[2]: Value error, choices only apply to `mapping: multiple_choice`" in text
    assert "eval: Value error, eval set names must be unique" not in text  # reported once the sets are valid
    dup = [{"name": "qa", "path": "a.jsonl"}, {"name": "qa", "path": "b.jsonl"}]
    with pytest.raises(RecipeError, match="eval: Value error, eval set names must be unique.*repeated: qa"):
        parse_recipe(_recipe_text(tmp_path, dup), tmp_path / "r.yaml")


def test_eval_sets_add_a_decontamination_step_before_the_trailing_audit(tmp_path: Path) -> None:
    sets = [{"name": "qa", "path": "qa.jsonl"}, {"name": "arc", "path": "data/arc.csv", "mapping": "multiple_choice"}]
    recipe = parse_recipe(_recipe_text(tmp_path, sets), tmp_path / "r.yaml")
    assert [s.name for s in recipe.steps] == ["normalize", "eval_decontaminate", "audit"]
    assert recipe.steps[1].params.eval_sets == ["qa.jsonl", "data/arc.csv"]
    assert [s.resolved_metrics for s in recipe.eval] == [["loss", "generation"], ["multiple_choice"]]
    # A decontaminate step of the recipe's own that covers a file (by resolved path) leaves only the others.
    own = [{"decontaminate": {"eval_sets": [str(tmp_path / "qa.jsonl")]}}]
    recipe = parse_recipe(_recipe_text(tmp_path, sets, steps=own), tmp_path / "r.yaml")
    assert [s.name for s in recipe.steps] == ["decontaminate", "eval_decontaminate"]
    assert recipe.steps[1].params.eval_sets == ["data/arc.csv"]
    recipe = parse_recipe(_recipe_text(tmp_path, sets[:1], steps=own), tmp_path / "r.yaml")
    assert [s.name for s in recipe.steps] == ["decontaminate"]
    assert parse_recipe(_recipe_text(tmp_path, []), tmp_path / "r.yaml").steps[-1].name == "audit"


def test_a_planted_eval_row_is_dropped_from_the_training_data(tmp_path: Path) -> None:
    from gristmill.recipe import load_recipe
    from gristmill.runner import Runner

    train_rows = sum_rows(10)
    eval_rows = sum_rows(4, start=100)
    planted = {"id": "leak", "messages": [{"role": "system", "content": "be brief"}, *eval_rows[2]["messages"]]}
    _write_jsonl(tmp_path / "in.jsonl", [*train_rows, planted])
    _write_jsonl(tmp_path / "qa.jsonl", _alpaca(eval_rows))
    path = tmp_path / "r.yaml"
    path.write_text(_recipe_text(tmp_path, [{"name": "qa", "path": "qa.jsonl"}], steps=[{"normalize": {}}]))
    result = Runner(load_recipe(path)).run()
    steps = {s["step"]: s for s in result.manifest["steps"]}
    assert steps["eval_decontaminate"]["dropped_by_reason"] == {"eval_contamination": 1}
    rejects = pl.read_parquet(tmp_path / "run" / "rejects.parquet")
    leak = rejects.filter(pl.col("id") == "leak").row(0, named=True)
    assert (leak["step"], leak["reason"]) == ("eval_decontaminate", "eval_contamination")
    assert "leak" not in set(result.frame["id"]) and result.frame.height == 10


# --- metrics on a model ----------------------------------------------------------------------------------------


def _direct_logprob(model: object, tokenizer: object, context: str, continuation: str) -> float:
    """log p(continuation | context) from one unpadded forward pass of the whole text."""
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([whole])).logits[0].float().log_softmax(-1)
    return sum(float(logp[t - 1, whole[t]]) for t in range(len(ctx), len(whole)))


def _check_choices_against_transformers(model: object, tokenizer: object) -> None:
    from gristmill.train.eval_metrics import MC_TEMPLATE, ChoiceItem, continuation_logprobs, multiple_choice

    items = [ChoiceItem(f"q{i}", q, list(c), ["A", "B", "C", "D"], "ABCD".index(a))
             for i, (q, *c, a) in enumerate(ARC_ROWS)]
    requests = [(MC_TEMPLATE.format(question=it.question), f" {c}") for it in items for c in it.choices]
    batched = continuation_logprobs(model, tokenizer, requests, batch_size=5)  # padded batches of mixed length
    direct = [_direct_logprob(model, tokenizer, c, x) for c, x in requests]
    assert batched == pytest.approx(direct, abs=1e-3)
    scores, rows = multiple_choice(model, tokenizer, items, batch_size=3)
    picks = [choose(direct[4 * i:4 * i + 4], it.choices) for i, it in enumerate(items)]
    assert scores["acc"] == pytest.approx(sum(p[0] == it.gold for p, it in zip(picks, items, strict=True)) / 3)
    assert scores["acc_norm"] == pytest.approx(sum(p[1] == it.gold for p, it in zip(picks, items, strict=True)) / 3)
    assert [r["pred"] for r in rows] == [it.labels[p[0]] for p, it in zip(picks, items, strict=True)]


def test_loss_is_the_token_weighted_mean_over_answer_tokens(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gristmill.train.eval_metrics import answer_loss
    from gristmill.train.formatting import IGNORE, encode_row, stop_token_ids

    tiny = tiny_model_dir(tmp_path)
    model, tok = AutoModelForCausalLM.from_pretrained(tiny), AutoTokenizer.from_pretrained(tiny)
    rows = sum_rows(3) + sum_rows(1, start=5, turns=3)  # a longer row must weigh by its tokens, not as one row
    enc = {"stop_ids": stop_token_ids(tok), "fix_eos": False, "overlength": "truncate"}
    total, count = 0.0, 0
    for row in rows:
        ex = encode_row(tok, row, 128, **enc)
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([ex.input_ids])).logits[0].log_softmax(-1)
        for t, label in enumerate(ex.labels):
            if label != IGNORE:
                total, count = total - float(logp[t - 1, label]), count + 1
    out = answer_loss(model, tok, rows, max_len=128, encode=enc, batch_size=2)
    assert out["tokens"] == count == 3 * 6 + 3 * 6 and out["rows"] == 4  # "the answer is N . <|im_end|>"
    assert out["loss"] == pytest.approx(total / count, rel=1e-4)
    assert out["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)
    _check_choices_against_transformers(model, tok)


@pytest.mark.slow
def test_multiple_choice_on_the_real_small_model_matches_transformers() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gristmill.models import resolve, status

    if not any(r["name"] == "smollm2-135m-instruct" and r["state"] == "ready" for r in status()):
        pytest.skip("smollm2-135m-instruct is not converted (gristmill models pull)")
    path = resolve("smollm2-135m-instruct")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    _check_choices_against_transformers(model, AutoTokenizer.from_pretrained(path))


# --- a run with eval sets: base and adapter, resumed, eval_run ---------------------------------------------------

def test_run_evaluates_base_and_adapter_and_eval_run_reuses_or_rescores(tmp_path: Path) -> None:
    from gristmill.evaluation import DEFECT_METRICS, defect_shares, eval_run, evaluate
    from gristmill.recipe import load_recipe
    from gristmill.runner import Runner

    tiny = tiny_model_dir(tmp_path)
    _write_jsonl(tmp_path / "in.jsonl", sum_rows(24))
    _write_jsonl(tmp_path / "qa.jsonl", _alpaca(sum_rows(3, start=100)))
    (tmp_path / "arc.csv").write_text("".join(",".join(f'"{c}"' for c in row) + "\n" for row in ARC_ROWS))
    sets = [{"name": "qa", "path": "qa.jsonl", "max_new_tokens": 4},
            {"name": "arc", "path": "arc.csv", "mapping": "multiple_choice", "max_rows": 2}]
    train = {"base_model": str(tiny), "max_steps": 2, "batch_size": 4, "max_seq_length": 128, "min_eval_rows": 4,
             "eval_generate_rows": 0, "save_steps": None, "report_to": []}
    path = tmp_path / "r.yaml"
    path.write_text(_recipe_text(tmp_path, sets, steps=[{"normalize": {}}], train=train))
    run = tmp_path / "run"
    manifest = Runner(load_recipe(path)).run().manifest
    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert manifest["eval"] == summary and summary["columns"] == ["set", "metric", "base", "adapter"]
    assert [(r["set"], r["metric"]) for r in summary["table"]] == [
        ("qa", "loss"), ("qa", "perplexity"), ("qa", "rougeL"), ("qa", "exact_match"),
        *(("qa", m) for m in DEFECT_METRICS), ("arc", "acc"), ("arc", "acc_norm")]
    assert all(isinstance(r["base"], float) and isinstance(r["adapter"], float) for r in summary["table"])
    qa = json.loads((run / "eval" / "qa.json").read_text())
    assert qa["rows"] == 3 and qa["loss_tokens"] == 3 * 6 and qa["generation_rows"] == 3
    assert set(qa["examples"][0]["answers"]) == set(qa["examples"][0]["defects"]) == {"base", "adapter"}
    # Each side's defect shares are the shares of its answers' recorded defects (3 answers per side).
    for side in ("base", "adapter"):
        found = [e["defects"][side] for e in qa["examples"]]
        assert {m: qa["metrics"][m][side] for m in DEFECT_METRICS} == defect_shares(found)
    arc = json.loads((run / "eval" / "arc.json").read_text())
    assert arc["rows"] == 2 and [e["gold"] for e in arc["examples"]] == ["A", "B"]
    assert qa["metrics"]["loss"]["base"] != qa["metrics"]["loss"]["adapter"]  # the adapter changed the model

    assert eval_run(run)["resumed"] == {"qa": True, "arc": True}  # same sets, same adapter: read back
    bare = eval_run(run, adapter=None)
    assert bare["table"] == summary["table"]
    (tmp_path / "arc.csv").write_text("question,A,B,C,D,answerKey\n" + (tmp_path / "arc.csv").read_text())
    again = eval_run(run, adapter=run / "adapter")
    assert again["resumed"] == {"qa": True, "arc": False}  # the file changed: rescored
    assert [r for r in again["table"] if r["set"] == "arc"] == [r for r in summary["table"] if r["set"] == "arc"]
    assert json.loads((run / "manifest.json").read_text())["eval"] == again
    base_only = evaluate(load_recipe(path), {}, tmp_path / "base_only")  # no adapter: the base model alone
    assert base_only["columns"] == ["set", "metric", "base"]
    assert [r["base"] for r in base_only["table"]] == pytest.approx([r["base"] for r in again["table"]], rel=1e-4)


def test_eval_run_refuses_a_run_without_eval_sets(tmp_path: Path) -> None:
    from gristmill.common.errors import UserError
    from gristmill.evaluation import eval_run

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text(json.dumps({
        "recipe": yaml.safe_load(_recipe_text(tmp_path, [], steps=[])), "recipe_path": str(tmp_path / "r.yaml"),
        "status": "ok"}))
    with pytest.raises(UserError, match="has no `eval:` section"):
        eval_run(tmp_path / "run")
