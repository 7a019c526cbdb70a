"""report.html: each section on crafted inputs, and a real run's page rendered in headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest
import yaml

from gristmill import report_outcomes, report_sections
from gristmill.cli import main
from gristmill.recipe import load_recipe
from gristmill.report import Charts, RunData, build_report
from gristmill.runner import Runner
from tests.conftest import build_sample
from tests.test_runner import STEPS  # the same five-step run the runner tests use

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=5000"]


# The mitigation chain after the runner tests' audit: weights, gender-swapped copies, a second audit to compare.
MITIGATION = [{"reweigh": {"axis": "gender"}}, {"counterfactual_augment": {}},
              {"audit": {"axes": ["gender", "religion"], "label_column": "accepted"}}]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A quickstart-like run without synthesis or training (fast): the sample data through the runner tests' five
    steps, a mitigation chain, and an eval set (one sample row), which adds an eval_decontaminate step."""
    tmp = tmp_path_factory.mktemp("quick")
    build_sample(tmp / "data")
    first = next(line for line in (tmp / "data" / "sample.jsonl").read_text().splitlines() if '"output"' in line)
    (tmp / "data" / "heldout.jsonl").write_text(first + "\n")
    recipe = {"name": "quick", "inputs": [{"path": "data/sample.jsonl", "mapping": "alpaca", "on_error": "skip"}],
              "steps": STEPS + MITIGATION, "eval": [{"name": "heldout", "path": "data/heldout.jsonl"}],
              "output": {"dir": str(tmp / "run"), "formats": ["parquet", "jsonl"]}}
    (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    Runner(load_recipe(tmp / "recipe.yaml")).run()
    return tmp / "run"


def _run(tmp_path: Path, steps: list[dict], **manifest: object) -> RunData:
    """A crafted run directory: a manifest with ``steps`` (ingest first) and nothing else yet."""
    data = {"name": "crafted", "status": "ok", "versions": {"gristmill": "0"}, "steps": steps, **manifest}
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    return RunData.load(tmp_path)


def _checkpoint(run: RunData, index: int, kept: pl.DataFrame, dropped: pl.DataFrame) -> None:
    folder = run.folder(index)
    folder.mkdir(parents=True)
    kept.write_parquet(folder / "kept.parquet")
    dropped.write_parquet(folder / "dropped.parquet")


def test_funnel_stacks_kept_and_each_reason_per_step(tmp_path: Path) -> None:
    run = _run(tmp_path, [{"step": "ingest", "rows_in": 10, "kept": 9, "dropped": 1,
                           "dropped_by_reason": {"malformed_input": 1}},
                          {"step": "filter", "rows_in": 9, "kept": 6, "dropped": 3,
                           "dropped_by_reason": {"too_few_words": 2, "too_many_symbols": 1}}])
    out = report_sections.funnel(run, Charts())
    assert out.count("plotly-graph-div") == 1 and "plotly.js" in out  # plotly.js inlined with the first chart
    assert '"name":"dropped: too_few_words"' in out and '"y":[0,2]' in out
    assert "<td>too_few_words: 2, too_many_symbols: 1</td>" in out


def test_drop_examples_are_collapsed_per_reason_and_escaped(tmp_path: Path) -> None:
    run = _run(tmp_path, [{"step": "ingest"}, {"step": "filter"}])
    pl.DataFrame({"id": ["a", "b", "c", "d", "e"], "step": ["filter"] * 4 + ["ingest"],
                  "reason": ["short"] * 4 + ["malformed_input"],
                  "text": ["<script>alert(1)</script>", "x", "y", "z", "{broken"], "detail": [None] * 5}
                 ).write_parquet(tmp_path / "rejects.parquet")
    out = report_sections.drop_examples(run, Charts())
    assert "<script>" not in out and "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert out.index("malformed_input") < out.index("short")  # in step order
    assert "<b>filter</b> · short · 4 rows" in out and out.count("<tr><td>") == 3 + 1  # 3 examples + 1


def test_quality_histogram_draws_the_threshold(tmp_path: Path) -> None:
    run = _run(tmp_path, [{"step": "ingest"}, {"step": "quality", "params": {"keep": {"min_score": 0.3}}}])
    meta = pl.struct(pl.col("s").alias("quality_score"))
    _checkpoint(run, 1, pl.DataFrame({"id": ["a", "b"], "s": [0.5, 0.9]}).select("id", meta.alias("meta")),
                pl.DataFrame({"id": ["c"], "s": [0.1]}).select("id", meta.alias("meta")))
    out = report_sections.quality(run, Charts())
    assert "threshold 0.3 (min_score 0.3)" in out and "kept (2)" in out and "dropped (1)" in out
    assert "No quality step" in report_sections.quality(_run(tmp_path, [{"step": "ingest"}]), Charts())


def test_word_diff_marks_only_the_differing_words() -> None:
    left, right = report_sections.word_diff("the cat sat <here>", "the dog sat <here>")
    assert left == "the <mark>cat</mark> sat &lt;here&gt;" and right == "the <mark>dog</mark> sat &lt;here&gt;"


def test_clusters_show_sizes_and_a_kept_row_beside_its_duplicate(tmp_path: Path) -> None:
    run = _run(tmp_path, [{"step": "ingest"}, {"step": "dedup_minhash", "dropped": 3}])
    rows = pl.DataFrame({"id": ["k1", "d1", "d2", "k2", "d3", "k3"],
                         "text": ["a b c", "a b d", "a x c", "p q", "p r", "lonely"],
                         "cluster": ["k1", "k1", "k1", "k2", "k2", None]})
    frame = rows.select("id", "text", pl.struct(pl.col("cluster").alias("cluster_id")).alias("meta"))
    _checkpoint(run, 1, frame.filter(pl.col("id").str.starts_with("k")), frame.filter(pl.col("id").str.starts_with("d")))
    out = report_sections.clusters(run, Charts())
    assert "2 clusters, 5 rows in them" in out
    assert out.index("cluster <code>k1</code> (3 rows)") < out.index("cluster <code>k2</code> (2 rows)")
    assert "a b <mark>c</mark>" in out and "a b <mark>d</mark>" in out


def test_rows_at_reads_rows_by_index_across_row_groups(tmp_path: Path) -> None:
    file = tmp_path / "r.parquet"
    pl.DataFrame({"id": [f"r{i}" for i in range(7)], "n": range(7)}).write_parquet(file, row_group_size=3)
    rows = report_sections._rows_at(file, [4, 1, 2, 6], ["id"])
    assert rows == {1: {"id": "r1"}, 2: {"id": "r2"}, 4: {"id": "r4"}, 6: {"id": "r6"}}


def test_clusters_take_the_kept_row_of_a_cluster_whatever_the_order(tmp_path: Path) -> None:
    run = _run(tmp_path, [{"step": "ingest"}, {"step": "dedup_minhash", "dropped": 1}])
    frame = pl.DataFrame({"id": ["k", "d"], "text": ["one two", "one three"], "cluster": ["c", "c"]}).select(
        "id", "text", pl.struct(pl.col("cluster").alias("cluster_id"), pl.lit(1).alias("source_line")).alias("meta"))
    _checkpoint(run, 1, frame.filter(pl.col("id") == "k"), frame.filter(pl.col("id") == "d"))
    out = report_sections.clusters(run, Charts())
    assert "<b>kept</b> <code>k</code>" in out and "<b>dropped</b> <code>d</code>" in out
    assert "one <mark>two</mark>" in out and "one <mark>three</mark>" in out


def test_synthesis_yield_from_the_steps_stats(tmp_path: Path) -> None:
    run = _run(tmp_path, [{"step": "ingest"}, {"step": "synthesize", "rows_added": 44, "dropped": 21,
                                              "requested": 44, "generated": 44, "parsed": 39, "post_filtered": 2,
                                              "dropped_by_reason": {"not_novel": 16, "truncated": 5},
                                              "seconds_per_kept_row": 0.5, "params": {"method": "self_instruct"}}])
    out = report_sections.synthesis(run, Charts())
    assert '"x":[44,44,39,37,23]' in out  # requested, generated, parsed, past the post-filter, kept
    assert "<td>seconds_per_kept_row</td>" in out and "self_instruct" in out


def test_audit_charts_and_a_failed_gate(tmp_path: Path) -> None:
    run = _run(tmp_path, [{"step": "ingest"}], audit_override=[{"step": "03-audit", "failures": []}])
    cell = {"rows": 10, "dropped": 3, "drop_rate": 0.3, "ci95": [0.1, 0.6], "ratio_to_overall": 3.0}
    report = {"rows": 50, "axes": {"gender": {"group_rows": {"female": 20, "male": 2}, "representation_ratio": 10}},
              "gaps": [{"axis": "gender", "group": "male", "rows": 2, "target_rows": 10}],
              "amplification": {"steps": [{"step": "filter", "drop_rate": 0.1, "axes": {"gender": {"female": cell}}}],
                                "flagged": [{"step": "filter", "axis": "gender", "group": "female", "drop_rate": 0.3,
                                             "overall": 0.1, "ratio": 3.0, "ci95": [0.1, 0.6], "rows": 10}]},
              "gate": {"passed": False, "failures": ["representation_ratio | gender | male/female | 10 | 5"],
                       "table": [{"metric": "representation_ratio", "axis": "gender", "groups": "male/female",
                                  "value": "10", "threshold": "5"}]}}
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "03-audit.json").write_text(json.dumps(report))
    out = report_outcomes.audit(run, Charts())
    assert out.count("plotly-graph-div") == 2  # representation, disparity heatmap
    assert "FAILED</span> (overridden with --allow-audit-failure)" in out
    assert "<td>representation_ratio</td><td>gender</td><td>male/female</td>" in out
    assert "gender.male (2 of 10 target rows)" in out


