"""Sentence embeddings with an on-disk cache keyed by (model, text hash).

Embedding is the CPU bottleneck of curation, so every vector is computed once per (model, text) and reused by
later steps and re-runs. Vectors are L2-normalized float32, so a dot product is the cosine similarity.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

_HINT = "pip install 'gristmill[models]'  (sentence-transformers, torch)"


def _text_key(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


class EmbeddingCache:
    """A sqlite table of (model_key, text_key) -> float32 vector bytes."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path))
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS emb (model TEXT, key TEXT, vec BLOB, PRIMARY KEY (model, key))")

    def get(self, model: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), 500):
            chunk = list(keys[start : start + 500])
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(f"SELECT key, vec FROM emb WHERE model=? AND key IN ({marks})", [model, *chunk])
            found.update((k, np.frombuffer(v, dtype=np.float32)) for k, v in rows)
        return found

    def put(self, model: str, items: dict[str, np.ndarray]) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO emb VALUES (?, ?, ?)",
            [(model, k, v.astype(np.float32).tobytes()) for k, v in items.items()],
        )
        self.db.commit()


class Embedder:
    """A sentence-transformers model plus the cache. ``model_path`` is a local model directory."""

    def __init__(
        self,
        model_path: str,
        *,
        cache_path: Path | None = None,
        batch_size: int = 64,
        max_seq_length: int | None = 256,
    ) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(f"embeddings need sentence-transformers: {_HINT}") from err
        self.model = SentenceTransformer(model_path, device="cpu")
        if max_seq_length:
            self.model.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.model_key = f"{Path(model_path).name}|seq{self.model.max_seq_length}"
        self.cache = EmbeddingCache(cache_path) if cache_path else None
        self.computed = 0
        self.cached = 0

    def encode(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        keys = [_text_key(t) for t in texts]
        have = self.cache.get(self.model_key, keys) if self.cache else {}
        todo = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in have}.items())
        self.cached += len(texts) - len(todo)
        if progress:
            progress(len(texts) - len(todo))
        for start in range(0, len(todo), self.batch_size * 4):
            chunk = todo[start : start + self.batch_size * 4]
            vecs = self.model.encode(
                [t for _, t in chunk],
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            ).astype(np.float32)
            new = {k: v for (k, _), v in zip(chunk, vecs, strict=True)}
            have.update(new)
            if self.cache:
                self.cache.put(self.model_key, new)
            self.computed += len(chunk)
            if progress:
                progress(len(chunk))
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        dim = get_dim() or 0
        if not texts:
            return np.zeros((0, dim), dtype=np.float32)
        return np.stack([have[k] for k in keys])
