"""Security properties checked on the source and on a run: no code from recipes or data (no eval/exec/import by
string, YAML only through the safe loader, no pickle of anything but the trainer's own checkpoint), remote model
code never trusted, outputs confined to the run and cache directories. The planted-API-key check over every output
file is in tests/reliability/test_kill_resume.py (it needs the HTTP engine)."""

from __future__ import annotations

import ast
import json
import logging
from pathlib import Path

import pytest
import yaml

from gristmill.recipe import load_recipe
from gristmill.runner import Runner
from tests.conftest import ROOT

PACKAGES = [ROOT / "gristmill", ROOT / "curation", ROOT / "synth", ROOT / "audit", ROOT / "train"]
# The trainer pickles its own RNG state and optimizer into <run>/.train-checkpoints and reads them back on resume:
# files it wrote itself, never user input.
PICKLE_ALLOWED = {"train/checkpointing.py"}


def _sources() -> list[Path]:
    return [p for pkg in PACKAGES for p in pkg.rglob("*.py")]


def _findings(path: Path, root: Path = ROOT) -> list[str]:
    out = []
    rel = path.relative_to(root).as_posix()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        where = f"{rel}:{node.lineno}"
        if isinstance(func, ast.Name) and func.id in {"eval", "exec", "__import__", "compile"}:
            out.append(f"{where}: {func.id}()")
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            owner, name = func.value.id, func.attr
            if owner == "importlib" and name == "import_module":
                out.append(f"{where}: importlib.import_module")
            if owner in {"pickle", "dill", "cloudpickle"} and name in {"load", "loads"} and rel not in PICKLE_ALLOWED:
                out.append(f"{where}: {owner}.{name}")
            if owner == "yaml" and name in {"load", "load_all", "unsafe_load", "full_load"}:
                out.append(f"{where}: yaml.{name} (use safe_load)")
            if owner == "torch" and name == "load" and rel not in PICKLE_ALLOWED and not any(
                    k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                    for k in node.keywords):
                out.append(f"{where}: torch.load without weights_only=True")
        for kw in node.keywords:
            if kw.arg == "trust_remote_code" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False
                                                      or _is_the_recipe_setting(kw.value)):
                out.append(f"{where}: trust_remote_code={ast.unparse(kw.value)}")
    return out


def _is_the_recipe_setting(value: ast.expr) -> bool:
    """The recipe's ``trust_remote_code`` passed down under its own name (an argument or ``x.trust_remote_code``),
    never a constant True or another expression."""
    return (isinstance(value, ast.Name) and value.id == "trust_remote_code") or (
        isinstance(value, ast.Attribute) and value.attr == "trust_remote_code")


# Where each model role loads its model: every load there must pass the recipe's setting explicitly.
LOADERS = {"curation/embed.py": {"SentenceTransformer"}, "synth/engine.py": {"LLM"},
           "train/model.py": {"from_pretrained"}}


def _loads_without_the_setting(path: Path, names: set[str]) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        has_setting = any(k.arg == "trust_remote_code" or (k.arg is None and "kwargs" in ast.unparse(k.value))
                          for k in node.keywords)
        # An adapter (PeftModel.from_pretrained) is a config and weights, no code: the setting does not apply.
        adapter = ast.unparse(node.func).startswith("PeftModel.")
        if name in names and not has_setting and not adapter:
            out.append(f"{path.name}:{node.lineno}: {ast.unparse(node.func)}")
    return out


def test_no_code_runs_from_recipes_or_data() -> None:
    findings = [f for path in _sources() for f in _findings(path)]
    assert findings == []


def test_the_scanner_sees_what_it_forbids(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import yaml, pickle\nyaml.load(s)\npickle.loads(b)\neval('1')\n"
                   "AutoModel.from_pretrained(p, trust_remote_code=True)\nAutoModel.from_pretrained(p, "
                   "trust_remote_code=params.trust)\n")
    found = [f.split(": ", 1)[1] for f in _findings(bad, tmp_path)]
    assert found == ["yaml.load (use safe_load)", "pickle.loads", "eval()", "trust_remote_code=True",
                     "trust_remote_code=params.trust"]
    bad.write_text("SentenceTransformer(p)\nSentenceTransformer(p, trust_remote_code=trust_remote_code)\n")
    assert _loads_without_the_setting(bad, {"SentenceTransformer"}) == ["bad.py:1: SentenceTransformer"]


def test_every_model_role_passes_the_recipe_setting_explicitly() -> None:
    """The embedding model, the synthesis engine and the trainer's base model and tokenizer name
    ``trust_remote_code`` at each load (default False), so the recipe key is what decides."""
    missing = [f for rel, names in LOADERS.items() for f in _loads_without_the_setting(ROOT / rel, names)]
    assert missing == []
    for rel in ("curation/embed.py", "synth/engine.py", "synth/replicas.py", "train/model.py", "gristmill/steps.py"):
        assert "trust_remote_code: bool = True" not in (ROOT / rel).read_text()


def _confined_recipe(tmp_path: Path, **extra: object) -> Path:
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Say the number {i} in words", "input": "",
                                        "output": f"The number is {i}."}) + "\n" for i in range(20)))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"name": "confined", "inputs": [{"path": "in.jsonl"}],
                                      "steps": [{"normalize": {}}, {"dedup_exact": {}}],
                                      "output": {"dir": str(tmp_path / "run"), "formats": ["parquet", "jsonl"]},
                                      **extra}))
    return recipe


def test_trust_remote_code_is_off_unless_the_recipe_sets_it(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    from gristmill.steps import Context, _engine

    default = load_recipe(_confined_recipe(tmp_path))
    assert default.trust_remote_code is False
    engine = _engine("synthesize", Context(tmp_path), engine="vllm", model="smollm2-135m-instruct",
                     base_url=None, api_key_env=None)
    assert engine.trust_remote_code is False  # built, not started: the value a worker's LLM(...) gets
    result = Runner(default).run()
    assert "trust_remote_code" not in result.manifest and "trust_remote_code" not in caplog.text

    trusting = load_recipe(_confined_recipe(tmp_path, trust_remote_code=True))
    assert trusting.trust_remote_code is True
    engine = _engine("synthesize", Context(tmp_path, trust_remote_code=True), engine="vllm",
                     model="smollm2-135m-instruct", base_url=None, api_key_env=None)
    assert engine.trust_remote_code is True
    with caplog.at_level(logging.WARNING, logger="gristmill"):
        result = Runner(trusting, tmp_path / "run2").run()
    assert result.manifest["trust_remote_code"] is True
    assert json.loads((tmp_path / "run2" / "manifest.json").read_text())["trust_remote_code"] is True
    assert "trust_remote_code: true" in caplog.text


def test_outputs_stay_in_the_run_directory(tmp_path: Path) -> None:
    recipe = _confined_recipe(tmp_path)
    before = {p for p in tmp_path.rglob("*")}
    Runner(load_recipe(recipe)).run()
    new = {p for p in tmp_path.rglob("*")} - before
    assert new and all(p == tmp_path / "run" or (tmp_path / "run") in p.parents for p in new)
