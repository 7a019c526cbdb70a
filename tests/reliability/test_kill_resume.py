"""Kill anywhere, resume, same bytes.

A recipe with every kind of step that matters here (ingest, pure curation steps, MinHash, synthesis through a real
HTTP server, decontamination, export) runs in a subprocess that is SIGKILLed at an exact point (``driver.py``
plants the kill on the n-th call of a function: no timing). The rerun must resume (the manifest marks the
checkpoints it reused) and produce a dataset byte-identical to an uninterrupted run's. Also: every checkpoint left
by a killed run is complete (its kept file matches the hash in its stats), the same recipe gives the same bytes
twice over fresh caches, and a planted API key appears in no output, cache or log.

Training is not part of this recipe (too slow to repeat per kill point): ``test_train_kill.py`` SIGKILLs a run inside
training after its first checkpoint, and ``test_vllm_worker.py`` kills the real vLLM worker mid-batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gristmill.checkpoint import file_sha256
from tests.conftest import RECIPES, ROOT, build_sample
from tests.fake_openai import FakeOpenAI

KEY = "sk-planted-3f9a1c0e7b2d4f68a5c1e9b0d7f3a2c4"
DRIVER = Path(__file__).with_name("driver.py")


@pytest.fixture(scope="module")
def server() -> Any:
    fake = FakeOpenAI()
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory, server: FakeOpenAI) -> Path:
    tmp = tmp_path_factory.mktemp("reliability")
    data = build_sample(tmp / "data")
    for name in ("seeds.jsonl", "eval_set.jsonl"):
        (data / name).write_bytes((RECIPES / "data" / name).read_bytes())
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "name": "reliability",
        "inputs": [{"path": "data/sample.jsonl", "mapping": "alpaca", "on_error": "skip"}],
        "steps": [
            {"normalize": {}},
            {"filter": {"min_words": 5, "max_words": 2000}},
            {"dedup_exact": {}},
            {"dedup_minhash": {"threshold": 0.8}},
            {"synthesize": {"method": "self_instruct", "seeds": "data/seeds.jsonl", "n": 8, "engine": "openai",
                            "base_url": server.url, "model": "fake-model", "api_key_env": "GRISTMILL_TEST_API_KEY",
                            "concurrency": 1, "cache_chunk": 2}},
            {"decontaminate": {"eval_sets": ["data/eval_set.jsonl"], "text_fields": ["question"]}},
        ],
        "output": {"dir": "unused", "formats": ["parquet", "jsonl"]},
    }, sort_keys=False))
    return path


def _run(recipe: Path, run_dir: Path, cache: Path, kill: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), GRISTMILL_CACHE=str(cache), GRISTMILL_TEST_API_KEY=KEY)
    env.pop("GRISTMILL_KILL", None)
    if kill:
        env["GRISTMILL_KILL"] = kill
    return subprocess.run([sys.executable, str(DRIVER), "run", str(recipe), "--out", str(run_dir)], env=env,
                          text=True, capture_output=True, timeout=600)


@pytest.fixture(scope="module")
def reference(recipe: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    tmp = tmp_path_factory.mktemp("reference")
    done = _run(recipe, tmp / "run", tmp / "cache")
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp / "run", tmp / "cache", done.stderr


def _minhash_point() -> str:
    from gristmill.curation import minhash_kernel

    return ("gristmill.curation.minhash_kernel:link:1" if minhash_kernel.available()
            else "gristmill.curation.minhash:near_duplicate_edges:1")


KILL_POINTS = {
    # name: (kill spec, steps the rerun must have resumed)
    "ingest_computed_not_saved": ("gristmill.runner:save_step:1", []),
    "boundary_before_step_2_saved": ("gristmill.runner:save_step:3", ["ingest", "normalize"]),
    "inside_checkpoint_rename": ("gristmill.checkpoint:replace_dir:4", ["ingest", "normalize", "filter"]),
    "inside_minhash": (None, ["ingest", "normalize", "filter", "dedup_exact"]),
    "inside_synthesis_after_2_chunks": ("gristmill.synth.http_engine:OpenAIEngine.chat:3",
                                        ["ingest", "normalize", "filter", "dedup_exact", "dedup_minhash"]),
    "before_export": ("gristmill.runner:export_dataset:1",
                      ["ingest", "normalize", "filter", "dedup_exact", "dedup_minhash", "synthesize", "decontaminate"]),
    "inside_export_after_data_files": ("gristmill.export:data_card:1",
                                       ["ingest", "normalize", "filter", "dedup_exact", "dedup_minhash", "synthesize",
                                        "decontaminate"]),
}


def _assert_checkpoints_complete(run_dir: Path) -> None:
    """What a killed run leaves under steps/ is either a complete checkpoint or a temporary directory."""
    for step in (run_dir / "steps").glob("*"):
        if step.name.startswith("."):
            continue
        stats = json.loads((step / "stats.json").read_text())
        assert stats["kept_sha256"] == file_sha256(step / "kept.parquet"), step
        assert (step / "dropped.parquet").exists()


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_killed_run_resumes_to_the_same_bytes(point: str, recipe: Path, reference: tuple[Path, Path, str],
                                              tmp_path: Path) -> None:
    spec, resumed = KILL_POINTS[point]
    spec = spec or _minhash_point()
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    killed = _run(recipe, run_dir, cache, kill=spec)
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-3000:])
    assert not (run_dir / "manifest.json").exists() or json.loads(
        (run_dir / "manifest.json").read_text())["status"] != "ok"
    _assert_checkpoints_complete(run_dir)

    again = _run(recipe, run_dir, cache)
    assert again.returncode == 0, again.stderr[-3000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "ok"
    assert [s["step"] for s in manifest["steps"] if s["resumed"]][:len(resumed)] == resumed
    ref_run = reference[0]
    for name in ("data.parquet", "data.jsonl"):
        assert (run_dir / "dataset" / name).read_bytes() == (ref_run / "dataset" / name).read_bytes(), name
    assert (run_dir / "rejects.parquet").read_bytes() == (ref_run / "rejects.parquet").read_bytes()
    if point == "inside_synthesis_after_2_chunks":
        synth = next(s for s in manifest["steps"] if s["step"] == "synthesize")
        assert synth["cache_hits"] >= 4  # the two chunks answered before the kill were not asked again


def test_same_recipe_same_bytes_across_fresh_caches(recipe: Path, reference: tuple[Path, Path, str],
                                                    tmp_path: Path) -> None:
    fresh = _run(recipe, tmp_path / "run", tmp_path / "cache")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    for name in ("data.parquet", "data.jsonl"):
        assert (tmp_path / "run" / "dataset" / name).read_bytes() == (reference[0] / "dataset" / name).read_bytes()
    first = json.loads((reference[0] / "manifest.json").read_text())
    second = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert first["fingerprint"] == second["fingerprint"]
    synth = next(s for s in second["steps"] if s["step"] == "synthesize")
    assert synth["cache_misses"] > 0 and synth["cache_hits"] == 0  # really generated again, not replayed


def test_the_api_key_is_used_but_never_written(recipe: Path, reference: tuple[Path, Path, str],
                                               server: FakeOpenAI) -> None:
    run_dir, cache, stderr = reference
    assert any(r["headers"].get("Authorization") == f"Bearer {KEY}" for r in server.requests)
    leaks = [p for root in (run_dir, cache) for p in root.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert leaks == [] and KEY not in stderr
    manifest = (run_dir / "manifest.json").read_text()
    assert "GRISTMILL_TEST_API_KEY" in manifest  # the variable's name is recorded, its value is not