def test_training_charts_what_exists_and_says_not_run_otherwise(tmp_path: Path) -> None:
    run = _run(tmp_path, [{"step": "ingest"}], train={"fingerprint": "f1"})
    assert "Training not run" in report_outcomes.training(run, Charts())
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "train_metrics.json").write_text(json.dumps(
        {"fingerprint": "f1", "loss_curve": [2.0, 1.5, 1.2], "eval_loss_before": 2.1, "eval_loss_after": 1.4,
         "steps": 3, "search": {"trials": [{"trial": 0, "params": {"r": 8}, "eval_loss": 1.4}]}}))
    (tmp_path / "adapter" / "eval.json").write_text(json.dumps(
        {"base": {"loss": 2.1, "rougeL": 0.1}, "adapter": {"loss": 1.4, "rougeL": 0.3}}))
    out = report_outcomes.training(run, Charts())
    assert out.count("plotly-graph-div") == 1 and '"y":[2.0,1.5,1.2]' in out
    assert "<td>rougeL</td><td class=num>0.1</td><td class=num>0.3</td>" in out
    assert "Hyperparameter search" in out and "not the one this run" not in out


def test_funnel_shows_added_rows_apart_from_drops(tmp_path: Path) -> None:
    run = _run(tmp_path, [{"step": "ingest", "rows_in": 3, "kept": 3, "dropped": 0},
                          {"step": "counterfactual_augment", "rows_in": 3, "rows_added": 2, "kept": 5, "dropped": 0},
                          {"step": "eval_decontaminate", "rows_in": 5, "kept": 4, "dropped": 1,
                           "dropped_by_reason": {"eval_contamination": 1}}])
    out = report_sections.funnel(run, Charts())
    # kept input rows, added rows (no checkpoints: drops are counted against the added rows, here none) and drops
    assert '"name":"kept","x":["00 ingest","01 counterfactual_augment","02 eval_decontaminate"],"y":[3,3,4]' in out
    assert '"name":"added and kept"' in out and '"y":[0,2,0]' in out
    assert '"name":"dropped: eval_contamination"' in out and '"y":[0,0,1]' in out
    assert "<td>01 counterfactual_augment</td><td class=num>3</td><td class=num>2</td><td class=num>5</td>" in out


