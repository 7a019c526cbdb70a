from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from gristmill.audit.amplification import TraceStep, amplification, drop_rates
from gristmill.audit.associations import pmi_table
from gristmill.audit.audit import AuditParams, GateParams, audit_rows
from gristmill.audit.lexicon import lexicon_or_builtin
from gristmill.audit.parity import parity
from gristmill.audit.representation import representation
from gristmill.common.lexicon import as_lexicon, detect, groups_mentioned
from tests.conftest import make_frame

LEX = {"gender": {"female": ["her", "mother"], "male": ["he"]}, "age": {"child": ["kid*"], "older": ["elderly"]}}


def test_term_syntax_known_answers() -> None:
    hits = detect(pl.Series(["Her grandmothers said he left", "The elderly and the kids", "nothing here",
                             "Mothers' day", "he's"]), LEX, ["gender", "age"])
    assert hits["gender"].to_list() == [["female", "male"], [], [], ["female"], ["male"]]
    assert hits["age"].to_list() == [[], ["child", "older"], [], [], []]
    lex = as_lexicon({"_classes": {"person": ["women", "family", "people"]},
                      "_exclude": {"race": ["black hole", "!Black {Cap}"]},
                      "race": {"black": ["black {person}", "african american"]}})["race"]
    assert groups_mentioned("Black women studied the black hole", lex) == ["black"]
    assert groups_mentioned("The Black Cat Jazz Club and a black hole", lex) == []
    assert groups_mentioned("An African-American family; africanamerican", lex) == ["black"]


TRAPS = ["The black hole swallowed the star.", "Black market prices rose.", "The Black Cat Jazz Club opens at nine.",
         "Follow the White Rabbit.", "Strip white spaces from the input.", "Upgrade the old version first.",
         "Christian Bale starred in the film.", "Native code is faster.", "Poor performance on big inputs.",
         "Our senior engineer approved it.", "The board was deaf to complaints.", "Papers get a blind review.",
         "Kill the child process.", "Read the man page.", "Draw a straight line.", "Church numerals encode numbers.",
         "The button is disabled.", "Use rich text.", "A fat binary for two CPUs.", "The thin client renders it."]


def test_trap_phrases_produce_no_hits() -> None:
    lex = lexicon_or_builtin(None)
    hits = detect(pl.Series(TRAPS), lex, list(lex))
    found = {(TRAPS[i], a, tuple(g)) for a in lex for i, g in enumerate(hits[a].to_list()) if g}
    assert found == set()


def test_builtin_lexicon_nine_axes_and_real_sentences() -> None:
    lex = lexicon_or_builtin(None)
    assert set(lex) == {"gender", "race_ethnicity", "religion", "age", "disability", "nationality",
                        "sexual_orientation", "socioeconomic", "physical_appearance"}
    hits = detect(pl.Series(["A Muslim grandmother and her teenage grandson", "I'm a Black woman who is deaf.",
                             "Rich people and the poor, from Mexico"]), lex, list(lex))
    assert hits.row(0, named=True)["gender"] == ["female", "male"] and hits["religion"][0].to_list() == ["muslim"]
    assert set(hits["age"][0].to_list()) == {"older_adult", "teen"}
    assert hits["race_ethnicity"][1].to_list() == ["black"] and hits["disability"][1].to_list() == ["hearing"]
    assert hits["socioeconomic"][2].to_list() == ["low_income", "wealthy"]
    assert hits["nationality"][2].to_list() == ["latin_american"]


def test_representation_zero_counts_are_na_with_counts() -> None:
    col = pl.Series([["a"], ["a"], ["a", "b"], []])
    entry = representation(col, ["a", "b", "c"], n_boot=0)
    assert entry["group_rows"] == {"a": 3, "b": 1, "c": 0} and entry["representation_ratio"] == "n/a"
    assert entry["ratio_counts"]["min"] == {"group": "c", "rows": 0}
    entry = representation(col, ["a", "b"], n_boot=50)
    assert entry["representation_ratio"] == 3.0 and entry["shares"] == {"a": 1.0, "b": 0.3333}
    assert entry["divergence"]["tvd"] == 0.25  # distribution (0.75, 0.25) vs uniform
    lo, hi = entry["share_ci95"]["b"]
    assert 0 <= lo <= 0.3333 <= hi <= 1


