"""Model identity: a content hash of a model directory's config, tokenizer and weight files.

Caches and fingerprints that depend on a model are keyed on what the model *is*, not where it lives: two models in
folders of the same name get different keys, and new weights written at the same path change the key. Hashing
weights costs a read of every byte (~1 s per GB), so each file's digest is remembered by (absolute path, size,
mtime_ns): in-process, and in a small sqlite memo next to the caches when ``memo`` is given. A file rewritten in
place changes its mtime (and usually its size), so a remembered digest is never served for different bytes.

Example: a directory with ``config.json`` holding ``{}`` and nothing else has identity
``sha256("config.json\\0" + sha256(b"{}") + "\\n")`` (see ``tests/test_identity.py`` for the known answer).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

# What shapes a model's outputs: configs, tokenizer files and weights. Readmes, licences and lock files do not.
_SUFFIXES = (".json", ".safetensors", ".bin", ".pt", ".pth", ".gguf", ".model", ".txt", ".tiktoken", ".jinja",
             ".msgpack", ".h5", ".onnx")
_SKIP_DIRS = {".git", ".cache", "__pycache__", "runs", "checkpoints"}
_memo: dict[tuple[str, int, int], str] = {}


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        out.extend(Path(dirpath) / f for f in filenames if f.endswith(_SUFFIXES) and not f.startswith("."))
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


class _Memo:
    """The on-disk (path, size, mtime_ns) -> sha256 memo (a best-effort cache: any sqlite error means no memo)."""

    def __init__(self, path: Path | None) -> None:
        self.db: sqlite3.Connection | None = None
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(path), timeout=30)
            self.db.execute("CREATE TABLE IF NOT EXISTS files (path TEXT, size INTEGER, mtime INTEGER, sha TEXT, "
                            "PRIMARY KEY (path, size, mtime))")
        except (sqlite3.Error, OSError):
            self.db = None

    def get(self, key: tuple[str, int, int]) -> str | None:
        if self.db is None:
            return None
        try:
            row = self.db.execute("SELECT sha FROM files WHERE path=? AND size=? AND mtime=?", key).fetchone()
        except sqlite3.Error:
            return None
        return row[0] if row else None

    def put(self, key: tuple[str, int, int], sha: str) -> None:
        if self.db is None:
            return
        try:
            with self.db:
                self.db.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", (*key, sha))
        except sqlite3.Error:
            pass

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


def file_identity(path: Path, memo: _Memo | None = None) -> str:
    """sha256 of one file's bytes, remembered by (absolute path, size, mtime_ns)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _memo:
        return _memo[key]
    sha = memo.get(key) if memo else None
    if sha is None:
        sha = _file_digest(path)
        if memo:
            memo.put(key, sha)
    _memo[key] = sha
    return sha


def model_identity(path: str | Path, memo: Path | None = None) -> str:
    """A hex sha256 naming the model in ``path`` (a directory, or a single weights file) by content.

    Every config/tokenizer/weight file under the directory contributes ``relative name \\0 sha256(bytes)``; so a
    renamed folder keeps its identity and any changed byte of a weight changes it. ``memo``: a sqlite file that
    remembers file digests across processes (e.g. ``<cache>/model_identity.sqlite``).
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"model path {root} does not exist")
    store = _Memo(memo)
    try:
        files = [root] if root.is_file() else _files(root)
        h = hashlib.sha256()
        for f in files:
            name = f.name if root.is_file() else f.relative_to(root).as_posix()
            h.update(f"{name}\0{file_identity(f, store)}\n".encode())
        return h.hexdigest()
    finally:
        store.close()


def identity_or_name(name_or_path: str, memo: Path | None = None) -> str:
    """``model_identity`` for an existing local path, else the string itself (a remote model id)."""
    path = Path(name_or_path).expanduser()
    return model_identity(path, memo) if path.exists() else name_or_path
