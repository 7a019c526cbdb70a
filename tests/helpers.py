"""Shared test helpers: run-level assertions and a scripted engine for unit tests of generation methods."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import polars as pl

from gristmill.synth.engine import Generation, SamplingConfig

Reply = str | tuple[str, str]


def assert_manifest_adds_up(manifest: dict) -> None:
    steps = manifest["steps"]
    for s in steps:
        assert s["rows_in"] + s.get("rows_added", 0) == s["kept"] + s["dropped"], s["step"]
        assert sum(s["dropped_by_reason"].values()) == s["dropped"], s["step"]
    for prev, nxt in zip(steps, steps[1:], strict=False):
        assert prev["kept"] == nxt["rows_in"], (prev["step"], nxt["step"])
    assert steps[-1]["kept"] == manifest["rows_final"]


def assert_planted_defects_removed(run_dir: Path, data_dir: Path, quickstart_steps: bool = False) -> None:
    """Every planted defect is gone with the right reason; ``quickstart_steps`` adds language and leak checks."""
    planted = json.loads((data_dir / "planted.json").read_text())
    final = set(pl.read_parquet(run_dir / "dataset" / "data.parquet")["id"])
    rejects = pl.read_parquet(run_dir / "rejects.parquet")
    reason = dict(zip(rejects["id"], rejects["reason"], strict=True))
    for kind, expected in (("exact", {"exact_duplicate"}), ("near", {"exact_duplicate", "near_duplicate"})):
        for copy, original in planted[kind]:
            assert len({copy, original} & final) <= 1, (kind, copy, original)
            reasons = {reason.get(copy), reason.get(original)}
            assert reasons & expected, (kind, copy, original, reasons)
    for junk in planted["junk"]:
        assert junk not in final and reason[junk] == "too_few_words"
    assert (rejects["reason"] == "malformed_input").sum() == len(planted["malformed_lines"])
    if quickstart_steps:
        for row_id in planted["foreign"]:
            assert row_id not in final and reason[row_id] == "language.wrong_language", row_id
        for row_id in planted["contaminated"]:
            assert row_id not in final and reason[row_id] == "contaminated", row_id
        leaks = rejects.filter(pl.col("reason") == "contaminated")
        assert leaks["meta"].str.contains("quiz-").all()  # the report names the eval items hit


class ScriptedEngine:
    """Answers each conversation with ``respond(user_text, sampling)`` (``user_text``: the non-system turns joined
    by newlines); records every call's size and schema, and every conversation sent."""

    model_path = "scripted"
    name = "scripted"

    def __init__(self, respond: Callable[[str, SamplingConfig], Reply]) -> None:
        self.respond = respond
        self.calls: list[tuple[int, bool]] = []
        self.prompts: list[str] = []
        self.conversations: list[list[dict[str, str]]] = []

    def version(self) -> str:
        return "0"

    def close(self) -> None:
        pass

    def chat(self, conversations: list[list[dict[str, str]]], sampling: SamplingConfig) -> list[Generation]:
        self.calls.append((len(conversations), sampling.json_schema is not None))
        out = []
        for conv in conversations:
            user = "\n".join(m["content"] for m in conv if m["role"] != "system")
            self.prompts.append(user)
            self.conversations.append(conv)
            reply = self.respond(user, sampling)
            text, finish = reply if isinstance(reply, tuple) else (reply, "stop")
            out.append(Generation(text, finish, 40, 10))
        return out


def assert_exported_embedder_like_fp32(fast: object, model: Path, export_dir: Path, model_file: Path,
                                       docs: list[str], refs: list[str], min_cosine: float) -> None:
    """An exported int8 embedding backend (``fast``, built with ``cache_path=export_dir.parent / "emb.sqlite"``)
    against sentence-transformers' fp32 vectors of ``docs + refs`` (unit norm, per-vector cosine, Spearman >= 0.99
    of the mean top-3 quality scores of the first 150 docs), then a second Embedder on the same export: the export
    (``model_file``) is reused, not rewritten, and the vectors come from the embedding cache."""
    import numpy as np
    from scipy.stats import spearmanr

    from gristmill.curation.embed import Embedder
    from gristmill.curation.scoring import similarity_scores

    fp32 = Embedder(model, precision="fp32")
    assert fp32.backend == "torch float32" and fp32.model_key != fast.model_key  # type: ignore[attr-defined]
    got, want = fast.encode(docs + refs), fp32.encode(docs + refs)  # type: ignore[attr-defined]
    cos = (got * want).sum(axis=1)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert cos.mean() >= 0.995 and cos.min() >= min_cosine
    rho = spearmanr(similarity_scores(want[:150], want[150:], 3), similarity_scores(got[:150], got[150:], 3))
    assert rho.statistic >= 0.99

    mtime = model_file.stat().st_mtime_ns
    again = Embedder(model, cache_path=export_dir.parent / "emb.sqlite", export_dir=export_dir,
                     backend=fast.backend.split()[0])  # type: ignore[attr-defined]
    assert model_file.stat().st_mtime_ns == mtime and len(list(export_dir.iterdir())) == 1
    assert again.model_key == fast.model_key  # type: ignore[attr-defined]
    assert np.array_equal(again.encode(docs[:5]), got[:5])
    assert again.cached == 5 and again.computed == 0
