"""Review round trip through Label Studio's documented formats: export (which rows, in which order, the task and
labeling config shape) and import of the JSON and JSON-MIN exports the test writes as Label Studio would."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from gristmill.checkpoint import save_step
from gristmill.common.errors import UserError
from gristmill.review import CHOICES, export_tasks, import_labels, labeling_config


def _chat(q: str, a: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def _rows(ids: list[str], texts: list[tuple[str, str]], meta: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame({"id": ids, "text": [f"{q}\n\n{a}" for q, a in texts],
                         "messages": [_chat(q, a) for q, a in texts], "source": ["in.jsonl"] * len(ids),
                         "meta": meta})


def _step(run: Path, name: str, kept: pl.DataFrame, dropped: pl.DataFrame, params: dict[str, Any],
          report: dict[str, Any] | None = None) -> None:
    stats = {"step": name.split("-", 1)[1], "params": params, "kept": kept.height, "dropped": dropped.height}
    if report is not None:
        stats["report"] = report
    save_step(run / "steps" / name, kept, dropped, stats)


def build_run(root: Path) -> Path:
    """A run directory as the runner lays it out, with known scores: a quality step (the module docstring's
    worked example: scores 0.1 .. 0.5, min_score 0.3), an audit step with one association and one gap, an eval
    set's answers and the held-out answers of training."""
    run = root / "run"
    q = _rows([f"q{i}" for i in range(5)], [(f"question {i}?", f"answer {i}.") for i in range(5)],
              [{"quality_score": s} for s in (0.1, 0.2, 0.3, 0.4, 0.5)])
    low = pl.col("meta").struct.field("quality_score") < 0.3
    dropped = q.filter(low).with_columns(pl.lit("low_quality").alias("reason"), pl.lit("quality_score < 0.3")
                                         .alias("detail"))
    _step(run, "01-quality", q.filter(~low), dropped, {"reference": "gold.jsonl", "keep": {"min_score": 0.3,
                                                                                          "top_fraction": None}})
    demo = [{"gender": ["female"]}, {"gender": ["female"]}, {"gender": ["nonbinary"]}, {"gender": ["male"]}]
    audit = _rows(["a0", "a1", "a2", "a3"],
                  [("Describe the nurse.", "She is very emotional at work."), ("Who called?", "Her sister."),
                   ("Who spoke?", "A nonbinary student."), ("Describe him.", "He is emotional.")],
                  [{"demographics": d} for d in demo])
    report = {"axes": {"gender": {}},
              "associations": {"axes": {"gender": [{"group": "female", "attribute": "emotional", "kind": "trait",
                                                    "rows": 6, "pmi": 1.2, "p_value": 0.001}]}},
              "gaps": [{"axis": "gender", "group": "nonbinary", "rows": 1, "target_rows": 3}]}
    _step(run, "02-audit", audit, audit.clear().with_columns(pl.lit(None, pl.String).alias("reason")), {}, report)

    evalset = root / "qa.jsonl"
    evalset.write_text("".join(json.dumps({"id": i, "messages": _chat(qq, a)}) + "\n" for i, qq, a in
                               [("e1", "What is the capital of France?", "Paris"), ("e2", "Say hi.", "hi there")]))
    (run / "eval").mkdir()
    (run / "eval" / "qa.json").write_text(json.dumps({
        "name": "qa", "path": str(evalset), "mapping": "messages", "metrics": {},
        "examples": [{"id": "e1", "reference": "Paris", "answers": {"base": "Paris", "adapter": "London"},
                      "rougeL": {"base": 1.0, "adapter": 0.0}},
                     {"id": "e2", "reference": "hi there", "answers": {"base": "hi", "adapter": "hi there friend"},
                      "rougeL": {"base": 0.667, "adapter": 0.8}}]}))
    (run / "eval" / "summary.json").write_text(json.dumps({"table": []}))  # not an eval set: skipped
    (run / "eval" / "model_bias.json").write_text(json.dumps({"axes": {}}))
    (run / "adapter").mkdir()
    pl.DataFrame({"id": ["d1", "d2"], "prompt": ["<|im_start|>user ...", "<|im_start|>user ..."],
                  "reference": ["the answer is 3 .", "the answer is 4 ."], "base": ["3", "4"],
                  "adapter": ["no idea", "the answer is 4 ."]}).write_parquet(run / "adapter" / "eval_predictions.parquet")
    (run / "dataset").mkdir()
    pl.DataFrame({"id": ["d1", "d2"], "messages": [_chat("what is 1 plus 2 ?", "the answer is 3 ."),
                                                   _chat("what is 2 plus 2 ?", "the answer is 4 .")]}
                 ).write_parquet(run / "dataset" / "data.parquet")
    return run


