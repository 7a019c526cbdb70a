from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
_ORIGINAL_ENV = os.environ.get("GRISTMILL_CACHE")
_TEST_CACHE: Path | None = None


def _user_cache() -> Path:
    env = os.environ.get("GRISTMILL_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("gristmill"))


def pytest_configure(config: pytest.Config) -> None:
    """Every test session gets an empty cache dir (``GRISTMILL_CACHE``, inherited by the subprocesses tests start)
    with only the converted models linked in: no embedding, request or identity cache of an earlier run or of the
    user can make a test pass, and no test writes into the user's caches."""
    global _TEST_CACHE
    _TEST_CACHE = Path(tempfile.mkdtemp(prefix="gristmill-test-cache-"))
    models = _user_cache() / "models"
    if models.is_dir():
        (_TEST_CACHE / "models").mkdir()
        for model in models.iterdir():
            if not model.name.startswith("."):
                (_TEST_CACHE / "models" / model.name).symlink_to(model.resolve(), target_is_directory=True)
    os.environ["GRISTMILL_CACHE"] = str(_TEST_CACHE)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _TEST_CACHE is not None:
        shutil.rmtree(_TEST_CACHE, ignore_errors=True)
    if _ORIGINAL_ENV is None:
        os.environ.pop("GRISTMILL_CACHE", None)
    else:
        os.environ["GRISTMILL_CACHE"] = _ORIGINAL_ENV


@pytest.fixture(scope="session")
def test_cache() -> Path:
    """The session's isolated cache dir (see ``pytest_configure``)."""
    assert _TEST_CACHE is not None
    return _TEST_CACHE


def make_frame(texts: list[str], ids: list[str] | None = None, **extra: list[Any]) -> pl.DataFrame:
    """A data-contract frame over ``texts``."""
    ids = ids or [f"r{i}" for i in range(len(texts))]
    return pl.DataFrame(
        {
            "id": ids,
            "text": texts,
            "source": ["test"] * len(texts),
            "meta": [{"source_line": i + 1} for i in range(len(texts))],
            **extra,
        }
    )


def build_sample(out: Path) -> Path:
    """The quickstart sample data, regenerated into ``out`` by the project's generator."""
    sys.path.insert(0, str(RECIPES / "data"))
    try:
        import make_sample
    finally:
        sys.path.pop(0)
    make_sample.build(out)
    return out


@pytest.fixture
def sample_dir(tmp_path: Path) -> Path:
    """The quickstart sample data in tmp_path."""
    return build_sample(tmp_path / "data")
