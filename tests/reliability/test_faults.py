"""Faults, simulated for real: a full disk (a small tmpfs), a read-only or unwritable output dir, an HTTP server that
is unreachable, slow or answers 429/500, a missing model directory. Each gives a clear message (no traceback for
what the user can fix), leaves no corrupt checkpoint, and the run resumes once the fault is gone."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gristmill.checkpoint import file_sha256
from tests.conftest import ROOT
from tests.fake_openai import FakeOpenAI

DRIVER = Path(__file__).with_name("driver.py")
ALPACA = [{"instruction": f"Explain step {i} of making bread at home", "input": "",
           "output": f"Step {i}: knead the dough for {i} minutes, then let it rest."} for i in range(200)]


def _write_recipe(tmp: Path, steps: list[dict[str, object]], out: Path) -> Path:
    data = tmp / "in.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ALPACA))
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump({"name": "faults", "inputs": [{"path": str(data)}], "steps": steps,
                                    "output": {"dir": str(out), "formats": ["parquet", "jsonl"]}}))
    return path


def _run(recipe: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), GRISTMILL_CACHE=str(cache))
    return subprocess.run([sys.executable, str(DRIVER), "run", str(recipe), *extra], env=env, text=True,
                          capture_output=True, timeout=600)


def _complete_checkpoints(run_dir: Path) -> None:
    for step in (run_dir / "steps").glob("[0-9]*"):
        stats = json.loads((step / "stats.json").read_text())
        assert stats["kept_sha256"] == file_sha256(step / "kept.parquet"), step


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs, filled by each test to what it needs (needs root and mount; skipped otherwise)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


STEPS = [{"normalize": {}}, {"filter": {"min_words": 3}}, {"dedup_exact": {}}, {"dedup_minhash": {"threshold": 0.9}}]


def test_disk_full_is_a_clear_error_and_the_run_resumes_after(tmpfs: Path, tmp_path: Path) -> None:
    reference = _run(_write_recipe(tmp_path, STEPS, tmp_path / "ref"), tmp_path / "cache")
    assert reference.returncode == 0, reference.stderr[-2000:]
    run_dir = tmpfs / "run"
    recipe = _write_recipe(tmp_path, STEPS, run_dir)
    filler = tmpfs / "filler"
    free = os.statvfs(tmpfs).f_bavail * os.statvfs(tmpfs).f_frsize
    filler.write_bytes(b"\0" * (free - 48 * 1024))  # room for a few checkpoints, not for all of them
    full = _run(recipe, tmp_path / "cache")
    assert full.returncode == 2, full.stderr[-3000:]
    assert "No space left on device" in full.stderr and "free space" in full.stderr
    assert "Traceback" not in full.stderr
    _complete_checkpoints(run_dir)
    assert not (run_dir / "dataset" / "data.parquet").exists() or (run_dir / "manifest.json").exists() is False
    filler.unlink()
    again = _run(recipe, tmp_path / "cache")
    assert again.returncode == 0, again.stderr[-3000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["steps"][0]["resumed"]  # ingest's checkpoint fitted before the disk filled
    for name in ("data.parquet", "data.jsonl"):
        assert (run_dir / "dataset" / name).read_bytes() == (tmp_path / "ref" / "dataset" / name).read_bytes()


def test_unwritable_output_dir(tmpfs: Path, tmp_path: Path) -> None:
    """Read-only (root ignores file modes, so the file system is remounted read-only) and then writable again."""
    run_dir = tmpfs / "run"
    recipe = _write_recipe(tmp_path, STEPS[:2], run_dir)
    run_dir.mkdir()
    if os.geteuid() == 0:
        subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
        needle = "Read-only file system"
    else:
        run_dir.chmod(0o500)
        needle = "Permission denied"
    denied = _run(recipe, tmp_path / "cache")
    assert denied.returncode == 2, denied.stderr[-3000:]
    assert needle in denied.stderr and str(run_dir) in denied.stderr and "Traceback" not in denied.stderr
    if os.geteuid() == 0:
        subprocess.run(["mount", "-o", "remount,rw", str(tmpfs)], check=True)
    else:
        run_dir.chmod(0o755)
    assert _run(recipe, tmp_path / "cache").returncode == 0


def _synth_step(url: str, retries: int = 2, timeout: float = 30.0) -> dict[str, object]:
    return {"synthesize": {"method": "self_instruct", "seeds": str(ROOT / "recipes" / "data" / "seeds.jsonl"),
                           "n": 4, "engine": "openai", "base_url": url, "model": "fake-model", "concurrency": 1,
                           "cache_chunk": 1, "max_retries": retries, "request_timeout_s": timeout}}


def test_unreachable_server_then_resume(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    recipe = _write_recipe(tmp_path, [{"normalize": {}}, _synth_step(f"http://127.0.0.1:{port}/v1", retries=1)],
                           tmp_path / "run")
    down = _run(recipe, tmp_path / "cache")
    assert down.returncode == 2 and "Traceback" not in down.stderr  # a user error: the server is the fix
    assert f"127.0.0.1:{port}" in down.stderr and "failed after 2 attempts" in down.stderr
    _complete_checkpoints(tmp_path / "run")
    assert not (tmp_path / "run" / "steps" / "02-synthesize").exists()


def test_429_500_and_slow_answers_are_retried_and_cached(tmp_path: Path) -> None:
    server = FakeOpenAI(script=[(429, 0.0), (500, 0.0), (200, 2.5), (0, 0.0)])
    try:
        recipe = _write_recipe(tmp_path, [{"normalize": {}}, _synth_step(server.url, retries=4, timeout=1.0)],
                               tmp_path / "run")
        flaky = _run(recipe, tmp_path / "cache")
        assert flaky.returncode == 0, flaky.stderr[-3000:]
        synth = next(s for s in json.loads((tmp_path / "run" / "manifest.json").read_text())["steps"]
                     if s["step"] == "synthesize")
        assert synth["rows_added"] >= 4 and synth["cache_misses"] >= 4
        asked = len(server.requests)
        server.script = [(500, 0.0)] * 100  # the server breaks; the rerun needs it for nothing
        (tmp_path / "run" / "steps" / "02-synthesize").rename(tmp_path / "gone")
        again = _run(recipe, tmp_path / "cache")
        assert again.returncode == 0, again.stderr[-3000:]
        assert len(server.requests) == asked  # every answer came from the request cache
    finally:
        server.close()


def test_missing_model_directory(tmp_path: Path) -> None:
    recipe = _write_recipe(tmp_path, [{"dedup_semantic": {"model": str(tmp_path / "no-such-model")}}],
                           tmp_path / "run")
    missing = _run(recipe, tmp_path / "cache")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "steps.dedup_semantic.model" in missing.stderr and "gristmill models list" in missing.stderr