def test_added_kept_counts_new_ids_from_the_checkpoints(tmp_path: Path) -> None:
    """10 rows in, 4 copies added, 1 input row dropped: kept 13, of which 4 added (3 by the fallback)."""
    run = _run(tmp_path, [{"step": "ingest"}, {"step": "counterfactual_augment", "rows_in": 10, "rows_added": 4,
                                              "kept": 13, "dropped": 1}])
    assert report_sections.added_kept(run, 1) == 3
    ids = [str(i) for i in range(10)]
    _checkpoint(run, 0, pl.DataFrame({"id": ids}), pl.DataFrame({"id": []}, schema={"id": pl.String}))
    _checkpoint(run, 1, pl.DataFrame({"id": ids[1:] + [f"cf:{i}" for i in range(4)]}), pl.DataFrame({"id": ["0"]}))
    assert report_sections.added_kept(run, 1) == 4 and report_sections.added_kept(run, 0) == 0


def _before_after() -> dict:
    """``audit/compare.py``'s shape: its docstring's worked example (f 3, m 1 -> weighted 2.0 / 2.0)."""
    return {"against": "02-audit", "steps_between": ["reweigh"], "rows": {"before": 4, "after": 4},
            "gate_passed": {"before": False, "after": True},
            "gaps": {"before": [{"axis": "gender", "group": "m", "rows": 1, "target_rows": 2}], "after": []},
            "axes": {"gender": {
                "before": {"group_rows": {"f": 3, "m": 1}, "shares": {"f": 0.75, "m": 0.25},
                           "representation_ratio": 3.0, "tvd": 0.25, "weighted": False},
                "after": {"group_rows": {"f": 2.0, "m": 2.0}, "shares": {"f": 0.5, "m": 0.5},
                          "representation_ratio": 1.0, "tvd": 0.0, "weighted": True}}},
            "parity": {"gender": {"before": {"selection_rate": {"f": 0.75, "m": 0.25},
                                             "demographic_parity_difference": 0.5, "demographic_parity_ratio": 0.3333,
                                             "weighted": False},
                                  "after": {"selection_rate": {"f": 0.5, "m": 0.5},
                                            "demographic_parity_difference": 0.0, "demographic_parity_ratio": 1.0,
                                            "weighted": True}}}}


