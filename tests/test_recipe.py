from __future__ import annotations

from pathlib import Path

import pytest

from gristmill.cli import main
from gristmill.recipe import RecipeError, load_recipe, parse_recipe
from tests.conftest import RECIPES

GOOD = """
name: t
inputs:
  - path: data.jsonl
steps:
  - normalize: {}
  - dedup_minhash: {threshold: 0.8}
output: {dir: runs/t}
"""

BAD = """
name: t
inputs:
  - path: data.jsonl
    mapping: alpacca
steps:
  - normalize: {}
  - filter: {min_words: 10, max_words: 5}
  - dedup_minhash: {threshold: 1.5, ngrams: 5}
  - dedupe: {}
output: {dir: runs/t}
colour: blue
"""


def test_shipped_recipes_validate() -> None:
    files = sorted(RECIPES.glob("*.yaml"))
    assert files, "recipes/ has no recipes"
    for f in files:
        recipe = load_recipe(f)
        assert recipe.steps


def test_good_recipe_parses_typed_steps(tmp_path: Path) -> None:
    recipe = parse_recipe(GOOD, tmp_path / "r.yaml")
    assert [s.name for s in recipe.steps] == ["normalize", "dedup_minhash"]
    assert recipe.steps[1].params.threshold == 0.8
    assert recipe.resolve("data.jsonl") == tmp_path / "data.jsonl"


def test_every_error_reported_at_once_with_paths_and_lines(tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as info:
        parse_recipe(BAD, tmp_path / "bad.yaml")
    errors = info.value.errors
    text = "\n".join(errors)
    assert len(errors) == 6, text
    assert "bad.yaml:5: inputs[0].mapping" in text
    assert "steps[1].filter: Value error, min_words (10) must be <= max_words (5)" in text
    assert "bad.yaml:9: steps[2].dedup_minhash.threshold: Input should be less than or equal to 1 (got 1.5)" in text
    assert "steps[2].dedup_minhash.ngrams: unknown key" in text and "did you mean 'ngram'" in text
    assert "bad.yaml:10: steps[3].dedupe: unknown step" in text and "did you mean" in text
    assert "colour: unknown key" in text


def test_missing_required_field_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as info:
        parse_recipe("name: t\ninputs: []\n", tmp_path / "r.yaml")
    text = "\n".join(info.value.errors)
    assert "inputs: List should have at least 1 item" in text
    assert "output: Field required" in text


def test_yaml_python_tags_are_refused(tmp_path: Path) -> None:
    evil = "name: !!python/object/apply:os.system ['echo hacked']\n"
    with pytest.raises(RecipeError) as info:
        parse_recipe(evil, tmp_path / "evil.yaml")
    assert "not valid YAML" in info.value.errors[0]


def test_validate_cli_exit_codes(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(GOOD)
    bad.write_text(BAD)
    assert main(["validate", str(good)]) == 2  # validate checks the files too: data.jsonl is not there yet
    assert main(["validate", "--shape-only", str(good)]) == 0
    (tmp_path / "data.jsonl").write_text('{"instruction": "Say hi.", "input": "", "output": "Hi there."}\n')
    assert main(["validate", str(good)]) == 0
    assert main(["validate", str(good), str(bad)]) == 2


def test_synthesize_params_follow_the_method(tmp_path: Path) -> None:
    text = GOOD.replace("  - normalize: {}", "  - synthesize: {method: telepathy, n: 3}\n  - synthesize: {seeds: s.jsonl, n: 0}")
    with pytest.raises(RecipeError) as info:
        parse_recipe(text, tmp_path / "r.yaml")
    errors = "\n".join(info.value.errors)
    assert "steps[0].synthesize.method: unknown method 'telepathy'; known methods: self_instruct" in errors
    assert "steps[1].synthesize.n: Input should be greater than or equal to 1" in errors


def test_validate_prints_errors_as_text(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ninputs: []\nsteps: [{nope: {}}]\noutput: {dir: out}\n")
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("invalid ") and "[red]" not in err and "[/]" not in err
    assert f"{bad}:3: steps[0].nope: unknown step" in err  # one unwrapped line per error