def test_export_picks_ranks_and_interleaves_the_kinds(tmp_path: Path) -> None:
    run = build_run(tmp_path)
    result = export_tasks(run)
    tasks = json.loads((run / "review" / "tasks.json").read_text())
    keys = [t["data"]["task_key"] for t in tasks]
    # eval: e1 (ROUGE-L 0.0) and held-out d1 (0.0); e2 (0.8) and d2 (1.0) score well. Near the 0.3 threshold with
    # IQR 0.2: q2 (0 IQRs), q1 and q3 (0.5 each); q0 and q4 are 1 IQR away. Audit: a0 (female + "emotional"),
    # then a2 (the nonbinary gap); a1 has no attribute, a3 is not female.
    assert keys == ["eval/qa/adapter/e1", "q2", "a0", "eval/held_out/adapter/d1", "q1", "a2", "q3"]
    assert result["by_kind"] == {"eval_low_score": 2, "near_threshold": 3, "audit_flagged": 2}
    assert result["tasks"] == 7 and result["candidates"] == result["by_kind"]
    assert all(set(t) == {"data"} for t in tasks)  # Label Studio's import format: a list of {"data": {...}}
    e1 = tasks[0]["data"]
    assert (e1["instruction"], e1["response"], e1["reference"]) == ("What is the capital of France?", "London",
                                                                    "Paris")
    assert (e1["row_id"], e1["run"], e1["step"], e1["kind"], e1["score"]) == ("e1", "run", "eval/qa",
                                                                            "eval_low_score", 0.0)
    assert e1["prompt_messages"] == [{"role": "user", "content": "What is the capital of France?"}]
    q2 = tasks[1]["data"]
    assert (q2["step"], q2["reason"], q2["score"], q2["response"]) == ("01-quality", "near_min_quality_score", 0.3,
                                                                       "answer 2.")
    assert "passes" in q2["detail"] and "kept at 01-quality" in q2["detail"]
    assert "fails" in tasks[4]["data"]["detail"] and "dropped" in tasks[4]["data"]["detail"]  # q1 = 0.2 < 0.3
    a0, a2 = tasks[2]["data"], tasks[5]["data"]
    assert (a0["reason"], a2["reason"]) == ("audit_association", "audit_gap")
    assert "female with 'emotional'" in a0["detail"] and "nonbinary is a representation gap" in a2["detail"]
    d1 = tasks[3]["data"]
    assert d1["prompt_messages"] == [{"role": "user", "content": "what is 1 plus 2 ?"}]  # from the dataset
    assert (d1["response"], d1["reference"]) == ("no idea", "the answer is 3 .")

    short = export_tasks(run, tmp_path / "few.json", limit=4)
    assert short["by_kind"] == {"eval_low_score": 2, "near_threshold": 1, "audit_flagged": 1}
    assert [t["data"]["task_key"] for t in json.loads((tmp_path / "few.json").read_text())] == keys[:4]
    assert Path(short["labeling_config"]) == tmp_path / "few.labeling_config.xml"

    # An answer whose prompt is gone (eval set file deleted, held-out row not in the dataset) is not exported.
    (tmp_path / "qa.jsonl").unlink()
    pl.DataFrame({"id": ["d2"], "messages": [_chat("q", "a")]}).write_parquet(run / "dataset" / "data.parquet")
    assert export_tasks(run)["by_kind"] == {"eval_low_score": 0, "near_threshold": 3, "audit_flagged": 2}