def test_parity_known_answers() -> None:
    out = parity(pl.Series([1, 1, 0, 0, 1, 1]), pl.Series(["f", "f", "f", "f", "m", "m"]),
                 predictions=pl.Series([1, 0, 0, 0, 1, 1]), n_boot=0)
    assert out["selection_rate"] == {"f": 0.5, "m": 1.0}
    assert out["demographic_parity_difference"] == 0.5 and out["demographic_parity_ratio"] == 0.5
    # TPR f = 1/2, m = 2/2; FPR f = 0/2, m undefined -> fairlearn: max(|TPR gap|, |FPR gap|) = 0.5
    assert out["equalized_odds_difference"] == 0.5


def test_pmi_known_answer() -> None:
    g = np.array([[1], [1], [1], [1], [0], [0], [0], [0]])
    a = np.array([[1], [1], [1], [1], [0], [0], [0], [0]])
    joint, pmi, p = pmi_table(g, a)
    assert joint[0, 0] == 4 and pmi[0, 0] == pytest.approx(1.0) and p[0, 0] == pytest.approx(1 / 70)


def _frame() -> pl.DataFrame:
    texts = ["she smiled"] * 4 + ["he smiled"] * 2 + ["they smiled", "no one"]
    return make_frame(texts, accepted=[1, 1, 0, 0, 1, 1, 1, 0])


def test_representation_and_fairlearn_selection_rates(tmp_path) -> None:
    lex = tmp_path / "lex.json"
    lex.write_text('{"gender": {"female": ["she"], "male": ["he"], "nonbinary": ["they"]}}')
    params = AuditParams(axes=["gender"], lexicon=str(lex), lexicon_mode="replace", label_column="accepted", n_boot=0)
    result = audit_rows(_frame(), params)
    report = result.report
    assert result.kept.height == 8 and result.dropped.height == 0 and report is not None
    g = report["axes"]["gender"]
    assert g["group_rows"] == {"female": 4, "male": 2, "nonbinary": 1} and g["representation_ratio"] == 4.0
    assert report["parity"]["gender"]["selection_rate"] == {"female": 0.5, "male": 1.0, "nonbinary": 1.0}
    assert report["parity"]["gender"]["demographic_parity_difference"] == pytest.approx(0.5)
    assert [(x["group"], x["target_rows"]) for x in report["gaps"]] == [("nonbinary", 2)]
    assert result.kept["meta"].struct.field("demographics").struct.field("gender").to_list()[4] == ["male"]
    assert result.gate is not None and result.gate.passed


def test_gate_fails_with_a_table(tmp_path) -> None:
    lex = tmp_path / "lex.json"
    lex.write_text('{"gender": {"female": ["she"], "male": ["he"], "nonbinary": ["zir"]}}')
    gate = GateParams(max_representation_ratio=3.0, min_group_rows=2, max_selection_rate_difference=0.4)
    result = audit_rows(_frame(), AuditParams(axes=["gender"], lexicon=str(lex), lexicon_mode="replace",
                                              label_column="accepted", gate=gate, n_boot=0))
    assert result.gate is not None and result.report is not None and not result.gate.passed
    assert result.gate.failures == result.report["gate"]["failures"]
    assert result.report["axes"]["gender"]["representation_ratio"] == "n/a"
    table = {(r["metric"], r["axis"], r["value"]) for r in result.report["gate"]["table"]}
    assert table == {("representation_ratio", "gender", "n/a"), ("min_group_rows", "gender", "0"),
                     ("demographic_parity_difference", "gender", "0.5")}
    assert all(len(line.split(" | ")) == 5 for line in result.gate.failures)


def test_user_lexicon_merges_and_sensitive_columns(tmp_path) -> None:
    lex = tmp_path / "lex.json"
    lex.write_text('{"gender": {"female": ["gal pal"]}, "caste": {"dalit": ["dalit"]}}')
    frame = make_frame(["my gal pal", "a dalit poet", "he"], sex=["f", None, "m"])
    result = audit_rows(frame, AuditParams(axes=["gender", "caste"], lexicon=str(lex), sensitive_columns=["sex"], n_boot=0))
    assert result.report is not None
    assert result.report["axes"]["gender"]["group_rows"]["female"] == 1
    assert result.report["axes"]["caste"]["group_rows"] == {"dalit": 1}
    assert result.report["axes"]["sex"]["group_rows"] == {"f": 1, "m": 1}


def test_unknown_axis_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown axis"):
        audit_rows(_frame(), AuditParams(axes=["height"]))


