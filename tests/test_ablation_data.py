"""The ablation recipes' data: the noisy input rebuilds byte for byte, and curation drops every planted eval leak
(the implicit eval decontamination) while the noise-free control loses none to it."""

from __future__ import annotations

import importlib.util
import json
import types
from pathlib import Path

import polars as pl

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def _builder() -> types.ModuleType:  # recipes/data is not a package
    spec = importlib.util.spec_from_file_location("make_ablation_noise", RECIPES / "data" / "make_ablation_noise.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_noisy_input_rebuilds_identically_with_its_leaks(tmp_path: Path) -> None:
    rows = _builder().build(tmp_path / "noisy.jsonl")
    assert (tmp_path / "noisy.jsonl").read_bytes() == (RECIPES / "data" / "ablation_noisy.jsonl").read_bytes()
    counts = pl.DataFrame({"defect": [r["defect"] for r in rows]})["defect"].value_counts()
    assert dict(zip(counts["defect"], counts["count"], strict=True)) == {
        "clean": 700, "duplicate_flood": 120, "truncated": 60, "refusal": 40, "off_topic": 40, "eval_leak": 64}
    evals = [json.loads(line) for line in (RECIPES / "data" / "ablation_eval.jsonl").read_text().splitlines()]
    verbatim = {r["output"] for r in rows if r["id"].endswith("-0") and r["defect"] == "eval_leak"}
    assert verbatim == {e["output"] for e in evals}


def test_curation_drops_every_leak_and_the_control_has_none(tmp_path: Path) -> None:
    from gristmill.recipe import load_recipe
    from gristmill.runner import Runner

    for name, leaks in (("ablation", 64), ("ablation_clean", 0)):
        result = Runner(load_recipe(RECIPES / f"{name}.yaml"), tmp_path / name).run(train=False)
        steps = {s["step"]: s for s in result.manifest["steps"]}
        assert steps["eval_decontaminate"]["dropped_by_reason"].get("eval_contamination", 0) == leaks
        assert not result.frame["id"].str.starts_with("leak-").any()
