"""Step checkpoints: ``<run>/steps/NN-name/{kept,dropped}.parquet + stats.json``, written atomically.

A checkpoint is complete only when its directory exists under the final name; it is assembled in a temporary
sibling and renamed into place, so a killed run never leaves a half-written step that a resume would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import polars as pl


def fingerprint(*parts: Any) -> str:
    """sha256 over the canonical JSON of ``parts``."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, default=str)
    os.replace(tmp, path)


def replace_dir(tmp: Path, target: Path) -> None:
    """Move a finished ``tmp`` directory to ``target``, replacing any older one."""
    old = None
    if target.exists():
        old = target.with_name(f".old-{target.name}-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_step(target: Path, kept: pl.DataFrame, dropped: pl.DataFrame, stats: dict[str, Any]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{target.name}-"))
    try:
        kept.write_parquet(tmp / "kept.parquet")
        dropped.write_parquet(tmp / "dropped.parquet")
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2, default=str))
        replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_step(target: Path, expected_fingerprint: str) -> tuple[pl.DataFrame, dict[str, Any]] | None:
    """The kept rows and stats of a complete checkpoint with this fingerprint, else ``None``."""
    stats_path = target / "stats.json"
    if not stats_path.exists():
        return None
    stats = json.loads(stats_path.read_text())
    if stats.get("fingerprint") != expected_fingerprint:
        return None
    return pl.read_parquet(target / "kept.parquet"), stats
