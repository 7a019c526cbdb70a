"""Sentence embeddings with an on-disk cache keyed by (model, text hash).

Embedding is the CPU bottleneck of curation, so every vector is computed once per (model, text) and reused by
later steps and re-runs. Vectors are L2-normalized float32, so a dot product is the cosine similarity.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np

from gristmill.common.hardware import cpu_has_bf16
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
    return torch.bfloat16 if capability in ("AVX512", "AMX") and cpu_has_bf16() else torch.float32


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
        trust_remote_code: bool = False,
    ) -> None:
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(f"embeddings need sentence-transformers: {_HINT}") from err
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # Explicit: code in a model directory runs only when the recipe says so (recipe key trust_remote_code).
        self.model = SentenceTransformer(model_path, device=device, trust_remote_code=trust_remote_code)
        self.dtype = fast_dtype(device) if precision == "fast" else torch.float32
        if self.dtype != torch.float32:
            self.model = self.model.to(self.dtype)
        if max_seq_length:
            self.model.max_seq_length = max_seq_length
        # Small batches suit CPUs (little padding, cache-resident activations); GPUs want wide batches.
        self.batch_size = batch_size or (1024 if device.startswith("cuda") else 16)
        # Keyed on the model's content (config + tokenizer + weights), never its folder name: another model in a
        # folder called `model`, or new weights at the same path, must not be served these vectors.
        memo = cache_path.parent / "model_identity.sqlite" if cache_path else None
        self.model_key = (f"v3|{model_identity(model_path, memo)}|seq{self.model.max_seq_length}"
                          f"|{str(self.dtype).split('.')[-1]}")
        self.cache = EmbeddingCache(cache_path) if cache_path else None
        self.device = device
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim() or 0)
        self._token_types = "token_type_ids" in self.model.tokenizer.model_input_names
        self._fast_tokenizer = self._rust_tokenizer()
        self.computed = 0
        self.cached = 0

    @property
    def chunk_size(self) -> int:
        """Texts per tokenizer call, cache write and progress tick: on CPU a few batches (frequent progress); on a
        GPU enough batches that tokenizing the next chunk (a thread) overlaps the model's work on this one."""
        return self.batch_size * 16 if self.device == "cpu" else max(4 * self.batch_size, 8192)

    def _rust_tokenizer(self) -> Any:
        """The model's Rust tokenizer set to truncate like sentence-transformers (same ids), or None. Its
        ``encode_batch_fast`` skips character offsets and the Python-side BatchEncoding: on the H200 machine
        tokenizing through the transformers wrapper was slower than the GPU embedding the texts."""
        import copy

        rust = getattr(self.model.tokenizer, "_tokenizer", None)
        if rust is None or not hasattr(rust, "encode_batch_fast"):
            return None
        rust = copy.deepcopy(rust)
        rust.enable_truncation(self.model.max_seq_length)
        rust.no_padding()
        return rust

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        """Unpadded token ids of ``texts`` in one call: the Rust tokenizer spreads a batch over the cores and
        releases the GIL, so the next chunk is tokenized while the model computes this one (``encode``)."""
        if self._fast_tokenizer is not None:
            return [e.ids for e in self._fast_tokenizer.encode_batch_fast(texts)]
        return self.model.tokenizer(texts, truncation=True, max_length=self.model.max_seq_length,
                                    return_attention_mask=False, return_token_type_ids=False)["input_ids"]

    def _encode(self, texts: list[str], ids: list[list[int]] | None = None) -> np.ndarray:
        """Vectors of ``texts`` through the model's own modules (transformer, pooling), in batches of similar
        token length padded to their longest row; sentence-transformers' ``encode`` would re-tokenize per batch,
        sort by characters and, on a GPU, wait for every batch (outputs stay on the device here until the end)."""
        import torch

        ids = self._tokenize(texts) if ids is None else ids
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        device = self.model.device
        pad = self.model.tokenizer.pad_token_id or 0
        outs = []
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                rows = [ids[i] for i in order[start : start + self.batch_size]]
                tokens = np.full((len(rows), len(rows[0])), pad, dtype=np.int64)
                mask = np.zeros_like(tokens)
                for j, row in enumerate(rows):
                    tokens[j, : len(row)] = row
                    mask[j, : len(row)] = 1
                features = {"input_ids": torch.from_numpy(tokens).to(device, non_blocking=True),
                            "attention_mask": torch.from_numpy(mask).to(device, non_blocking=True)}
                if self._token_types:
                    features["token_type_ids"] = torch.zeros_like(features["input_ids"])
                outs.append(self.model(features)["sentence_embedding"].float())
            if not outs:
                return np.zeros((0, self.dim), dtype=np.float32)
            # Normalized in fp32: a bf16 model's own normalization leaves norms off by ~1e-3.
            vecs = torch.nn.functional.normalize(torch.cat(outs), dim=-1).cpu().numpy()
        result = np.empty_like(vecs)
        result[order] = vecs
        return result

    def encode(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        keys = [_text_key(t) for t in texts]
        have = self.cache.get(self.model_key, keys) if self.cache else {}
        # Longest first across the whole call (not per chunk), so each batch pads to near its own length.
        todo = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in have}.items(),
                      key=lambda kv: -len(kv[1]))
        self.cached += len(texts) - len(todo)
        if progress:
            progress(len(texts) - len(todo))
        chunks = [todo[start : start + self.chunk_size] for start in range(0, len(todo), self.chunk_size)]
        with ThreadPoolExecutor(1) as pool:  # tokenizes chunk i+1 while chunk i is embedded
            pending = pool.submit(self._tokenize, [t for _, t in chunks[0]]) if chunks else None
            for i, chunk in enumerate(chunks):
                ids = pending.result() if pending else None
                pending = pool.submit(self._tokenize, [t for _, t in chunks[i + 1]]) if i + 1 < len(chunks) else None
                vecs = self._encode([t for _, t in chunk], ids)
                new = {k: v for (k, _), v in zip(chunk, vecs, strict=True)}
                have.update(new)
                if self.cache:
                    self.cache.put(self.model_key, new)
                self.computed += len(chunk)
                if progress:
                    progress(len(chunk))
        dim = self.dim
        if not texts:
            return np.zeros((0, dim), dtype=np.float32)
        return np.stack([have[k] for k in keys])
