from __future__ import annotations

import polars as pl
import pytest

from gristmill.audit.audit import AuditParams, GateParams, audit_rows
from gristmill.audit.lexicon import lexicon_or_builtin
from gristmill.common.lexicon import detect, term_pattern
from tests.conftest import make_frame

LEX = {"gender": {"female": ["her", "mother*"], "male": ["he"]}, "age": {"child": ["kid*"], "older": ["elderly"]}}


def test_term_pattern_and_detection_known_answer() -> None:
    assert term_pattern(["he", "mother*"]) == r"(?i)\b(?:mother\w*|he)\b"
    hits = detect(pl.Series(["Her grandmothers said he left", "The elderly and the kids", "nothing here"]),
                  LEX, ["gender", "age"])
    assert hits["gender"].to_list() == [["female", "male"], [], []]
    assert hits["age"].to_list() == [[], ["child", "older"], []]


def test_builtin_lexicon_covers_the_quickstart_axes() -> None:
    lex = lexicon_or_builtin(None)
    assert {"gender", "race_ethnicity", "religion", "age"} <= set(lex)
    hits = detect(pl.Series(["A Muslim grandmother and her teenage grandson"]), lex, ["gender", "religion", "age"])
    assert hits.row(0) == (["female", "male"], ["muslim"], ["teen"])


def _frame() -> pl.DataFrame:
    texts = ["she smiled"] * 4 + ["he smiled"] * 2 + ["they smiled", "no one"]
    return make_frame(texts, accepted=[1, 1, 0, 0, 1, 1, 1, 0])


def test_representation_and_fairlearn_selection_rates(tmp_path) -> None:
    lex = tmp_path / "lex.json"
    lex.write_text('{"gender": {"female": ["she"], "male": ["he"], "nonbinary": ["they"]}}')
    params = AuditParams(axes=["gender"], lexicon=str(lex), label_column="accepted")
    result = audit_rows(_frame(), params)
    kept, dropped, report = result.kept, result.dropped, result.report
    assert kept.height == 8 and dropped.height == 0 and report is not None
    g = report["axes"]["gender"]
    assert g["group_rows"] == {"female": 4, "male": 2, "nonbinary": 1}
    assert g["representation_ratio"] == 4.0
    assert g["selection_rate"] == {"female": 0.5, "male": 1.0, "nonbinary": 1.0}
    assert g["selection_rate_difference"] == pytest.approx(0.5)
    assert [(x["group"], x["target_rows"]) for x in report["gaps"]] == [("nonbinary", 2)]
    assert kept["meta"].struct.field("demographics").struct.field("gender").to_list()[4] == ["male"]
    assert result.gate is not None and result.gate.passed and result.gate.failures == []


def test_gate_fails_with_named_reasons(tmp_path) -> None:
    lex = tmp_path / "lex.json"
    lex.write_text('{"gender": {"female": ["she"], "male": ["he"], "nonbinary": ["zir"]}}')
    gate = GateParams(max_representation_ratio=3.0, min_group_rows=2, max_selection_rate_difference=0.4)
    result = audit_rows(_frame(), AuditParams(axes=["gender"], lexicon=str(lex), label_column="accepted",
                                              gate=gate))
    assert result.gate is not None and result.report is not None
    failures = result.gate.failures
    assert not result.gate.passed and failures == result.report["gate"]["failures"]
    assert result.report["axes"]["gender"]["representation_ratio"] == "inf"
    assert any("representation ratio inf > 3.0" in f for f in failures)
    assert any("gender.nonbinary: 0 rows < min_group_rows 2" in f for f in failures)
    assert any("selection-rate difference 0.500 > 0.4" in f for f in failures)


def test_unknown_axis_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown axis"):
        audit_rows(_frame(), AuditParams(axes=["height"]))
