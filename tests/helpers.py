"""Assertions shared by the runner and quickstart tests."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl


def assert_manifest_adds_up(manifest: dict) -> None:
    steps = manifest["steps"]
    for s in steps:
        assert s["rows_in"] + s.get("rows_added", 0) == s["kept"] + s["dropped"], s["step"]
        assert sum(s["dropped_by_reason"].values()) == s["dropped"], s["step"]
    for prev, nxt in zip(steps, steps[1:], strict=False):
        assert prev["kept"] == nxt["rows_in"], (prev["step"], nxt["step"])
    assert steps[-1]["kept"] == manifest["rows_final"]


def assert_planted_defects_removed(run_dir: Path, data_dir: Path, quickstart_steps: bool = False) -> None:
    """Every planted defect is gone with the right reason; ``quickstart_steps`` adds language and leak checks."""
    planted = json.loads((data_dir / "planted.json").read_text())
    final = set(pl.read_parquet(run_dir / "dataset" / "data.parquet")["id"])
    rejects = pl.read_parquet(run_dir / "rejects.parquet")
    reason = dict(zip(rejects["id"], rejects["reason"], strict=True))
    for kind, expected in (("exact", {"exact_duplicate"}), ("near", {"exact_duplicate", "near_duplicate"})):
        for copy, original in planted[kind]:
            assert len({copy, original} & final) <= 1, (kind, copy, original)
            reasons = {reason.get(copy), reason.get(original)}
            assert reasons & expected, (kind, copy, original, reasons)
    for junk in planted["junk"]:
        assert junk not in final and reason[junk] == "too_few_words"
    assert (rejects["reason"] == "malformed_input").sum() == len(planted["malformed_lines"])
    if quickstart_steps:
        for row_id in planted["foreign"]:
            assert row_id not in final and reason[row_id] == "language.wrong_language", row_id
        for row_id in planted["contaminated"]:
            assert row_id not in final and reason[row_id] == "contaminated", row_id
        leaks = rejects.filter(pl.col("reason") == "contaminated")
        assert leaks["meta"].str.contains("quiz-").all()  # the report names the eval items hit
