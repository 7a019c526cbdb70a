"""OpenAIEngine against a scripted local HTTP server (retries, timeouts, API key, request body), and one slow test
against a real vLLM OpenAI-compatible server with SmolLM2."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from gristmill.synth.engine import PROMPT_TOO_LONG, SamplingConfig
from gristmill.synth.http_engine import OpenAIEngine, OpenAIEngineError
from gristmill.synth.parse import TASK_SCHEMA, Rejected, parse_task
from tests.fake_openai import FakeOpenAI

SAMPLING = SamplingConfig(0.7, 0.9, 32, TASK_SCHEMA)


def FakeServer(script: list[tuple[int, float]] | None = None, error: str = "scripted {status}") -> FakeOpenAI:  # noqa: N802
    """Replies to POST /v1/chat/completions from a script of (status, delay_s) steps, then 200 with an echo."""
    return FakeOpenAI(script, answer=lambda user: f"echo: {user}", model="served-model", error=error)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    srv = FakeServer()
    yield srv
    srv.close()


def conv(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("transport", ["httpx", "urllib"])
def test_chat_in_order_with_body_usage_and_version(server: FakeServer, transport: str) -> None:
    engine = OpenAIEngine(server.root + "/v1/", "m", concurrency=3, transport=transport)
    assert engine.version() == "served-model"  # from GET /v1/models
    out = engine.chat([conv(f"q{i}") for i in range(7)], SAMPLING)
    assert [g.text for g in out] == [f"echo: q{i}" for i in range(7)]
    assert all((g.finish_reason, g.prompt_tokens, g.output_tokens) == ("stop", 10, 20) for g in out)  # usage as served
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and "authorization" not in {k.lower() for k in req["headers"]}
    body = req["body"]
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "task", "schema": TASK_SCHEMA}}
    assert (body["model"], body["temperature"], body["top_p"], body["max_tokens"]) == ("m", 0.7, 0.9, 32)
    assert "seed" not in body  # only when the user sets one
    engine.close()


@pytest.mark.parametrize("transport", ["httpx", "urllib"])
def test_retries_500_and_429_then_succeeds(transport: str) -> None:
    srv = FakeServer([(500, 0), (429, 0), (503, 0)])
    try:
        engine = OpenAIEngine(srv.root, "m", max_retries=3, backoff_s=0.01, transport=transport)
        assert engine.chat([conv("hi")], SAMPLING)[0].text == "echo: hi"
        assert len(srv.requests) == engine.requests_sent == 4
    finally:
        srv.close()


def test_gives_up_after_max_retries_and_fails_fast_on_400() -> None:
    srv = FakeServer([(500, 0)] * 3 + [(400, 0)])
    try:
        engine = OpenAIEngine(srv.root, "m", max_retries=2, backoff_s=0.01)
        with pytest.raises(OpenAIEngineError, match=r"after 3 attempts; last: HTTP 500: .*scripted 500"):
            engine.chat([conv("hi")], SAMPLING)
        with pytest.raises(OpenAIEngineError, match="HTTP 400"):  # not retryable: one attempt
            engine.chat([conv("hi")], SAMPLING)
        assert len(srv.requests) == 4
    finally:
        srv.close()


def test_prompt_over_the_context_is_answered_prompt_too_long_not_raised() -> None:
    msg = "This model's maximum context length is 2048 tokens. However, you requested 2100 tokens."
    srv = FakeServer([(200, 0), (400, 0)], error=msg)
    try:
        engine = OpenAIEngine(srv.root, "m", concurrency=1)
        out = engine.chat([conv("short"), conv("very long")], SAMPLING)
        assert out[0].text == "echo: short"
        assert (out[1].text, out[1].finish_reason, out[1].output_tokens) == ("", PROMPT_TOO_LONG, 0)
        with pytest.raises(Rejected) as err:
            parse_task(out[1].text, out[1].finish_reason)
        assert err.value.reason == "prompt_too_long"
        assert len(srv.requests) == 2  # a 400 is not retried
    finally:
        srv.close()


@pytest.mark.parametrize("transport", ["httpx", "urllib"])
def test_timeout_is_retried_then_reported(transport: str) -> None:
    srv = FakeServer([(200, 1.0), (200, 1.0)])
    try:
        engine = OpenAIEngine(srv.root, "m", timeout=0.2, max_retries=1, backoff_s=0.01, transport=transport)
        started = time.perf_counter()
        with pytest.raises(OpenAIEngineError, match=r"after 2 attempts; last: .*[Tt]ime"):
            engine.chat([conv("slow")], SAMPLING)
        assert time.perf_counter() - started < 1.5
        srv.script[:] = [(200, 1.0)]
        retried = OpenAIEngine(srv.root, "m", timeout=0.3, max_retries=1, backoff_s=0.01, transport=transport)
        assert retried.chat([conv("ok")], SAMPLING)[0].text == "echo: ok"  # the retry is in time
    finally:
        srv.close()


def test_connection_refused_is_retried() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = OpenAIEngine(f"http://127.0.0.1:{port}", "m", max_retries=2, backoff_s=0.01)
    with pytest.raises(OpenAIEngineError, match="after 3 attempts; last: Connect"):
        engine.chat([conv("hi")], SAMPLING)
    assert engine.version() == "openai-compatible"


def test_api_key_from_env_and_seed(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRISTMILL_TEST_KEY", "sk-test-123")
    engine = OpenAIEngine(server.root, "m", api_key_env="GRISTMILL_TEST_KEY", seed=5)
    engine.chat([conv("hi")], SAMPLING)
    headers = {k.lower(): v for k, v in server.requests[0]["headers"].items()}
    assert headers["authorization"] == "Bearer sk-test-123" and server.requests[0]["body"]["seed"] == 5

    monkeypatch.delenv("GRISTMILL_TEST_KEY")
    with pytest.raises(OpenAIEngineError, match="environment variable 'GRISTMILL_TEST_KEY' is not set"):
        OpenAIEngine(server.root, "m", api_key_env="GRISTMILL_TEST_KEY")


def test_params_require_base_url_for_openai() -> None:
    from pydantic import ValidationError

    from gristmill.synth.methods.self_instruct import SelfInstructParams

    with pytest.raises(ValidationError, match="base_url: required with engine: openai"):
        SelfInstructParams(seeds="s.jsonl", engine="openai")
    SelfInstructParams(seeds="s.jsonl", engine="openai", base_url="http://x/v1", api_key_env="KEY")


def test_step_builds_openai_engine_with_seed_only_when_set(tmp_path: Path) -> None:
    from gristmill.steps import Context, _synth_engine
    from gristmill.synth.methods.self_instruct import SelfInstructParams

    ctx = Context(cache_dir=tmp_path)
    base = {"seeds": "s.jsonl", "engine": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m",
            "concurrency": 2, "request_timeout_s": 5, "max_retries": 1}
    engine = _synth_engine(SelfInstructParams.model_validate(base), ctx)
    assert isinstance(engine, OpenAIEngine) and engine.seed is None
    assert (engine.api, engine.model, engine.concurrency, engine.timeout, engine.max_retries) == (
        "http://127.0.0.1:9/v1", "m", 2, 5, 1)
    assert ctx.models["synthesize"] == "m @ http://127.0.0.1:9/v1"
    assert _synth_engine(SelfInstructParams.model_validate(base | {"seed": 0}), ctx).seed == 0


# --- real vLLM OpenAI-compatible server -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    from gristmill.models import resolve

    model = resolve("smollm2-135m-instruct")
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1")
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1",
           "--port", str(port), "--gpu-memory-utilization", "0.4", "--max-model-len", "2048"]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/v1/models", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server not ready after 240 s:\n{log.read_text()[-3000:]}")
            time.sleep(2)
        yield url + "/v1", model
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.mark.slow
def test_real_vllm_server_structured_output_and_self_instruct(vllm_server: tuple[str, str], tmp_path: Path) -> None:
    from gristmill.synth.methods import run_method
    from gristmill.synth.methods.self_instruct import SelfInstructParams
    from tests.conftest import RECIPES, make_frame

    url, model = vllm_server
    # A fixed per-request seed: unseeded sampling let a 135M model run out of tokens on 3 of 4 JSON answers once
    engine = OpenAIEngine(url, model, concurrency=4, timeout=300, seed=0)
    assert engine.version() == model
    prompt = ("Write one new task for an assistant. Answer as JSON with the keys \"instruction\", \"input\" and "
              "\"output\".")
    convs = [conv(prompt + f" Topic {i}: {t}.") for i, t in enumerate(["cooking", "maths", "travel", "music"])]
    too_long = conv("Summarize: " + "lorem ipsum dolor sit amet " * 600)  # > 2,048 tokens (--max-model-len)
    out = engine.chat([*convs, too_long], SamplingConfig(0.7, 0.95, 400, TASK_SCHEMA))
    assert out[4].finish_reason == PROMPT_TOO_LONG  # answered, not raised: the other requests stand
    out = out[:4]
    for gen in out:
        assert gen.prompt_tokens > 0 and 0 < gen.output_tokens <= 400 and gen.finish_reason in ("stop", "length")
        if gen.finish_reason == "stop":
            record = json.loads(gen.text)
            assert set(record) == {"instruction", "input", "output"}
            assert all(isinstance(v, str) for v in record.values())
    finished = [(g.finish_reason, g.output_tokens) for g in out]
    assert sum(reason == "stop" for reason, _ in finished) >= 2, finished  # seeded: 3 of 4 here

    params = SelfInstructParams(seeds=str(RECIPES / "data" / "seeds.jsonl"), n=2, max_tokens=200, max_rounds=2,
                                engine="openai", base_url=url, model=model)
    kept, dropped, stats = run_method(make_frame(["a real row"]), params, engine=engine, model_name=model)
    assert stats["requested"] == stats["generated"] >= 3 and stats["output_tokens"] > 0
    assert stats["rows_in"] + stats["rows_added"] == kept.height + dropped.height
    synth = kept.filter(kept["source"] == "synth:self_instruct")
    assert synth.height >= 1
    for prov in synth["meta"].struct.field("synth").to_list():
        assert prov["engine"] == "openai" and prov["engine_version"] == model and prov["seed_ids"]
    for msgs in synth["messages"].to_list():
        assert msgs[0]["role"] == "user" and msgs[0]["content"] and msgs[1]["role"] == "assistant"
    engine.close()
