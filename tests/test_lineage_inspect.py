"""``gristmill inspect`` and the report show a run's lineage: the run it continued, the data it added, and the
runs continuing it (``gristmill.lineage.continued``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_continuous import _alpaca, _recipe
from tests.test_train_support import sum_rows


def test_inspect_and_report_show_what_a_run_continued_and_added(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    from gristmill.cli import main
    from gristmill.lineage import continued
    from gristmill.recipe import load_recipe
    from gristmill.runner import Runner

    (tmp_path / "b1.jsonl").write_text(_alpaca(sum_rows(20)))
    (tmp_path / "e1.jsonl").write_text(_alpaca(sum_rows(5, start=100)))
    first = Runner(load_recipe(_recipe(tmp_path, "g1", "b1.jsonl", "e1.jsonl"))).run()
    g1, g2 = tmp_path / "runs" / "g1", tmp_path / "runs" / "g2"
    assert continued(g1, first.manifest) is None  # fresh, and nothing continues it yet
    # Round 2: 12 new rows, 3 copies of round-1 rows, 2 rows leaking round 1's eval set.
    (tmp_path / "b2.jsonl").write_text(_alpaca(sum_rows(12, start=40) + sum_rows(3) + sum_rows(2, start=100)))
    (tmp_path / "e2.jsonl").write_text(_alpaca(sum_rows(5, start=150)))
    second = Runner(load_recipe(_recipe(tmp_path, "g2", "b2.jsonl", "e2.jsonl", resume_adapter="runs/g1",
                                        replay_fraction=0.25))).run()

    info = continued(g2, second.manifest)
    assert info is not None
    assert info["run"] == str(g1.resolve()) and info["exists"] and info["generation"] == 2
    assert (info["start_step"], info["global_step"]) == (2, 4)
    assert (info["rows_added"], info["earlier_rows"], info["replay_rows"]) == (12, 20, 3)  # round(0.25 x 12)
    assert (info["near_duplicates_of_lineage"], info["eval_copies_dropped"]) == (3, 2)
    assert info["eval_sets_added"] == ["g1_qa"] and info["continued_by"] == []
    assert continued(g1, first.manifest) == {"continued_by": [str(g2)]}

    assert main(["inspect", str(g2)]) == 0
    out = capsys.readouterr()
    text = " ".join((out.out + out.err).split())
    assert "lineage: continues g1" in text and "generation 2, adapter steps 2 → 4" in text
    assert "data added: 12 new curated rows (the earlier run curated 20), 3 earlier rows replayed" in text
    assert "3 near duplicates of its data dropped" in text and "2 copies of eval items dropped" in text
    assert main(["inspect", str(g1)]) == 0
    out = capsys.readouterr()
    assert f"continued by {g2}" in " ".join((out.out + out.err).split())

    assert main(["report", str(g2)]) == 0
    page = (g2 / "report.html").read_text()
    assert 'id="lineage"' in page and "data added: 12 new curated rows" in page
    assert main(["report", str(g1)]) == 0
    assert f"continued by {g2}" in (g1 / "report.html").read_text()