def test_labeling_config_is_valid_xml_over_the_task_fields(tmp_path: Path) -> None:
    run = build_run(tmp_path)
    export_tasks(run)
    xml = (run / "review" / "tasks.labeling_config.xml").read_text()
    assert xml == labeling_config()
    root = ET.fromstring(xml)
    choices = root.find("Choices")
    assert choices is not None and choices.get("name") == "decision" and choices.get("choice") == "single"
    assert [c.get("value") for c in choices.findall("Choice")] == list(CHOICES)
    assert {t.get("name") for t in root.findall("TextArea")} == {"corrected_answer", "note"}
    objects = {t.get("name") for t in root.findall("Text")}
    assert all(c.get("toName") in objects for c in [choices, *root.findall("TextArea")])
    fields = set(re.findall(r"\$(\w+)", xml))
    assert fields == {"why", "instruction", "response", "reference"}
    for task in json.loads((run / "review" / "tasks.json").read_text()):
        assert fields <= set(task["data"]) and all(isinstance(task["data"][f], str) for f in fields)


def _annotation(decision: str | None, stamp: str, corrected: str | None = None, note: str | None = None,
                cancelled: bool = False) -> dict[str, Any]:
    """One annotation as Label Studio's JSON export writes it (results of a Choices and two TextAreas)."""
    result = []
    if decision is not None:
        result.append({"id": "c1", "from_name": "decision", "to_name": "response", "type": "choices",
                       "origin": "manual", "value": {"choices": [decision]}})
    if corrected is not None:
        result.append({"id": "t1", "from_name": "corrected_answer", "to_name": "response", "type": "textarea",
                       "origin": "manual", "value": {"text": [corrected]}})
    if note is not None:
        result.append({"id": "t2", "from_name": "note", "to_name": "response", "type": "textarea",
                       "origin": "manual", "value": {"text": [note]}})
    return {"id": abs(hash(stamp)) % 1000, "completed_by": 1, "result": result, "was_cancelled": cancelled,
            "ground_truth": False, "created_at": stamp, "updated_at": stamp, "lead_time": 3.2}