# reweigh's stats (audit/reweigh.py) for its docstring's Kamiran–Calders example, and counterfactual_augment's.
REWEIGH = {"step": "reweigh", "rows_in": 8, "kept": 8, "dropped": 0, "axis": "gender", "method": "kamiran_calders",
           "weights": {"f": {"0": 2.0, "1": 0.666667}, "m": {"0": 0.666667, "1": 2.0}}, "rows_weighed": 8,
           "rows_no_group": 0, "rows_several_groups": 0, "group_rows": {"f": 4, "m": 4},
           "group_weight": {"f": 4.0, "m": 4.0}}
COUNTERFACTUAL = {"step": "counterfactual_augment", "rows_in": 8, "rows_added": 3, "kept": 11, "dropped": 0,
                  "rows_with_swaps": 3, "rows_augmented": 3, "swaps": 5, "swaps_by_word": {"he": 3, "her": 2}}


def test_mitigation_charts_before_after_and_shows_the_weights(tmp_path: Path) -> None:
    run = _run(tmp_path, [{"step": "ingest"}, REWEIGH])
    assert "No mitigation in this recipe" not in report_outcomes.mitigation(run, Charts())
    assert "No mitigation in this recipe" in report_outcomes.mitigation(_run(tmp_path, [{"step": "ingest"}]), Charts())
    run = _run(tmp_path, [{"step": "ingest"}, REWEIGH, COUNTERFACTUAL])
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "04-audit.json").write_text(json.dumps(
        {"rows": 4, "axes": {"gender": {"group_rows": {"f": 3, "m": 1}}}, "before_after": _before_after()}))
    out = report_outcomes.mitigation(run, Charts())
    assert out.count("plotly-graph-div") == 1
    assert '"name":"before (02-audit)","x":["gender: f","gender: m"],"y":[0.75,0.25]' in out
    assert '"name":"after (04-audit, weighted)"' in out and '"y":[0.5,0.5]' in out
    assert "Gate failed → passed; under-represented groups 1 → 0" in out
    assert "<td>gender</td><td class=num>3</td><td class=num>1</td><td class=num>0.25</td><td class=num>0</td>" in out
    assert "<td>gender</td><td class=num>0.5</td><td class=num>0</td>" in out  # parity difference before, after
    # per group and label the weight, then the group's total weight
    assert ("<td>f</td><td class=num>4</td><td class=num>2</td><td class=num>0.6667</td><td class=num>4</td>"
            in out)
    assert "3 gender-swapped copies added" in out and "he 3, her 2" in out


