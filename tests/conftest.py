from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


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


@pytest.fixture
def sample_dir(tmp_path: Path) -> Path:
    """The quickstart sample data, regenerated into tmp_path by the project's generator."""
    sys.path.insert(0, str(RECIPES / "data"))
    try:
        import make_sample
    finally:
        sys.path.pop(0)
    out = tmp_path / "data"
    make_sample.build(out)
    return out