def _ls_json_export(tasks: list[dict[str, Any]], verdicts: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [{"id": i + 1, "data": t["data"], "annotations": verdicts.get(t["data"]["task_key"], []),
             "predictions": [], "project": 1, "created_at": "2026-11-01T10:00:00Z"} for i, t in enumerate(tasks)]


def _jsonl(path: Path) -> dict[str, dict[str, Any]]:
    return {r["review_key"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_import_json_export_round_trip(tmp_path: Path) -> None:
    run = build_run(tmp_path)
    export_tasks(run)
    tasks = json.loads((run / "review" / "tasks.json").read_text())
    verdicts = {
        "eval/qa/adapter/e1": [_annotation("corrected", "2026-11-02T10:00:00Z", corrected="Paris is the capital.")],
        "q2": [_annotation("accept", "2026-11-02T10:01:00Z")],
        "a0": [_annotation("reject", "2026-11-02T10:02:00Z", note="stereotype: emotional woman")],
        "eval/held_out/adapter/d1": [_annotation("accept", "2026-11-02T10:03:00Z")],
        # two annotations: the newer one (reject) counts, whatever their order in the list
        "q1": [_annotation("reject", "2026-11-03T09:00:00Z"), _annotation("accept", "2026-11-02T09:00:00Z")],
        "a2": [_annotation("accept", "2026-11-02T10:04:00Z", cancelled=True)],  # skipped: not a verdict
    }  # q3: not labelled
    export = tmp_path / "project-1-at-2026-11-03.json"
    export.write_text(json.dumps(_ls_json_export(tasks, verdicts)))
    result = import_labels(run, export)
    assert {k: result[k] for k in ("accept", "reject", "corrected", "unlabelled", "tasks")} == \
        {"accept": 2, "reject": 2, "corrected": 1, "unlabelled": 2, "tasks": 7}

    accepted = _jsonl(run / "review" / "accepted.jsonl")
    assert set(accepted) == {"eval/qa/adapter/e1", "q2", "eval/held_out/adapter/d1"}
    e1 = accepted["eval/qa/adapter/e1"]
    assert e1["messages"] == _chat("What is the capital of France?", "Paris is the capital.")
    assert (e1["id"], e1["source"], e1["reviewed_id"], e1["review_decision"]) == \
        ("review:eval/qa/adapter/e1", f"review:{export.name}", "e1", "corrected")
    assert accepted["q2"]["messages"] == _chat("question 2?", "answer 2.")
    assert accepted["eval/held_out/adapter/d1"]["messages"] == _chat("what is 1 plus 2 ?", "no idea")
    rejected = _jsonl(run / "review" / "rejected.jsonl")
    assert {k: (r["id"], r["reason"], r["detail"]) for k, r in rejected.items()} == {
        "a0": ("a0", "review_rejected", "stereotype: emotional woman"),
        "q1": ("q1", "review_rejected", "rejected by the reviewer")}
    assert rejected["a0"]["review_reason"] == "audit_association"
    labels = _jsonl(run / "review" / "labels.jsonl")
    assert {k: (r["id"], r["label"]) for k, r in labels.items()} == {
        "eval/qa/adapter/e1": ("e1", 1), "q2": ("q2", 1), "a0": ("a0", 0), "eval/held_out/adapter/d1": ("d1", 1),
        "q1": ("q1", 0)}
    # What a label is about: the row itself (by id), or the text that was labelled when that is not the row.
    assert "text" not in labels["q2"] and "text" not in labels["a0"]
    assert labels["eval/qa/adapter/e1"]["text"] == "What is the capital of France?\n\nParis is the capital."
    assert labels["eval/held_out/adapter/d1"]["text"] == "what is 1 plus 2 ?\n\nno idea"

    # accepted.jsonl is an input a next recipe lists: ingest reads it with the messages mapping.
    from gristmill.ingest import InputSpec, ingest

    path = run / "review" / "accepted.jsonl"
    rows, rejects = ingest(InputSpec(path=str(path), mapping="messages"), path)
    assert rows.height == 3 and rejects.height == 0
    assert set(rows["raw_source"]) == {f"review:{export.name}"}
    assert rows.filter(pl.col("id") == "review:q2")["text"].item() == "question 2?\n\nanswer 2."

    # labels.jsonl is what the signals classifier reads (id rows take their text from the step's input).
    from gristmill.curation.classifier import labelled_rows

    frame = pl.DataFrame({"id": ["q1", "q2", "a0"], "text": ["t-q1", "t-q2", "t-a0"]})
    texts, y, unmatched = labelled_rows(run / "review" / "labels.jsonl", frame)
    assert unmatched == 0
    assert sorted(zip(texts, y.tolist(), strict=True)) == sorted(
        [("What is the capital of France?\n\nParis is the capital.", 1), ("t-q2", 1), ("t-a0", 0),
         ("what is 1 plus 2 ?\n\nno idea", 1), ("t-q1", 0)])


def test_import_json_min_and_a_newer_verdict_replaces_the_older(tmp_path: Path) -> None:
    run = build_run(tmp_path)
    export_tasks(run)
    tasks = {t["data"]["task_key"]: t["data"] for t in json.loads((run / "review" / "tasks.json").read_text())}
    first = tmp_path / "first.json"
    first.write_text(json.dumps(_ls_json_export(
        [{"data": tasks["q2"]}, {"data": tasks["q3"]}],
        {"q2": [_annotation("accept", "2026-11-02T10:00:00Z")], "q3": [_annotation("accept", "2026-11-02T10:00:00Z")]})))
    import_labels(run, first)
    assert set(_jsonl(run / "review" / "accepted.jsonl")) == {"q2", "q3"}

    def flat(data: dict[str, Any], task_id: int, stamp: str, **controls: Any) -> dict[str, Any]:
        """A JSON-MIN record: the task's data fields, its id and one annotation's controls, prettified."""
        return {**data, "id": task_id, **controls, "annotator": 1, "annotation_id": 7, "created_at": stamp,
                "updated_at": stamp, "lead_time": 2.0}

    records = [
        flat(tasks["q2"], 1, "2026-11-04T10:00:00Z", decision="reject", note="wrong answer"),
        flat(tasks["q2"], 1, "2026-11-01T10:00:00Z", decision="accept"),  # an older annotation of the same task
        flat(tasks["a0"], 3, "2026-11-04T10:00:00Z", decision="corrected",
             corrected_answer="The nurse works carefully."),
        flat(tasks["a2"], 6, "2026-11-04T10:00:00Z", decision={"choices": ["accept"]}),  # a multi-choice shape
        flat(tasks["q1"], 5, "2026-11-04T10:00:00Z"),  # no decision: unlabelled
    ]
    second = tmp_path / "second.json"
    second.write_text(json.dumps(records))
    result = import_labels(run, second)
    assert {k: result[k] for k in ("accept", "reject", "corrected", "unlabelled")} == \
        {"accept": 1, "reject": 1, "corrected": 1, "unlabelled": 1}
    accepted = _jsonl(run / "review" / "accepted.jsonl")
    assert set(accepted) == {"q3", "a0", "a2"}  # q2 moved to the rejects; q3 from the first import stays
    assert accepted["a0"]["messages"][-1] == {"role": "assistant", "content": "The nurse works carefully."}
    assert accepted["q3"]["source"] == "review:first.json" and accepted["a2"]["source"] == "review:second.json"
    rejected = _jsonl(run / "review" / "rejected.jsonl")
    assert set(rejected) == {"q2"} and rejected["q2"]["detail"] == "wrong answer"
    labels = _jsonl(run / "review" / "labels.jsonl")
    assert {k: r["label"] for k, r in labels.items()} == {"q2": 0, "q3": 1, "a0": 1, "a2": 1}
    assert result["recorded"] == {"accepted": 3, "accepted_text": 0, "rejected": 1, "labels": 4}


def test_bad_exports_are_clear_errors(tmp_path: Path) -> None:
    run = build_run(tmp_path)
    export_tasks(run)
    tasks = json.loads((run / "review" / "tasks.json").read_text())
    bad = tmp_path / "bad.json"
    bad.write_text("id,decision\n1,accept\n")
    with pytest.raises(UserError, match="not JSON .*export the Label Studio project as JSON or JSON-MIN"):
        import_labels(run, bad)
    bad.write_text(json.dumps({"data": {}}))
    with pytest.raises(UserError, match="a JSON list of tasks, this is a dict"):
        import_labels(run, bad)
    with pytest.raises(UserError, match="does not exist"):
        import_labels(run, tmp_path / "missing.json")
    export = _ls_json_export(tasks[:3], {tasks[0]["data"]["task_key"]: [_annotation("maybe", "2026-11-02")],
                                         tasks[1]["data"]["task_key"]: [_annotation("corrected", "2026-11-02")],
                                         tasks[2]["data"]["task_key"]: [_annotation("accept", "2026-11-02")]})
    export.append({"id": 9, "data": {"text": "a task from elsewhere"}, "annotations": []})
    export.append("not a task")
    export.append({"id": 10, "data": {**tasks[3]["data"], "prompt_messages": "what is 1 plus 2 ?"},
                   "annotations": [_annotation("accept", "2026-11-02")]})
    bad.write_text(json.dumps(export))
    with pytest.raises(UserError) as err:
        import_labels(run, bad)
    msg = str(err.value)
    assert "5 task(s) cannot be imported" in msg  # every problem at once, each with its task index
    assert "task 0 (e1): decision 'maybe' is not one of ['accept', 'reject', 'corrected']" in msg
    assert "task 1 (q2): decision 'corrected' without a corrected_answer" in msg
    assert "task 3: data has no task_key/row_id" in msg and "task 4: not a JSON object" in msg
    assert "task 5 (d1): data.prompt_messages is not a list of {role, content} turns" in msg
    assert not (run / "review" / "accepted.jsonl").exists()  # nothing recorded from a bad file
    with pytest.raises(UserError, match="--limit must be at least 1"):
        export_tasks(run, limit=0)
    with pytest.raises(UserError, match="not a run directory"):
        export_tasks(tmp_path / "nowhere")


def test_export_from_a_real_audited_run(tmp_path: Path, sample_dir: Path) -> None:
    """The audit's own report and meta.demographics (not a crafted checkpoint) through the runner: the flagged rows
    are rows of the audit step that mention the flagged group; a run without eval or thresholds has no other kind."""
    from gristmill.recipe import load_recipe
    from gristmill.runner import Runner

    recipe = {"name": "t", "inputs": [{"path": str(sample_dir / "sample.jsonl"), "mapping": "alpaca",
                                       "on_error": "skip"}],
              "steps": [{"normalize": {}}, {"audit": {"axes": ["gender", "religion"], "n_boot": 0}}],
              "output": {"dir": str(tmp_path / "run"), "formats": ["parquet"]}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    Runner(load_recipe(path), tmp_path / "run").run(train=False)
    run = tmp_path / "run"
    report = json.loads((run / "steps" / "02-audit" / "stats.json").read_text())["report"]
    result = export_tasks(run, limit=50)
    assert result["by_kind"]["eval_low_score"] == 0 and result["by_kind"]["near_threshold"] == 0
    flagged = {(g["axis"], g["group"]) for g in report["gaps"]} | {
        (axis, p["group"]) for axis, ps in report["associations"]["axes"].items() for p in ps}
    assert flagged and result["by_kind"]["audit_flagged"] == min(50, result["candidates"]["audit_flagged"]) > 0
    kept = pl.read_parquet(run / "steps" / "02-audit" / "kept.parquet")
    demo = {r["id"]: r["meta"]["demographics"] for r in kept.to_dicts()}
    for task in json.loads((run / "review" / "tasks.json").read_text()):
        d = task["data"]
        axis, group = re.match(r"(\w+): (\w+)", d["detail"]).groups()  # type: ignore[union-attr]
        assert (axis, group) in flagged and group in demo[d["row_id"]][axis]
        assert d["step"] == "02-audit" and d["instruction"] and d["response"]


def test_cli_review_export_and_import(tmp_path: Path) -> None:
    from gristmill.cli import main

    run = build_run(tmp_path)
    assert main(["review", "export", str(run)]) == 0  # no --limit: the default
    assert len(json.loads((run / "review" / "tasks.json").read_text())) == 7
    assert main(["review", "export", str(run), "--out", str(tmp_path / "t.json"), "--limit", "2"]) == 0
    tasks = json.loads((tmp_path / "t.json").read_text())
    assert len(tasks) == 2
    export = tmp_path / "export.json"
    export.write_text(json.dumps(_ls_json_export(tasks, {tasks[1]["data"]["task_key"]: [
        _annotation("accept", "2026-11-02T10:00:00Z")]})))
    assert main(["review", "import", str(run), str(export)]) == 0
    assert set(_jsonl(run / "review" / "accepted.jsonl")) == {"q2"}
    export.write_text("[1]")
    assert main(["review", "import", str(run), str(export)]) == 2  # a user error: exit 2
