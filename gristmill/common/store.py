"""The sqlite file every on-disk cache uses (embeddings, synthesis requests): WAL so a reader never blocks the
writer, a busy timeout so two processes can share one file, and look-ups of many keys in chunks that stay under
sqlite's bound-parameter limit."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    """Where gristmill's on-disk caches live: ``$GRISTMILL_CACHE``, else the platform's user cache dir."""
    env = os.environ.get("GRISTMILL_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("gristmill"))


IN_CHUNK = 500
"""Keys per ``IN (...)`` query; sqlite's default limit on bound parameters is 999 on older builds."""


def open_store(path: Path, *schema: str) -> sqlite3.Connection:
    """Open (creating folders and tables) the sqlite file at ``path``; ``schema`` holds ``CREATE ... IF NOT
    EXISTS`` statements."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    for statement in schema:
        db.execute(statement)
    db.commit()
    return db


def select_in(db: sqlite3.Connection, query: str, keys: Sequence[str], params: Sequence[Any] = ()
              ) -> Iterator[tuple[Any, ...]]:
    """Rows of ``query`` for all ``keys``; ``query`` holds ``{marks}`` where the ``IN`` list goes and takes
    ``params`` before the keys.

    >>> db = open_store(Path(":memory:"), "CREATE TABLE t (k TEXT, v INT)")
    >>> _ = db.executemany("INSERT INTO t VALUES (?, ?)", [("a", 1), ("b", 2)])
    >>> sorted(select_in(db, "SELECT k, v FROM t WHERE k IN ({marks})", ["a", "b", "c"]))
    [('a', 1), ('b', 2)]
    """
    for start in range(0, len(keys), IN_CHUNK):
        chunk = list(keys[start : start + IN_CHUNK])
        yield from db.execute(query.format(marks=",".join("?" * len(chunk))), [*params, *chunk])