def test_eval_sets_table_per_set_and_worst_examples(tmp_path: Path) -> None:
    run = _run(tmp_path, [{"step": "ingest"}])
    assert "No eval sets scored" in report_outcomes.evaluation(run, Charts())
    (tmp_path / "eval").mkdir()
    # gristmill/evaluation.py's shapes: summary.json's table rows, a chat set's and a multiple-choice set's details
    (tmp_path / "eval" / "summary.json").write_text(json.dumps({
        "base_model": "/models/smollm2", "adapters": {"adapter": "/run/adapter"},
        "columns": ["set", "metric", "base", "adapter"], "sets": {"qa": "/elsewhere/qa.json", "arc": "/x/arc.json"},
        "resumed": {"qa": False, "arc": True},
        "table": [{"set": "qa", "metric": "loss", "base": 2.0, "adapter": 1.5},
                  {"set": "qa", "metric": "rougeL", "base": 0.2, "adapter": 0.1},
                  {"set": "arc", "metric": "acc", "base": 0.5, "adapter": 0.75}]}))
    examples = [{"id": f"q{i}", "reference": f"ref {i}", "answers": {"base": f"b{i}", "adapter": f"<a{i}>"},
                 "rougeL": {"base": 0.5, "adapter": r}} for i, r in enumerate([0.9, 0.1, 0.4, 0.0, 0.7])]
    (tmp_path / "eval" / "qa.json").write_text(json.dumps(
        {"name": "qa", "mapping": "alpaca", "rows": 5, "metrics": {}, "examples": examples}))
    picks = [{"id": "c1", "gold": "A", "pick": {"base": "A", "adapter": "B"}, "pick_norm": {}},
             {"id": "c2", "gold": "B", "pick": {"base": "A", "adapter": "A"}, "pick_norm": {}},
             {"id": "c3", "gold": "A", "pick": {"base": "A", "adapter": "A"}, "pick_norm": {}}]
    (tmp_path / "eval" / "arc.json").write_text(json.dumps(
        {"name": "arc", "mapping": "multiple_choice", "rows": 3, "metrics": {}, "examples": picks}))
    out = report_outcomes.evaluation(run, Charts())
    assert out.index("<h3>qa</h3>") < out.index("<h3>arc</h3>")
    assert "<td>loss</td><td class=num>2</td><td class=num>1.5</td><td class=num>-0.5 (better)</td>" in out
    assert "<td>rougeL</td><td class=num>0.2</td><td class=num>0.1</td><td class=num>-0.1 (worse)</td>" in out
    assert "<td>acc</td><td class=num>0.5</td><td class=num>0.75</td><td class=num>+0.25 (better)</td>" in out
    # the three lowest adapter ROUGE-L answers, lowest first, escaped
    assert "3 lowest-ROUGE-L answers of adapter (of 5)" in out and "<a3>" not in out
    assert out.index("&lt;a3&gt;") < out.index("&lt;a1&gt;") < out.index("&lt;a2&gt;") and "&lt;a0&gt;" not in out
    # wrong picks, the one the base got right first
    assert "2 questions adapter got wrong (of 2)" in out and out.index("<td>c1</td>") < out.index("<td>c2</td>")


def test_model_bias_grouped_bars_and_a_failed_gate(tmp_path: Path) -> None:
    from gristmill.train.probe import check_gate, summarize

    run = _run(tmp_path, [{"step": "ingest"}])
    assert "No bias probe" in report_outcomes.model_bias(run, Charts())
    # the probe module's worked example: gender sentiment gap 0.4 -> 0.8, no refusals
    records = [{"axis": "gender", "group": g, "base_sentiment": b, "adapter_sentiment": a, "base_refused": False,
                "adapter_refused": False}
               for g, b, a in (("female", 0.5, 0.6), ("female", 0.1, 0.6), ("male", 0.0, -0.4), ("male", -0.2, 0.0))]
    axes = summarize(records)
    failures = check_gate(axes, 0.3)
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "model_bias.json").write_text(json.dumps(
        {"templates": ["t1", "t2"], "max_new_tokens": 32, "axes": axes, "generations": records,
         "gate": {"threshold": 0.3, "passed": False, "failures": failures,
                  "max_increase": {"sentiment": 0.4, "refusal_rate": 0.0}}}))
    out = report_outcomes.model_bias(run, Charts())
    assert out.count("plotly-graph-div") == 1
    assert '"name":"base model","x":["gender: sentiment","gender: refusal_rate"],"y":[0.4,0.0]' in out
    assert '"name":"adapter"' in out and '"y":[0.8,0.0]' in out
    assert "FAILED</span>: a gap grew by more than 0.3" in out and "generation_gap_increase | gender" in out
    assert "<td>gender</td><td>sentiment</td><td>0.4 (female / male)</td><td>0.8 (female / male)</td>" in out
    assert "<td class=num>+0.4</td>" in out


def test_ablation_table_when_present(tmp_path: Path) -> None:
    run = _run(tmp_path, [{"step": "ingest"}], fingerprint="fp")
    assert "No ablation" in report_outcomes.ablation(run, Charts())
    variants = ("raw", "curated", "curated_synthetic")
    (tmp_path / "ablation.json").write_text(json.dumps({  # gristmill/ablation.py's shape
        "mode": "steps", "run_fingerprint": "fp", "eval": {"source": "held_out_from_curated", "rows": 12},
        "metrics": {"eval_loss": {"base": 2.5, "raw": 2.0, "curated": 1.8, "curated_synthetic": 1.7}},
        "eval_sets": {"qa": {"rougeL": {"base": 0.1, "raw": 0.2, "curated": 0.3, "curated_synthetic": None}}},
        "steps": dict.fromkeys(variants, 30), "tokens_trained": dict.fromkeys(variants, 900),
        "train_rows": {"raw": 300, "curated": 250, "curated_synthetic": 270},
        "data": {v: {"excluded_eval": 12} for v in variants}}))
    out = report_outcomes.ablation(run, Charts())
    assert "<th class=num>curated_synthetic</th>" in out and "other data" not in out
    assert ("<td>eval_loss</td><td class=num>2.5</td><td class=num>2</td><td class=num>1.8</td><td class=num>1.7"
            "</td>") in out
    assert "<td>qa: rougeL</td><td class=num>0.1</td><td class=num>0.2</td><td class=num>0.3</td><td class=num>n/a" in out
    assert "<td>train rows</td><td class=num></td><td class=num>300</td>" in out
    run.manifest["fingerprint"] = "changed"
    assert "run on other data" in report_outcomes.ablation(run, Charts())


