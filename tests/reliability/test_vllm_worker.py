"""The vLLM worker dying mid-batch, for real: synthesis runs the real SmolLM2-135M through the in-process vLLM engine
(on CPU one spawned worker process, ``synth/replicas.py``); once the request cache holds the first answered chunk the
test SIGKILLs that worker (a child of the gristmill process, found with psutil). The run must stop with a clear
one-line error (exit 2, no traceback, no hang: the parent waits on a pipe whose only writer was the worker), leave
only complete checkpoints and no orphan process, and the rerun must resume, replaying the answered chunks from the
request cache. And the other way round: SIGKILLing the run's own process leaves no worker generating for
nobody (the worker watches its parent)."""

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
import yaml

from gristmill.checkpoint import file_sha256
from tests.conftest import RECIPES, ROOT

pytestmark = pytest.mark.slow
psutil = pytest.importorskip("psutil")
pytest.importorskip("vllm")

DRIVER = Path(__file__).with_name("driver.py")


def _cached(cache: Path) -> int:
    db = cache / "synth_requests.sqlite"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("SELECT count(*) FROM requests").fetchone()[0])
    except sqlite3.Error:  # created but no table yet
        return 0


def _worker(pid: int) -> psutil.Process | None:
    """The spawned engine worker (not multiprocessing's resource tracker)."""
    for child in psutil.Process(pid).children():
        try:
            cmd = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "spawn_main" in cmd and "resource_tracker" not in cmd:
            return child
    return None


def _wait_for_answers(run: subprocess.Popen[str], cache: Path, more_than: int) -> None:
    deadline = time.monotonic() + 500
    while _cached(cache) <= more_than:
        assert run.poll() is None, run.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no answer was cached in time"
        time.sleep(0.2)


def _gone(proc: psutil.Process, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.5)
    proc.kill()  # leave nothing running behind a failed test
    return False


def test_worker_killed_mid_batch_fails_clearly_and_the_rerun_resumes(tmp_path: Path) -> None:
    from gristmill.models import resolve

    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Explain step {i} of baking bread at home", "input": "",
                                        "output": f"Knead the dough for {i} minutes, then rest it."}) + "\n"
                            for i in range(10)))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "worker", "inputs": [{"path": str(data)}],
        "steps": [{"normalize": {}},
                  {"synthesize": {"method": "self_instruct", "seeds": str(RECIPES / "data" / "seeds.jsonl"), "n": 6,
                                  "max_rounds": 1, "model": resolve("smollm2-135m-instruct"), "max_tokens": 48,
                                  "cache_chunk": 2}}],  # 9 prompts: 5 chunks, the kill lands after the first
        "output": {"dir": str(tmp_path / "run")},
    }))
    cache = tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=str(ROOT), GRISTMILL_CACHE=str(cache))
    env.pop("GRISTMILL_KILL", None)
    cmd = [sys.executable, str(DRIVER), "run", str(recipe)]

    run = subprocess.Popen(cmd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_answers(run, cache, 0)  # the first chunk answered and committed; more are being generated
        worker = _worker(run.pid)
        assert worker is not None
        worker.send_signal(signal.SIGKILL)
        _, stderr = run.communicate(timeout=300)  # no hang
    finally:
        if run.poll() is None:
            run.kill()
    answered = _cached(cache)
    assert run.returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr
    assert f"the vLLM worker process (pid {worker.pid}) died" in stderr and "killed by signal 9" in stderr
    assert "rerun the same command to resume" in stderr
    assert not psutil.pid_exists(worker.pid) or worker.status() == psutil.STATUS_ZOMBIE
    run_dir = tmp_path / "run"
    assert not (run_dir / "steps" / "02-synthesize").exists()
    for step in (run_dir / "steps").glob("[0-9]*"):
        stats = json.loads((step / "stats.json").read_text())
        assert stats["kept_sha256"] == file_sha256(step / "kept.parquet"), step
    assert answered > 0

    # The other way round: the run's own process SIGKILLed mid-synthesis must not leave its worker generating.
    run = subprocess.Popen(cmd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_answers(run, cache, answered)
        orphan = _worker(run.pid)
        assert orphan is not None
        run.kill()
        run.communicate(timeout=60)
        gone = _gone(orphan, 60)
    finally:
        if run.poll() is None:
            run.kill()
    assert gone, "the vLLM worker outlived the killed run"
    answered = _cached(cache)

    again = subprocess.run(cmd, env=env, text=True, capture_output=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "ok"
    assert [s["step"] for s in manifest["steps"] if s["resumed"]] == ["ingest", "normalize"]
    synth = next(s for s in manifest["steps"] if s["step"] == "synthesize")
    assert synth["cache_hits"] >= answered  # what was answered before the kill was not generated again
