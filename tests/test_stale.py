"""Nothing stale, nothing lost: model identity in cache keys and fingerprints, the input rows' content in every
step's fingerprint, checkpoints verified by hash, and accounting checked by id."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from gristmill import steps
from gristmill.checkpoint import checkpoint_stats, save_step
from gristmill.common import identity
from gristmill.common.contract import AccountingError, StepResult, no_drops
from gristmill.common.embedding import EmbeddingParams
from gristmill.recipe import Step, load_recipe
from gristmill.runner import Runner, _resolved
from tests.reliability.test_model_dirs import complete_model_dir


def _rows(n: int) -> list[dict[str, str]]:
    return [{"instruction": f"Question number {i} about the topic", "input": "", "output": f"Answer {i} here."}
            for i in range(n)]


def _recipe(tmp_path: Path, steps_: list[dict[str, Any]], rows: list[dict[str, str]] | None = None) -> Path:
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in (rows or _rows(6))))
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "inputs": [{"path": str(data)}], "steps": steps_,
                                    "output": {"dir": str(tmp_path / "run"), "formats": ["parquet"]}}))
    return path


# -- model identity -------------------------------------------------------------------------------------------------

def test_identity_known_answer(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "README.md").write_text("not part of the identity")
    expected = hashlib.sha256(f"config.json\0{hashlib.sha256(b'{}').hexdigest()}\n".encode()).hexdigest()
    assert identity.model_identity(tmp_path) == expected


def test_identity_follows_content_not_the_folder_name(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "model", tmp_path / "b" / "model"
    for d, weights in ((a, b"\x00\x01"), (b, b"\x00\x02")):
        d.mkdir(parents=True)
        (d / "config.json").write_text('{"hidden": 8}')
        (d / "model.safetensors").write_bytes(weights)
    before = identity.model_identity(a)
    assert identity.model_identity(b) != before  # same folder name, other weights
    moved = tmp_path / "elsewhere"
    a.rename(moved)
    assert identity.model_identity(moved) == before  # the same model elsewhere
    (moved / "model.safetensors").write_bytes(b"\x00\x03")  # new weights at the same path
    assert identity.model_identity(moved) != before


def test_identity_is_memoised_by_path_size_and_mtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.safetensors").write_bytes(b"w" * 1000)
    memo = tmp_path / "memo.sqlite"
    first = identity.model_identity(tmp_path / "m", memo)
    calls: list[Path] = []
    monkeypatch.setattr(identity, "_memo", {})  # a new process: only the on-disk memo remains
    real = identity._file_digest
    monkeypatch.setattr(identity, "_file_digest", lambda p: calls.append(p) or real(p))
    assert identity.model_identity(tmp_path / "m", memo) == first and calls == []
    import os

    os.utime(tmp_path / "m" / "model.safetensors", ns=(1, 1))  # touched: hashed again
    assert identity.model_identity(tmp_path / "m", memo) == first and len(calls) == 1


def test_request_cache_misses_when_the_weights_change(tmp_path: Path) -> None:
    from gristmill.synth.cache import CachedEngine
    from gristmill.synth.engine import Generation, SamplingConfig

    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"old")

    class Echo:
        name, model_path, seed = "fake", str(model), 0

        def chat(self, convs: list[Any], sampling: Any) -> list[Generation]:
            return [Generation(f"answer {len(convs)}", "stop", 1, 1) for _ in convs]

        def version(self) -> str:
            return "1"

    sampling = SamplingConfig(temperature=0.0, top_p=1.0, max_tokens=8)
    prompt = [[{"role": "user", "content": "hi"}]]
    with CachedEngine(Echo(), tmp_path / "c.sqlite") as cached:
        cached.chat(prompt, sampling)
    with CachedEngine(Echo(), tmp_path / "c.sqlite") as cached:
        cached.chat(prompt, sampling)
        assert (cached.hits, cached.misses) == (1, 0)
    (model / "model.safetensors").write_bytes(b"new weights")
    with CachedEngine(Echo(), tmp_path / "c.sqlite") as cached:
        cached.chat(prompt, sampling)
        assert (cached.hits, cached.misses) == (0, 1)


def test_step_fingerprint_holds_the_model_identity(tmp_path: Path) -> None:
    model = complete_model_dir(tmp_path)  # config, weights, tokenizer: the registry checks a model is complete
    recipe = load_recipe(_recipe(tmp_path, [{"normalize": {}}]))
    step = Step("dedup_semantic", EmbeddingParams(model=str(model)))
    _, view = _resolved(recipe, step)
    assert view["model"]["model_identity"] == identity.model_identity(model)
    (model / "config.json").write_text('{"layers": 2}')
    assert _resolved(recipe, step)[1]["model"]["model_identity"] != view["model"]["model_identity"]


@pytest.mark.slow
def test_embedding_cache_keys_on_the_model_content(tmp_path: Path) -> None:
    """Two models in folders called ``model`` (the built-in MiniLM's folder name) never share vectors."""
    import shutil

    from gristmill.curation.embed import Embedder
    from gristmill.models import builtin_path

    src = builtin_path("minilm-l6")
    a, b = tmp_path / "a" / "model", tmp_path / "b" / "model"
    shutil.copytree(src, a)
    shutil.copytree(src, b)
    (b / "config.json").write_text((b / "config.json").read_text() + "\n")  # any changed byte
    cache = tmp_path / "emb.sqlite"
    ka = Embedder(str(a), cache_path=cache).model_key
    assert Embedder(str(src), cache_path=cache).model_key == ka  # same content elsewhere: same key
    assert Embedder(str(b), cache_path=cache).model_key != ka


# -- input content in the fingerprint -------------------------------------------------------------------------------

def _suffixing(suffix: list[str]) -> steps.StepDef:
    """A normalize stand-in whose output depends on state outside its params (like a cold synthesis cache)."""
    def stage(frame: pl.DataFrame, params: Any) -> StepResult:
        return StepResult(frame.with_columns(pl.col("text") + suffix[0]), no_drops(frame), {}, frame.height)

    return steps.StepDef(steps.STEPS["normalize"].params, "1", stage=stage)


def test_a_recomputed_step_with_other_rows_recomputes_everything_after_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    suffix = [" one"]
    monkeypatch.setitem(steps.STEPS, "normalize", _suffixing(suffix))
    recipe = load_recipe(_recipe(tmp_path, [{"normalize": {}}, {"dedup_exact": {}}]))
    first = Runner(recipe).run()
    assert first.frame["text"].str.ends_with(" one").all()
    assert Runner(recipe).run().recomputed == []
    import shutil

    shutil.rmtree(first.run_dir / "steps" / "01-normalize")  # recomputed with the same fingerprint ...
    suffix[0] = " two"  # ... but other rows
    again = Runner(recipe).run()
    assert again.recomputed == ["normalize", "dedup_exact"]
    assert again.frame["text"].str.ends_with(" two").all()
    assert pl.read_parquet(again.run_dir / "dataset" / "data.parquet")["text"].str.ends_with(" two").all()


def test_a_tampered_checkpoint_is_recomputed(tmp_path: Path) -> None:
    frame = pl.DataFrame({"id": ["a", "b"], "text": ["x", "y"]})
    save_step(tmp_path / "01-x", frame, no_drops(frame), {"fingerprint": "f"})
    assert checkpoint_stats(tmp_path / "01-x", "f") is not None
    frame.head(1).write_parquet(tmp_path / "01-x" / "kept.parquet")  # another file under the recorded name
    assert checkpoint_stats(tmp_path / "01-x", "f") is None
    (tmp_path / "01-x" / "stats.json").write_text("{trunc")
    assert checkpoint_stats(tmp_path / "01-x", "f") is None


# -- accounting -----------------------------------------------------------------------------------------------------

def test_a_step_that_loses_one_row_and_duplicates_another_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def lossy(frame: pl.DataFrame, params: Any) -> StepResult:
        kept = pl.concat([frame.head(frame.height - 1), frame.head(1)])  # counts add up, ids do not
        return StepResult(kept, no_drops(frame), {}, frame.height)

    monkeypatch.setitem(steps.STEPS, "filter", steps.StepDef(steps.STEPS["filter"].params, "1", stage=lossy))
    recipe = load_recipe(_recipe(tmp_path, [{"filter": {}}]))
    with pytest.raises(AccountingError, match=r"step filter: 2 input ids do not come out exactly once .*in\.jsonl:6"):
        Runner(recipe).run()
    assert not (tmp_path / "run" / "steps" / "01-filter").exists()  # nothing checkpointed


def test_runner_checks_rows_in_against_the_frame_it_passed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def miscount(frame: pl.DataFrame, params: Any) -> StepResult:
        return StepResult(frame.head(2), frame.slice(2).with_columns(pl.lit("x").alias("reason")), {}, 99)

    monkeypatch.setitem(steps.STEPS, "filter", steps.StepDef(steps.STEPS["filter"].params, "1", stage=miscount))
    with pytest.raises(AccountingError, match="reports rows_in=99 but was given 6 rows"):
        Runner(load_recipe(_recipe(tmp_path, [{"filter": {}}]))).run()


def test_added_rows_must_have_new_unique_ids() -> None:
    frame = pl.DataFrame({"id": ["a", "b"], "text": ["x", "y"]})
    new = pl.DataFrame({"id": ["n1", "n1"], "text": ["p", "q"]})
    with pytest.raises(AccountingError, match="new ids must be unique"):
        StepResult(pl.concat([frame, new]), no_drops(frame), {}, 2, added=2).check("synth", frame)
    ok = pl.DataFrame({"id": ["n1", "n2"], "text": ["p", "q"]})
    StepResult(pl.concat([frame, ok]), no_drops(frame), {}, 2, added=2).check("synth", frame)
    swapped = pl.DataFrame({"id": ["a", "n1", "n2"], "text": ["x", "p", "q"]})  # b replaced by a new row
    with pytest.raises(AccountingError, match=r"lost, e\.g\. \['b'\]"):
        StepResult(swapped, no_drops(frame), {}, 2, added=1).check("synth", frame)


def test_the_session_cache_is_isolated(test_cache: Path) -> None:
    """tests/conftest.py: a fresh cache dir per session (models linked in), inherited by subprocesses."""
    import os

    from gristmill.models import cache_root

    assert os.environ["GRISTMILL_CACHE"] == str(test_cache) == str(cache_root())
    assert test_cache.name.startswith("gristmill-test-cache-")
    assert all(p.is_symlink() for p in (test_cache / "models").glob("*"))
