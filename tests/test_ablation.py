"""``gristmill ablate``: the variants and the base model on the same held-out rows, none of which any variant
trains on; equal steps (or planned equal tokens); a rerun resumes every adapter; curated+synthetic is not trained
when it is the curated set again; generation defect shares and eval-set leak counts per variant."""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.test_train_support import tiny_model_dir

pytest.importorskip("torch")


def _eval_sets(tmp_path: Path, sample_dir: Path) -> list[dict]:
    """An alpaca eval set of three sample rows (so the raw rows leak it) and a two-question multiple-choice csv."""
    leaked = [json.loads(line) for line in (sample_dir / "sample.jsonl").read_text().splitlines()[:3]]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps({k: r[k] for k in ("instruction", "input", "output")})
                                               + "\n" for r in leaked))
    (tmp_path / "mc.csv").write_text('question,A,B,answerKey\n"Which helps a job search?",practice,sleep,A\n'
                                     '"Which room do you pack first?",any one room,none,A\n')
    return [{"name": "qa", "path": str(tmp_path / "qa.jsonl"), "max_new_tokens": 4},
            {"name": "mc", "path": str(tmp_path / "mc.csv"), "mapping": "multiple_choice"}]


def _recipe(tmp_path: Path, sample_dir: Path, model: str, eval_sets: list[dict] | None = None) -> Path:
    recipe = {
        "name": "ablate", "inputs": [{"path": str(sample_dir / "sample.jsonl"), "mapping": "alpaca",
                                      "on_error": "skip"}],
        "steps": [{"normalize": {}}, {"filter": {}}, {"dedup_exact": {}}],
        "output": {"dir": str(tmp_path / "run"), "formats": ["parquet"]},
        "train": {"base_model": model, "max_steps": 2, "batch_size": 4, "max_seq_length": 256,
                  "min_eval_rows": 6, "max_eval_rows": 6, "eval_generate_rows": 2, "eval_max_new_tokens": 4,
                  "save_steps": None, "report_to": []},
        **({"eval": eval_sets} if eval_sets else {}),
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


TRAINED = ("raw", "curated")  # no synthesis step: curated_synthetic is the curated set again


def _check(tmp_path: Path, summary: dict) -> None:
    from gristmill.ablation import VARIANTS, exclude_eval
    from gristmill.evaluation import DEFECT_METRICS

    run = tmp_path / "run"
    assert json.loads((run / "ablation.json").read_text()) == summary
    assert summary["eval"]["source"] == "held_out_from_curated" and summary["eval"]["rows"] == 6
    # The recipe has no synthesis step: that variant is recorded as the curated one, not trained again.
    assert summary["same_as"] == {"curated_synthetic": "curated"}
    assert not (run / "ablation" / "curated_synthetic").exists()
    assert summary["steps"]["curated_synthetic"] is None and summary["adapters"]["curated_synthetic"] is None
    for metric in ("loss", "perplexity"):
        row = summary["metrics"][metric]
        assert set(row) == {"base", *VARIANTS} and row["curated_synthetic"] is None
        assert all(math.isfinite(row[k]) for k in ("base", *TRAINED))
    # Generation defect shares of the held-out answers (2 generations per side): fractions of 2.
    for metric in DEFECT_METRICS:
        row = summary["metrics"][metric]
        assert all(row[k] in (0.0, 0.5, 1.0) for k in ("base", *TRAINED)) and row["curated_synthetic"] is None
    eval_frame = pl.read_parquet(run / "ablation" / "eval.parquet")
    curated = pl.read_parquet(run / "dataset" / "data.parquet")
    assert set(eval_frame["id"]) <= set(curated["id"])  # drawn from the curated rows
    raw = pl.read_parquet(run / "steps" / "00-ingest" / "kept.parquet")
    for name in TRAINED:
        ev = json.loads((run / "ablation" / name / "eval.json").read_text())
        assert ev["source"] == "eval_file" and ev["rows"] == 6  # every variant scores the same file
        assert ev["base"]["loss"] == pytest.approx(summary["metrics"]["loss"]["base"], rel=1e-4)
    # The raw rows carry re-cased copies of curated rows (the sample plants them): the exclusion must catch the
    # copies of eval rows too, not only their ids; what is left shares no 13-gram with the eval rows.
    kept, left_out = exclude_eval(raw, eval_frame)
    assert left_out == summary["data"]["raw"]["excluded_eval"] >= 6
    assert not set(kept["id"]) & set(eval_frame["id"])
    assert exclude_eval(kept, eval_frame)[1] == 0
    assert summary["train_rows"]["raw"] <= kept.height
    assert summary["data"]["curated_synthetic"]["rows"] == summary["data"]["curated"]["rows"]  # no synth step
    assert summary["data"]["raw"]["rows"] > summary["data"]["curated"]["rows"]
    assert summary["data"]["curated"]["dropped_share_by_reason"]["exact_duplicate"] > 0


def test_ablation_trains_the_variants_on_one_eval_split_and_resumes(tmp_path: Path, sample_dir: Path) -> None:
    from gristmill.ablation import VARIANTS, ablate
    from gristmill.common.errors import InputError
    from gristmill.evaluation import DEFECT_METRICS
    from gristmill.recipe import load_recipe
    from gristmill.report_outcomes import ablation_rows

    path = _recipe(tmp_path, sample_dir, str(tiny_model_dir(tmp_path)), _eval_sets(tmp_path, sample_dir))
    with pytest.raises(InputError, match="not one of steps, tokens"):
        ablate(load_recipe(path), mode="words")  # type: ignore[arg-type]
    summary = ablate(load_recipe(path))
    assert summary["steps"] == {"raw": 2, "curated": 2, "curated_synthetic": None}
    assert summary["resumed"] == {"raw": False, "curated": False, "curated_synthetic": None}
    _check(tmp_path, summary)
    # The eval section: every set's metrics for the base model and each trained variant, scored once for all.
    assert {m: set(row) for m, row in summary["eval_sets"]["mc"].items()} == {
        "acc": {"base", *VARIANTS}, "acc_norm": {"base", *VARIANTS}}
    assert summary["eval_sets"]["mc"]["acc"]["curated_synthetic"] is None
    assert set(summary["eval_sets"]["qa"]) == {"loss", "perplexity", "rougeL", "exact_match", *DEFECT_METRICS}
    assert all(math.isfinite(summary["eval_sets"]["qa"]["loss"][k]) for k in ("base", *TRAINED))
    # qa.jsonl answers are cut at 4 new tokens: every answer ran into the budget, none "stopped mid-sentence".
    assert summary["eval_sets"]["qa"]["at_token_limit"]["base"] == 1.0
    assert summary["eval_sets"]["qa"]["truncated"]["base"] == 0.0
    scored = json.loads((tmp_path / "run" / "ablation" / "eval" / "summary.json").read_text())
    assert scored["columns"] == ["set", "metric", "base", *TRAINED]
    qa = json.loads((tmp_path / "run" / "ablation" / "eval" / "qa.json").read_text())
    assert all(set(e["defects"]) == {"base", *TRAINED} for e in qa["examples"])
    # The leaked eval rows: out of the curated data (implicit step), still in the raw rows, and counted.
    assert summary["data"]["curated"]["dropped_share_by_reason"]["eval_contamination"] > 0
    leaks = {n: summary["data"][n]["eval_leaks"] for n in VARIANTS}
    assert leaks["raw"] >= 3 and leaks["curated"] == leaks["curated_synthetic"] == 0
    rows = {r[0]: r for r in ablation_rows(summary)}
    assert rows["steps"][2:] == ["2", "2", "same as curated"]
    assert rows["eval-set copies in training rows (leaks)"][2:] == [str(leaks["raw"]), "0", "0"]
    again = ablate(load_recipe(path))
    assert again["resumed"] == {"raw": True, "curated": True, "curated_synthetic": None}
    assert again["metrics"] == summary["metrics"]  # nothing retrained

    tokens = ablate(load_recipe(path), mode="tokens")  # planned steps follow each variant's mean row length
    assert tokens["mode"] == "tokens" and tokens["token_budget"] > 0
    per_step = 4 * 1
    for name in TRAINED:
        mean = tokens["data"][name]["tokens"] / tokens["data"][name]["examples"]
        assert tokens["steps"][name] == max(1, round(tokens["token_budget"] / (per_step * mean)))


def test_cli_ablate_prints_the_table(tmp_path: Path, sample_dir: Path, capsys: pytest.CaptureFixture) -> None:
    from gristmill.cli import main

    path = _recipe(tmp_path, sample_dir, str(tiny_model_dir(tmp_path)))
    assert main(["-q", "ablate", str(path), "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "ablation.json").is_file()
    out = capsys.readouterr()
    printed = out.out + out.err
    assert "same as curated" in printed and "refusal" in printed and "defective" in printed


@pytest.mark.slow
def test_ablation_on_the_real_small_model(tmp_path: Path, sample_dir: Path) -> None:
    from gristmill.ablation import ablate
    from gristmill.models import status
    from gristmill.recipe import load_recipe

    if not any(r["name"] == "smollm2-135m-instruct" and r["state"] == "ready" for r in status()):
        pytest.skip("smollm2-135m-instruct is not converted (gristmill models pull)")
    summary = ablate(load_recipe(_recipe(tmp_path, sample_dir, "smollm2-135m-instruct")))
    assert summary["steps"] == {"raw": 2, "curated": 2, "curated_synthetic": None}
    _check(tmp_path, summary)


def test_curated_synthetic_is_trained_only_when_synthesis_added_rows() -> None:
    from gristmill.ablation import same_as

    curated = pl.DataFrame({"id": ["a", "b"], "text": ["x", "y"], "source": ["in.jsonl", "in.jsonl"]})
    with_synth = pl.concat([curated, pl.DataFrame({"id": ["s1"], "text": ["z"], "source": ["synth:self_instruct"]})])
    raw = pl.concat([curated, curated.with_columns(id=pl.lit("c"))])
    assert same_as({"raw": raw, "curated": curated, "curated_synthetic": curated}) == {"curated_synthetic": "curated"}
    assert same_as({"raw": raw, "curated": curated, "curated_synthetic": with_synth}) == {}