def test_missing_inputs_never_break_the_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _run(tmp_path, [{"step": "ingest", "rows_in": 3, "kept": 3, "dropped": 0}], status="gate_failed",
               gate_failures=["min_group_rows | gender | male | 0 | 1"])
    page = build_report(run)
    for text in ("No rejects.parquet", "No quality step", "No dedup_minhash step", "No synthesize step",
                 "No audit report", "No mitigation", "Training not run", "No eval sets scored", "No bias probe",
                 "No ablation", "stopped this run"):
        assert text in page
    assert page.count("plotly.js v") == 1 and "could not be drawn" not in page

    def broken(run: RunData, charts: Charts) -> str:
        raise KeyError("boom")

    monkeypatch.setattr(report_sections, "synthesis", broken)
    page = build_report(run)
    assert "This section could not be drawn: KeyError(&#x27;boom&#x27;)" in page and "Versions and fingerprints" in page


def test_report_command_rewrites_the_page(quick_run: Path, tmp_path: Path) -> None:
    (quick_run / "report.html").unlink()
    assert main(["report", str(quick_run)]) == 0 and (quick_run / "report.html").is_file()
    assert main(["report", str(tmp_path)]) == 2  # not a run directory


class _Charts(HTMLParser):
    """Counts plotly chart divs and those holding an <svg>."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[tuple[int, int]] = []  # (div depth, chart number) of each open chart
        self.divs, self.charts, self.rendered, self.loads = 0, 0, set(), []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for key in ("src", "href"):
            if (a.get(key) or "").startswith(("http:", "https:", "//")):
                self.loads.append(a[key])
        if tag == "div":
            self.divs += 1
            if "plotly-graph-div" in (a.get("class") or ""):
                self.charts += 1
                self.open.append((self.divs, self.charts))
        elif tag == "svg" and self.open:
            self.rendered.add(self.open[-1][1])

    def handle_endtag(self, tag: str) -> None:
        if tag == "div":
            if self.open and self.open[-1][0] == self.divs:
                self.open.pop()
            self.divs -= 1


def _chromium() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if not found:
        pytest.fail("Debian's chromium is needed to render the report: `make chromium` "
                    "(or `sudo apt-get install -y chromium`)")
    return found


def test_report_renders_in_headless_chromium(quick_run: Path, tmp_path: Path) -> None:
    page = quick_run / "report.html"
    assert page.is_file()  # written by the run itself
    chromium = _chromium()
    flags = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180,
                         check=True).stdout
    shot = tmp_path / "report.png"
    subprocess.run([*flags, "--window-size=1280,9000", f"--screenshot={shot}", page.as_uri()], capture_output=True,
                   timeout=180, check=True)
    assert shot.stat().st_size > 50_000  # a page with charts, not a blank one
    parser = _Charts()
    parser.feed(dom)
    # funnel, cluster sizes, representation and drop-rate disparity of both audits, before/after, timings;
    # synthesis, quality, training, eval sets, bias probe and ablation say "not in this recipe" / "not run"
    assert parser.charts == 8 and len(parser.rendered) == parser.charts
    assert 'data-errors=""' in dom  # no JS error, console error or blocked load
    assert 'data-resources=""' in dom  # the load handler ran and the page fetched nothing
    assert parser.loads == []
    assert "could not be drawn" not in dom


def test_gate_failure_still_writes_the_report(tmp_path: Path, sample_dir: Path) -> None:
    steps = [{"normalize": {}}, {"audit": {"axes": ["gender"], "gate": {"max_representation_ratio": 1.0}}}]
    recipe = {"name": "gated", "inputs": [{"path": str(sample_dir / "sample.jsonl"), "mapping": "alpaca",
                                           "on_error": "skip"}],
              "steps": steps, "output": {"dir": str(tmp_path / "run")}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["run", str(tmp_path / "recipe.yaml")]) == 3
    page = (tmp_path / "run" / "report.html").read_text()
    assert "The audit gate stopped this run" in page and "representation_ratio" in page


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_dataset_card_is_a_hugging_face_card_that_datasets_loads(
    quick_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    folder = quick_run / "dataset"
    card = (folder / "README.md").read_text()
    front = _front_matter(card)
    manifest = json.loads((quick_run / "manifest.json").read_text())
    assert front["license"] == "unknown" and front["size_categories"] == ["n<1K"]
    assert front["task_categories"] == ["text-generation"] and front["source_datasets"] == ["data/sample.jsonl"]
    assert front["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data.parquet"}]}]
    for section in ("## Sources", "## Curation steps", "## Synthetic share and provenance", "## Demographic audit",
                    "## Known limitations"):
        assert section in card
    assert "| dedup_minhash |" in card and "0 of" in card  # no synthetic rows in this recipe
    ds = datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "hf"))
    assert ds["train"].num_rows == manifest["rows_final"] == manifest["dataset"]["rows"]
    umask = os.umask(0)
    os.umask(umask)
    assert (folder / "dataset_info.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_dataset_card_front_matter_and_provenance_on_crafted_rows() -> None:
    from types import SimpleNamespace

    from gristmill.export import data_card, size_category

    synth = pl.struct(pl.lit("self_instruct").alias("method"), pl.lit("tiny").alias("model"),
                      pl.lit("vllm").alias("engine"), pl.lit("abc").alias("template_hash"))
    frame = pl.DataFrame({"id": ["1", "2", "3"], "text": ["a", "b", "c"], "source": ["in.jsonl", "in.jsonl", "synth:x"],
                          "lang": ["en", "de", "en"]}).select(
        "id", "text", "source", pl.struct(pl.col("lang").alias("language"), synth.alias("synth")).alias("meta"))
    recipe = SimpleNamespace(name="crafted", path="r.yaml", raw={"license": "cc-by-4.0"},
                             inputs=[SimpleNamespace(path="in.jsonl", mapping="alpaca")],
                             output=SimpleNamespace(formats=["jsonl"]))
    manifest = {"versions": {"gristmill": "0"}, "steps": [{"step": "ingest", "rows_in": 3, "kept": 3, "dropped": 0}],
                "models": {"synthesize": "/models/tiny"}}
    card = data_card(frame, recipe, manifest)
    front = _front_matter(card)
    assert front["license"] == "cc-by-4.0" and front["language"] == ["en", "de"]
    assert front["configs"][0]["data_files"][0]["path"] == "data.jsonl" and "synthetic" in front["tags"]
    assert "1 of 3 rows (33.3%) are synthetic" in card and "| `self_instruct` | `tiny` | `vllm` | `abc` | 1 |" in card
    assert "No demographic audit was run" in card and "| `in.jsonl` | alpaca | 2 |" in card
    assert [size_category(n) for n in (999, 1000, 250_000)] == ["n<1K", "1K<n<10K", "100K<n<1M"]


EVAL_SUMMARY = {"base_model": "/models/smollm2-135m-instruct", "adapters": {"adapter": "/run/adapter"},
                "columns": ["set", "metric", "base", "adapter"], "sets": {"qa": "/run/eval/qa.json"},
                "resumed": {"qa": False}, "table": [{"set": "qa", "metric": "loss", "base": 2.25, "adapter": 1.5},
                                                    {"set": "qa", "metric": "rougeL", "base": 0.1, "adapter": None}]}
PROBE = {"path": "/run/eval/model_bias.json", "resumed": False, "seconds": 3.0,
         "gate": {"threshold": 0.3, "passed": False, "max_increase": {"sentiment": 0.4, "refusal_rate": 0.0},
                  "failures": ["generation_gap_increase | gender | sentiment: female 0.6 / male -0.2 | +0.4 | <= 0.3"]}}


def test_dataset_card_audit_before_after_mitigation_and_model_results(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from gristmill.export import data_card, refresh_card

    report = {"rows": 4, "axes": {"gender": {"group_rows": {"f": 3, "m": 1}, "representation_ratio": 3.0}},
              "gate": {"passed": True, "failures": []}, "before_after": _before_after()}
    (tmp_path / "04-audit.json").write_text(json.dumps(report))
    frame = pl.DataFrame({"id": ["1"], "text": ["a"], "source": ["in.jsonl"]})
    recipe = SimpleNamespace(name="crafted", path="r.yaml", raw={}, inputs=[SimpleNamespace(path="in.jsonl",
                                                                                           mapping="alpaca")],
                             output=SimpleNamespace(formats=["parquet"]))
    steps = [{"step": "ingest", "rows_in": 8, "kept": 8, "dropped": 0}, REWEIGH, COUNTERFACTUAL,
             {"step": "eval_decontaminate", "rows_in": 11, "kept": 10, "dropped": 1,
              "dropped_by_reason": {"eval_contamination": 1}}]
    manifest = {"versions": {"gristmill": "0"}, "steps": steps, "reports": {"04-audit": str(tmp_path / "04-audit.json")},
                "fingerprint": "fp1"}
    card = data_card(frame, recipe, manifest)
    manifest["dataset"] = {"rows": 1}  # exported
    assert "Before/after against the earlier audit `02-audit` (steps between: reweigh; gate failed -> passed)" in card
    assert "- gender: max/min ratio 3.0 -> 1.0, distance from the reference (TVD) 0.25 -> 0.0 (weighted)" in card
    assert "## Bias mitigation" in card and "f 2.0 (label 0)/0.666667 (label 1)" in card
    assert "total weight per group: f 4.0, m 4.0" in card and "3 gender-swapped copies added" in card
    assert "| counterfactual_augment | 8 (+3 added) | 11 | 0 | - |" in card
    assert "| eval_decontaminate | 11 | 10 | 1 | eval_contamination: 1 |" in card
    assert "Decontaminated only against the evaluation sets" in card
    assert "No model trained on this dataset was evaluated in this run" in card
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "README.md").write_text(card)
    assert refresh_card(tmp_path, manifest | {"eval": EVAL_SUMMARY, "bias_probe": PROBE})
    refreshed = (tmp_path / "dataset" / "README.md").read_text()
    assert "| set | metric | base | adapter |" in refreshed and "| qa | loss | 2.25 | 1.5 |" in refreshed
    assert "| qa | rougeL | 0.1 | n/a |" in refreshed and "`smollm2-135m-instruct`" in refreshed
    assert "bias probe (base vs adapter on templated prompts per demographic group): gate FAILED" in refreshed
    assert "sentiment +0.400, refusal_rate +0.000" in refreshed and "No model trained" not in refreshed
    # only the model section changed, and refreshing again with the same manifest changes nothing
    assert refreshed.split("<!-- gristmill:model-results -->")[0] == card.split("<!-- gristmill:model-results -->")[0]
    assert refreshed.split("<!-- /gristmill:model-results -->")[1] == card.split("<!-- /gristmill:model-results -->")[1]
    assert refresh_card(tmp_path, manifest | {"eval": EVAL_SUMMARY, "bias_probe": PROBE})
    assert (tmp_path / "dataset" / "README.md").read_text() == refreshed
    assert _front_matter(refreshed)["pretty_name"] == "crafted"
    assert not refresh_card(tmp_path / "nowhere", manifest)  # no card: nothing to do
    # a run stopped by the audit gate exported nothing: the card left there describes an earlier run's data
    stopped = {**manifest, "fingerprint": "fp2", "status": "gate_failed"}
    assert not refresh_card(tmp_path, {k: v for k, v in stopped.items() if k != "dataset"})
    assert not refresh_card(tmp_path, stopped)
    assert (tmp_path / "dataset" / "README.md").read_text() == refreshed


def test_write_report_brings_the_card_up_to_date_and_datasets_still_loads_it(
    quick_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quickstart-like run after an eval and a bias probe (their files written by hand): the report shows
    them, the card's model section is rewritten, and ``datasets`` loads the folder with the new card."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    from gristmill.report import write_report

    run = tmp_path / "run"
    shutil.copytree(quick_run, run)
    before = (run / "dataset" / "README.md").read_text()
    # what the real run put in the card: the second audit against the first, the mitigation steps
    assert "Before/after against the earlier audit `05-audit` (steps between: reweigh, counterfactual_augment" in before
    assert "- 06 reweigh (representation, axis `gender`)" in before and "gender-swapped copies added" in before
    assert "| eval_decontaminate |" in before and "No model trained on this dataset was evaluated" in before
    (run / "eval").mkdir()
    (run / "eval" / "summary.json").write_text(json.dumps(EVAL_SUMMARY))
    (run / "eval" / "model_bias.json").write_text(json.dumps({"axes": {}, "gate": PROBE["gate"]}))
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps(manifest | {"eval": EVAL_SUMMARY, "bias_probe": PROBE}))
    page = write_report(run).read_text()
    assert "<h3>qa</h3>" in page and "-0.75 (better)" in page and "a gap grew by more than 0.3" in page
    card = (run / "dataset" / "README.md").read_text()
    assert "| qa | loss | 2.25 | 1.5 |" in card and "gate FAILED" in card
    assert _front_matter(card) == _front_matter(before)
    ds = datasets.load_dataset(str(run / "dataset"), cache_dir=str(tmp_path / "hf"))
    assert ds["train"].num_rows == manifest["rows_final"]
