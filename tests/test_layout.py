"""The package layout: stage folders install under the gristmill namespace, and stage boundaries are enforced."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

STAGES = ("curation", "synth", "audit", "train")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _modules() -> list[str]:
    """Every module of the project, by its installed name (gristmill.curation.minhash, ...)."""
    names = [f"gristmill.{p.stem}" for p in (ROOT / "gristmill").glob("*.py") if p.stem != "__init__"]
    names += [f"gristmill.common.{p.stem}" for p in (ROOT / "gristmill" / "common").glob("*.py")]
    for stage in STAGES:
        for path in (ROOT / stage).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            names.append(".".join(("gristmill", *(parts[:-1] if parts[-1] == "__init__" else parts))))
    return sorted(set(names))


def _decoys(where: Path) -> None:
    """A user's project folder whose own train.py, audit/ and curation.py would shadow top-level packages."""
    for name in ("train.py", "curation.py", "synth.py"):
        (where / name).write_text("raise ImportError('decoy imported')\n")
    (where / "audit").mkdir()
    (where / "audit" / "__init__.py").write_text("raise ImportError('decoy imported')\n")


def _import_all(cwd: Path, extra_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    script = ("import importlib, sys\nsys.path.insert(0, '')\n"  # the user's folder first, as `python script.py` has
              f"for name in {_modules()!r}:\n    importlib.import_module(name)\n"
              "print('ALL OK', flush=True)\n"  # no gristmill module reached a decoy
              "import train\n")  # the user's own module still wins for the top-level name
    env = os.environ | {"PYTHONPATH": str(extra_path)} if extra_path else dict(os.environ)
    return subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A regular (non-editable) install of the project."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                    str(ROOT)], check=True, capture_output=True, timeout=600)
    return target


def test_every_module_imports_through_the_namespace_beside_decoys(tmp_path: Path, installed: Path) -> None:
    _decoys(tmp_path)
    for result in (_import_all(tmp_path), _import_all(tmp_path, installed)):  # editable, then a regular install
        assert "ALL OK" in result.stdout, result.stderr[-3000:]
        assert result.returncode == 1 and "ImportError: decoy imported" in result.stderr
    assert (installed / "gristmill" / "curation" / "minhash.py").is_file()
    assert (installed / "gristmill" / "audit" / "lexicons" / "en.json").is_file()
    assert not (installed / "curation").exists() and not (installed / "train").exists()


def _lint(site: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--config", str(ROOT / ".importlinter")], cwd=cwd,
                          env=os.environ | {"PYTHONPATH": str(site)}, capture_output=True, text=True, timeout=300)


def test_import_contract_fails_when_a_stage_imports_the_orchestrator(tmp_path: Path, installed: Path) -> None:
    clean = _lint(installed, tmp_path)
    assert clean.returncode == 0, clean.stdout[-3000:]
    assert "3 kept, 0 broken" in clean.stdout
    broken = tmp_path / "site"
    shutil.copytree(installed, broken)
    with (broken / "gristmill" / "curation" / "filters.py").open("a") as fh:
        fh.write("\nfrom gristmill import runner  # noqa\n")
    with (broken / "gristmill" / "synth" / "rouge.py").open("a") as fh:
        fh.write("\nfrom gristmill.curation import shingles  # noqa\n")
    result = _lint(broken, tmp_path)
    assert result.returncode == 1
    assert "Stages and the shared leaf never import the orchestrator BROKEN" in result.stdout
    assert "Stage packages never import each other BROKEN" in result.stdout
    assert "gristmill.curation.filters -> gristmill.runner" in result.stdout


def test_every_orchestrator_module_is_forbidden_to_stages() -> None:
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    forbidden = set(config["importlinter:contract:stages-below-orchestrator"]["forbidden_modules"].split())
    # Orchestrator modules and packages: everything under gristmill/ but the shared leaf (common) and the stage
    # folders setuptools maps in (curation, synth, audit, train live at the repository root).
    orchestrator = {f"gristmill.{p.stem}" for p in (ROOT / "gristmill").glob("*.py") if p.stem != "__init__"}
    orchestrator |= {f"gristmill.{p.parent.name}" for p in (ROOT / "gristmill").glob("*/__init__.py")
                     if p.parent.name != "common"}
    assert orchestrator == forbidden, "list new orchestrator modules in .importlinter's forbidden_modules"