def _checkpoint(folder, kept: pl.DataFrame, dropped: pl.DataFrame) -> TraceStep:
    folder.mkdir(parents=True)
    kept.write_parquet(folder / "kept.parquet")
    dropped.write_parquet(folder / "dropped.parquet")
    return TraceStep(name=folder.name, checkpoint=str(folder))


def test_a_filter_that_drops_one_group_twice_as_often_is_flagged_and_fails_the_gate(tmp_path) -> None:
    texts = [f"she wrote note {i}" for i in range(20)] + [f"he wrote note {i}" for i in range(20)]
    ingest = pl.DataFrame({"id": [str(i) for i in range(40)], "text": texts})
    dropped_ids = [str(i) for i in range(8)] + [str(i) for i in range(20, 24)]  # f 8/20, m 4/20: f at 1.33x
    is_dropped = pl.col("id").is_in(dropped_ids)
    trace = [_checkpoint(tmp_path / "00-ingest", ingest, ingest.clear()),
             _checkpoint(tmp_path / "01-filter", ingest.filter(~is_dropped),
                         ingest.filter(is_dropped).with_columns(reason=pl.lit("x")))]
    lex = lexicon_or_builtin(None)
    out = amplification(trace, lambda f: detect(f["text"], lex, ["gender"]), ["gender"], 1.3, 10, n_boot=50)
    step = out["steps"][0]
    assert step["drop_rate"] == 0.3 and step["axes"]["gender"]["female"]["drop_rate"] == 0.4
    assert step["axes"]["gender"]["female"]["ratio_to_overall"] == pytest.approx(1.3333)
    assert step["axes"]["gender"]["male"]["ratio_to_overall"] == pytest.approx(0.6667)
    assert [(f["step"], f["group"]) for f in out["flagged"]] == [("01-filter", "female")]
    assert out["before_after"]["gender"] == {"ingest": {"female": 20, "male": 20}, "now": {"female": 12, "male": 16}}
    frame = make_frame(texts).filter(~is_dropped)
    params = AuditParams(axes=["gender"], trace=trace, drop_rate_ratio=1.3, n_boot=0,
                         gate=GateParams(max_drop_rate_ratio=1.3))
    result = audit_rows(frame, params)
    assert result.gate is not None and not result.gate.passed
    assert result.gate.failures[0].startswith("drop_rate_ratio@01-filter | gender | female 0.4 vs all 0.3")
    assert "trace" not in params.model_dump()  # not fingerprinted: the runner sets it


def test_drop_rates_count_a_row_in_each_group_it_mentions() -> None:
    rates = drop_rates(np.array([1, 0, 0]), pl.Series([["a", "b"], ["a"], ["b"]]), n_boot=0, seed=0)
    assert rates == {"a": {"rows": 2, "dropped": 1, "drop_rate": 0.5}, "b": {"rows": 2, "dropped": 1, "drop_rate": 0.5}}
    assert math.isclose(rates["a"]["drop_rate"], 0.5)


def test_bootstrap_interval_known_answers_and_agreement_with_fairlearn() -> None:
    import numpy as np
    from fairlearn.metrics import MetricFrame, selection_rate

    from gristmill.audit.bootstrap import group_rate_ci

    ci = group_rate_ci(np.array([1, 1, 1, 0, 0]), np.array(["a", "a", "a", "b", "b"]), n_boot=50)
    assert ci == {"a": (1.0, 1.0), "b": (0.0, 0.0)}  # constant within a group: the interval is the point
    assert group_rate_ci(np.array([]), np.array([]), 10) == {} and group_rate_ci(np.array([1]), np.array(["a"]), 0) == {}
    rng = np.random.default_rng(1)
    g = rng.choice(["a", "b", "c"], size=600, p=[0.5, 0.3, 0.2])
    y = (rng.random(600) < np.where(g == "a", 0.7, np.where(g == "b", 0.4, 0.2))).astype(int)
    ours = group_rate_ci(y, g, n_boot=400, seed=0)
    mf = MetricFrame(metrics=selection_rate, y_true=y, y_pred=y, sensitive_features=g, n_boot=400,
                     ci_quantiles=[0.025, 0.975], random_state=0)
    lo, hi = mf.by_group_ci
    for group in "abc":  # the same statistic; only the random draws differ
        assert ours[group][0] == pytest.approx(float(lo[group]), abs=0.03)
        assert ours[group][1] == pytest.approx(float(hi[group]), abs=0.03)
        assert ours[group][0] < float(mf.by_group[group]) < ours[group][1]
