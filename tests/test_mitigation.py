"""Mitigation: reweigh (Kamiran–Calders and representation weights, checked against the formula by hand),
counterfactual_augment (the swap list, the her/his rule, trap words, accounting), the audit's weighted
before/after against an earlier audit in one recipe, and --allow-audit-failure through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml
from pydantic import ValidationError

from gristmill.audit.counterfactual import CounterfactualParams, counterfactual_augment, load_swaps, swap_text
from gristmill.audit.reweigh import ReweighParams, kamiran_calders, reweigh
from gristmill.cli import main
from gristmill.common.errors import InputError
from tests.conftest import make_frame

# f: 4 rows with labels 1 1 1 0; m: 4 rows with labels 1 0 0 0; one row with no group, one with both.
TEXTS = ["She won.", "She agreed.", "Her idea.", "She left.", "He won.", "He left.", "His idea.", "He lost.",
         "The weather is mild.", "He and she argued."]
LABELS = [1, 1, 1, 0, 1, 0, 0, 0, 1, 0]


def test_kamiran_calders_weights_against_the_formula_by_hand() -> None:
    frame = make_frame(TEXTS, label=LABELS)
    kept, dropped, stats = reweigh(frame, ReweighParams(axis="gender", label_column="label"))
    # By hand over the 8 single-group rows: P(f) = P(m) = 1/2, P(y=1) = P(y=0) = 1/2,
    # P(f,1) = 3/8 -> w = (1/2 * 1/2) / (3/8) = 2/3; P(f,0) = 1/8 -> 2; P(m,1) = 1/8 -> 2; P(m,0) = 3/8 -> 2/3.
    # Sum over those rows: 3*2/3 + 2 + 2 + 3*2/3 = 8, plus the two unweighed rows at 1: mean 1, no rescaling.
    expected = [2 / 3, 2 / 3, 2 / 3, 2, 2, 2 / 3, 2 / 3, 2 / 3, 1, 1]
    assert kept["weight"].to_list() == pytest.approx(expected)
    assert kept.height == frame.height and dropped.height == 0 and kept["weight"].mean() == pytest.approx(1.0)
    assert stats["weights"] == {"female": {"0": 2.0, "1": 0.666667}, "male": {"0": 0.666667, "1": 2.0}}
    assert (stats["rows_weighed"], stats["rows_no_group"], stats["rows_several_groups"]) == (8, 1, 1)
    assert stats["group_weight"] == {"female": 4.0, "male": 4.0}
    # Weighted, the label rate is the same in both groups (the point of the weights): 0.5 each.
    w = kept.with_columns(g=pl.Series(["f"] * 4 + ["m"] * 4 + ["-", "-"])).filter(pl.col("g") != "-")
    rates = w.group_by("g").agg((pl.col("weight") * pl.col("label")).sum() / pl.col("weight").sum()).sort("g")
    assert rates["weight"].to_list() == pytest.approx([0.5, 0.5])
    assert kamiran_calders(["a", "a", "b"], ["x", "y", "y"]) == pytest.approx(
        {("a", "x"): (2 / 3 * 1 / 3) / (1 / 3), ("a", "y"): (2 / 3 * 2 / 3) / (1 / 3), ("b", "y"): (1 / 3 * 2 / 3) / (1 / 3)})


def test_representation_weights_uniform_reference_existing_weight_and_clip() -> None:
    frame = make_frame(["She ran.", "She sat.", "Her cat.", "He ran.", "A table."])
    kept, _, stats = reweigh(frame, ReweighParams(axis="gender"))
    # P(f) = 3/4, P(m) = 1/4 over the grouped rows; uniform target 1/2: w(f) = 0.5/0.75, w(m) = 0.5/0.25.
    assert kept["weight"].to_list() == pytest.approx([2 / 3, 2 / 3, 2 / 3, 2, 1])
    assert stats["group_weight"] == {"female": 2.0, "male": 2.0} and stats["method"] == "representation"
    ref, _, _ = reweigh(frame, ReweighParams(axis="gender", reference={"female": 1, "male": 3}))
    assert ref["weight"].to_list() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 3, 1])  # 0.25/0.75 and 0.75/0.25
    # An existing weight (an earlier reweigh) multiplies in; the column is renormalised to mean 1.
    stacked, _, _ = reweigh(frame.with_columns(weight=pl.Series([1.0, 1.0, 1.0, 1.0, 6.0])), ReweighParams(axis="gender"))
    raw = [2 / 3, 2 / 3, 2 / 3, 2, 6]
    assert stacked["weight"].to_list() == pytest.approx([x / (sum(raw) / 5) for x in raw])
    clipped, _, _ = reweigh(frame, ReweighParams(axis="gender", max_weight=1.5))
    raw = [2 / 3, 2 / 3, 2 / 3, 1.5, 1]
    assert clipped["weight"].to_list() == pytest.approx([x / (sum(raw) / 5) for x in raw])
    tab, _, tab_stats = reweigh(pl.DataFrame({"id": ["a", "b", "c", "d"], "sex": ["F", "F", "M", None]}),
                                ReweighParams(column="sex"))
    assert tab["weight"].to_list() == pytest.approx([0.75, 0.75, 1.5, 1.0]) and tab_stats["rows_no_group"] == 1


def test_reweigh_params_and_input_errors() -> None:
    with pytest.raises(ValidationError, match="exactly one of `axis`"):
        ReweighParams(axis="gender", column="sex")
    with pytest.raises(ValidationError, match="exactly one of `axis`"):
        ReweighParams()
    with pytest.raises(InputError, match="unknown axis 'colour'"):
        reweigh(make_frame(["x"]), ReweighParams(axis="colour"))
    with pytest.raises(InputError, match="no column 'label'"):
        reweigh(make_frame(["x"]), ReweighParams(axis="gender", label_column="label"))


@pytest.mark.parametrize(("text", "expected", "swaps"), [
    ("He gave her his book.", "She gave him her book.", 3),
    ("I saw her car.", "I saw his car.", 1),            # her + noun -> his
    ("Her new job starts today.", "His new job starts today.", 1),  # her + adjective -> his
    ("I gave her the book.", "I gave him the book.", 1),  # her + article -> him
    ("I told her.", "I told him.", 1),                  # her + punctuation -> him
    ("Let her go", "Let him go", 1),                    # her + listed verb -> him
    ("The choice is his.", "The choice is hers.", 1),   # his + end -> hers
    ("It was his own idea", "It was her own idea", 1),  # his + adjective -> her
    ("HE said Mr. Smith's kings left", "SHE said Mrs. Smith's queens left", 3),  # case and plural kept
    ("Men and women; actresses", "Women and men; actors", 3),
    ("The Hershey theme: mankind, Sherlock, shepherd, heroics", "The Hershey theme: mankind, Sherlock, shepherd, heroics", 0),
    ("A step-mother and a chairman", "A step-father and a chairwoman", 2),
])
def test_swap_known_answers(text: str, expected: str, swaps: int) -> None:
    out, n, _ = swap_text(text, load_swaps())
    assert (out, n) == (expected, swaps)


def test_names_only_with_name_pairs_and_bad_swap_lists(tmp_path: Path) -> None:
    assert swap_text("John met Mary.", load_swaps())[0] == "John met Mary."
    assert swap_text("John met Mary.", load_swaps(name_pairs=[["John", "Mary"]]))[0] == "Mary met John."
    bad = tmp_path / "pairs.json"
    bad.write_text(json.dumps({"words": [["he", "she"], ["he", "they"]]}))
    with pytest.raises(InputError, match="'he' maps to both 'she' and 'they'"):
        load_swaps(bad)
    bad.write_text('{"words": [["he", "she"]')
    with pytest.raises(InputError, match="pairs.json:1: invalid JSON"):
        load_swaps(bad)


def _chat(user: str, assistant: str, system: str = "Be kind to him.") -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user},
            {"role": "assistant", "content": assistant}]


def test_counterfactual_rows_are_added_marked_and_counted() -> None:
    messages = [_chat("What did he say?", "He said his cat was hungry."), _chat("Sort 3 1 2", "1 2 3", "Be brief."),
                _chat("Tell me about queens.", "A queen rules.")]
    frame = make_frame(["What did he say?\n\nHe said his cat was hungry.", "Sort 3 1 2\n\n1 2 3",
                        "Tell me about queens.\n\nA queen rules."], messages=messages, label=[1, 0, 1])
    result = counterfactual_augment(frame, CounterfactualParams())
    result.check("counterfactual_augment", frame)
    kept, dropped, stats = result
    assert kept.height == 5 and dropped.height == 0 and result.added == 2  # the sort row has nothing to swap
    new = kept.filter(pl.col("id").str.starts_with("cf:"))
    assert new["id"].to_list() == ["cf:r0", "cf:r2"] and new["label"].to_list() == [1, 1]
    assert new["messages"][0].to_list() == [
        {"role": "system", "content": "Be kind to her."}, {"role": "user", "content": "What did she say?"},
        {"role": "assistant", "content": "She said her cat was hungry."}]
    assert new["text"].to_list() == ["What did she say?\n\nShe said her cat was hungry.",
                                     "Tell me about kings.\n\nA king rules."]
    marks = kept["meta"].struct.field("counterfactual").to_list()
    assert marks == [None, None, None, {"source_id": "r0", "swaps": 4}, {"source_id": "r2", "swaps": 3}]
    assert stats["rows_with_swaps"] == 2 and stats["rows_augmented"] == 2 and stats["swaps"] == 7
    assert stats["swaps_by_word"]["he->she"] == 2 and stats["swaps_by_word"]["his->her"] == 1
    capped = counterfactual_augment(frame, CounterfactualParams(max_rows=1, seed=3))
    again = counterfactual_augment(frame, CounterfactualParams(max_rows=1, seed=3))
    assert capped.added == 1 and capped.kept["id"].to_list() == again.kept["id"].to_list()
    assert counterfactual_augment(frame, CounterfactualParams(fraction=0.5)).added == 1


def _write_rows(path: Path, texts: list[str]) -> None:
    path.write_text("".join(json.dumps({"id": f"q{i}", "label": i % 2,
                                        "messages": [{"role": "user", "content": f"Question {i}?"},
                                                     {"role": "assistant", "content": t}]}) + "\n"
                            for i, t in enumerate(texts)))


def _recipe(tmp_path: Path, steps: list[dict]) -> Path:
    rows = ["She fixed the server quickly.", "She wrote the parser.", "She reviewed the patch.",
            "She tested the build.", "She shipped the release.", "She led the team.",
            "He fixed the flaky test.", "The build uses a cache.", "Sort the list in place."]
    _write_rows(tmp_path / "data.jsonl", rows)
    recipe = {"name": "mitigation", "inputs": [{"path": "data.jsonl", "mapping": "messages"}], "steps": steps,
              "output": {"dir": str(tmp_path / "run"), "formats": ["parquet"]}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_a_second_audit_shows_before_and_after_with_weighted_shares(tmp_path: Path) -> None:
    audit = {"audit": {"axes": ["gender"], "label_column": "label", "n_boot": 0, "associations": {"enabled": False}}}
    steps = [audit, {"counterfactual_augment": {"max_rows": 1}},
             {"reweigh": {"axis": "gender"}}, audit]
    assert main(["-q", "run", str(_recipe(tmp_path, steps)), "--no-train"]) == 0
    run = tmp_path / "run"
    first = json.loads((run / "reports" / "01-audit.json").read_text())
    second = json.loads((run / "reports" / "04-audit.json").read_text())
    assert first["axes"]["gender"]["group_rows"] == {"female": 6, "male": 1, "nonbinary": 0, "transgender": 0}
    assert "before_after" not in first
    # The one swapped copy (seed 0 picks the male row: "She fixed the flaky test.") makes 7 female rows and 1 male
    # among 10; reweigh gives them 0.5*8/7 and 0.5*8/1 = 4, so each group weighs 4 (the total stays 10 rows).
    after = second["before_after"]["axes"]["gender"]["after"]
    assert second["axes"]["gender"]["group_rows"] == {"female": 7, "male": 1, "nonbinary": 0, "transgender": 0}
    assert after["weighted"] and after["group_rows"] == {"female": 4.0, "male": 4.0, "nonbinary": 0.0,
                                                          "transgender": 0.0}
    assert after["shares"]["female"] == after["shares"]["male"] == 0.5
    before = second["before_after"]["axes"]["gender"]["before"]
    assert before["group_rows"] == {"female": 6, "male": 1, "nonbinary": 0, "transgender": 0} and not before["weighted"]
    assert second["before_after"]["steps_between"] == ["counterfactual_augment", "reweigh"]
    assert second["before_after"]["rows"] == {"before": 9, "after": 10}
    # Parity before (rows) and after (weighted selection rates: the rows' labels weighed as training sees them).
    parity = second["before_after"]["parity"]["gender"]
    assert not parity["before"]["weighted"] and parity["after"]["weighted"]
    assert parity["after"]["selection_rate"] == second["parity"]["gender"]["weighted"]["selection_rate"]
    data = pl.read_parquet(run / "dataset" / "data.parquet")
    assert data["weight"].sum() == pytest.approx(10.0)


def test_allow_audit_failure_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gate = {"audit": {"axes": ["gender"], "n_boot": 0, "gate": {"max_representation_ratio": 2.0}}}
    path = _recipe(tmp_path, [gate, {"normalize": {}}])
    assert main(["-q", "run", str(path), "--no-train"]) == 3
    run = tmp_path / "run"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "gate_failed" and "audit_override" not in manifest
    assert [s["step"] for s in manifest["steps"]] == ["ingest", "audit"]  # nothing ran after the audit
    assert not (run / "dataset").exists() and not (run / "adapter").exists()
    err = capsys.readouterr().err
    assert "gate failed at 01-audit" in err and "representation_ratio" in err and "female 6 / nonbinary 0" in err
    assert main(["-q", "run", str(path), "--no-train", "--allow-audit-failure"]) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "ok" and [s["step"] for s in manifest["steps"]] == ["ingest", "audit", "normalize"]
    (override,) = manifest["audit_override"]
    assert override["step"] == "01-audit" and override["failures"][0].startswith("representation_ratio | gender")
    card = (run / "dataset" / "README.md").read_text()
    assert "Gate FAILED (overridden with --allow-audit-failure)" in card and "representation_ratio | gender" in card


def test_the_gate_judges_weighted_shares_and_row_counts_stay_rows() -> None:
    from gristmill.audit.audit import AuditParams, audit_rows

    frame = pl.DataFrame({"id": list("abcd"), "text": ["x"] * 4, "sex": ["F", "F", "F", "M"]})
    params = AuditParams(axes=[], sensitive_columns=["sex"], n_boot=0,
                         gate={"max_representation_ratio": 1.5, "min_group_rows": 2})
    plain = audit_rows(frame, params)
    assert plain.report["axes"]["sex"]["representation_ratio"] == 3.0
    assert [f.split(" | ")[0] for f in plain.gate.failures] == ["representation_ratio", "min_group_rows"]
    weighted = audit_rows(reweigh(frame, ReweighParams(column="sex")).kept, params)
    entry = weighted.report["axes"]["sex"]
    assert entry["group_rows"] == {"F": 3, "M": 1} and entry["weighted"]["group_rows"] == {"F": 2.0, "M": 2.0}
    assert entry["weighted"]["representation_ratio"] == 1.0
    assert [f.split(" | ")[0] for f in weighted.gate.failures] == ["min_group_rows"]  # M still has one row


def test_kamiran_calders_weights_close_the_weighted_parity_gap() -> None:
    from gristmill.audit.audit import AuditParams, audit_rows

    frame = make_frame(TEXTS, label=LABELS)
    params = AuditParams(axes=["gender"], label_column="label", n_boot=0,
                         gate={"max_selection_rate_difference": 0.1})
    before = audit_rows(frame, params)
    # Single-group rows: female labels 1 1 1 0 (rate 0.75), male 1 0 0 0 (0.25): difference 0.5, ratio 1/3.
    par = before.report["parity"]["gender"]
    assert par["selection_rate"] == {"female": 0.75, "male": 0.25} and par["demographic_parity_difference"] == 0.5
    assert [f.split(" | ")[0] for f in before.gate.failures] == ["demographic_parity_difference"]
    after = audit_rows(reweigh(frame, ReweighParams(axis="gender", label_column="label")).kept, params)
    par = after.report["parity"]["gender"]
    assert par["selection_rate"] == {"female": 0.75, "male": 0.25}  # the rows did not change
    assert par["weighted"] == {"selection_rate": {"female": 0.5, "male": 0.5}, "demographic_parity_difference": 0.0,
                               "demographic_parity_ratio": 1.0}
    assert after.gate.passed


def test_a_second_counterfactual_step_adds_nothing_twice() -> None:
    frame = make_frame(["He ran.", "She sat.", "A table."])
    once = counterfactual_augment(frame, CounterfactualParams()).kept
    twice = counterfactual_augment(once, CounterfactualParams())
    twice.check("counterfactual_augment", once)
    assert once.height == 5 and twice.added == 0 and twice.stats["rows_already_augmented"] == 4
