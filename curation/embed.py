"""Sentence embeddings with an on-disk cache keyed by (model, text hash).

Embedding is the CPU bottleneck of curation, so every vector is computed once per (model, text) and reused by
later steps and re-runs. Vectors are L2-normalized float32, so a dot product is the cosine similarity.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from gristmill.common.identity import model_identity
from gristmill.common.store import open_store, select_in

_HINT = "pip install 'gristmill[models]'  (sentence-transformers, torch)"


def _text_key(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


class EmbeddingCache:
    """A sqlite table of (model_key, text_key) -> float32 vector bytes."""

    def __init__(self, path: Path) -> None:
        self.db = open_store(path, "CREATE TABLE IF NOT EXISTS emb (model TEXT, key TEXT, vec BLOB, "
                                   "PRIMARY KEY (model, key))")

    def get(self, model: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        rows = select_in(self.db, "SELECT key, vec FROM emb WHERE model=? AND key IN ({marks})", keys, [model])
        return {k: np.frombuffer(v, dtype=np.float32) for k, v in rows}

    def put(self, model: str, items: dict[str, np.ndarray]) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO emb VALUES (?, ?, ?)",
            [(model, k, v.astype(np.float32).tobytes()) for k, v in items.items()],
        )
        self.db.commit()


def fast_dtype(device: str) -> Any:
    """bf16 where the hardware runs it natively (CUDA; CPUs with AVX512-BF16 or AMX), else fp32.

    On this project's CPUs (AMX) bf16 weights embed 3-4.5x faster than fp32 with Spearman 0.9998 of quality
    scores (bench/embed.py); on CPUs without native bf16 it would be slower, so fp32 is kept there.
    """
    import torch

    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    capability = torch.backends.cpu.get_cpu_capability()
    return torch.bfloat16 if capability in ("AVX512", "AMX") and _cpu_has_bf16() else torch.float32


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class Embedder:
    """A sentence-transformers model plus the cache. ``model_path`` is a local model directory.

    ``precision="fast"`` runs the model in bf16 (or fp16 on older GPUs) where the hardware supports it natively;
    ``"fp32"`` is sentence-transformers' default.
    """

    def __init__(
        self,
        model_path: str,
        *,
        cache_path: Path | None = None,
        batch_size: int | None = None,
        max_seq_length: int | None = 256,
        precision: Literal["fast", "fp32"] = "fast",
        device: str | None = None,
    ) -> None:
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(f"embeddings need sentence-transformers: {_HINT}") from err
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = SentenceTransformer(model_path, device=device)
        self.dtype = fast_dtype(device) if precision == "fast" else torch.float32
        if self.dtype != torch.float32:
            self.model = self.model.to(self.dtype)
        if max_seq_length:
            self.model.max_seq_length = max_seq_length
        # Small batches suit CPUs (little padding, cache-resident activations); GPUs want wide batches.
        self.batch_size = batch_size or (256 if device.startswith("cuda") else 16)
        # Keyed on the model's content (config + tokenizer + weights), never its folder name: another model in a
        # folder called `model`, or new weights at the same path, must not be served these vectors.
        memo = cache_path.parent / "model_identity.sqlite" if cache_path else None
        self.model_key = (f"v3|{model_identity(model_path, memo)}|seq{self.model.max_seq_length}"
                          f"|{str(self.dtype).split('.')[-1]}")
        self.cache = EmbeddingCache(cache_path) if cache_path else None
        self.computed = 0
        self.cached = 0

    def _encode(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model.encode(
                texts, batch_size=self.batch_size, convert_to_tensor=True, show_progress_bar=False,
            ).float()
        # Normalized in fp32: a bf16 model's own normalization leaves norms off by ~1e-3.
        return torch.nn.functional.normalize(out, dim=-1).cpu().numpy()

    def encode(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        keys = [_text_key(t) for t in texts]
        have = self.cache.get(self.model_key, keys) if self.cache else {}
        # Longest first across the whole call (not per chunk), so each batch pads to near its own length.
        todo = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in have}.items(),
                      key=lambda kv: -len(kv[1]))
        self.cached += len(texts) - len(todo)
        if progress:
            progress(len(texts) - len(todo))
        for start in range(0, len(todo), self.batch_size * 16):
            chunk = todo[start : start + self.batch_size * 16]
            vecs = self._encode([t for _, t in chunk])
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
