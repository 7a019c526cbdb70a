"""A real local HTTP server speaking the OpenAI chat-completions API, for the HTTP engine, reliability and fault
tests.

Answers are a pure function of the request's last user message (by default a Self-Instruct-shaped JSON task whose
words are picked by its hash; ``answer`` overrides it), so a run's output does not depend on batching, retries or
resumes. ``script`` makes it
misbehave: a list of (status, delay_s) consumed one per POST (429, 500, a slow answer, ...); ``drop`` closes the
connection without answering. The server runs in a thread of the test process; the run under test is a
subprocess that reaches it over TCP."""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_WORDS = ("river", "mountain", "lantern", "copper", "violin", "harbor", "meadow", "glacier", "canyon", "orchard",
          "falcon", "velvet", "marble", "thunder", "compass", "saffron", "quartz", "willow", "ember", "tundra",
          "lagoon", "cobalt", "juniper", "prairie", "beacon", "atlas", "cedar", "dune", "fjord", "grove", "haven",
          "island", "jasmine", "kelp", "lotus", "mosaic", "nectar", "opal", "pebble", "quill", "reef", "sierra",
          "tide", "umber", "vale", "wharf", "yarrow", "zenith")


def answer_for(prompt: str) -> str:
    digest = hashlib.sha256(prompt.encode()).digest()
    words = [_WORDS[b % len(_WORDS)] for b in digest[:12]]
    task = {"instruction": f"Describe how the {words[0]} and the {words[1]} relate to {' '.join(words[2:6])}",
            "input": "",
            "output": f"The {words[6]} connects to the {words[7]} through {' and '.join(words[8:12])}."}
    return json.dumps(task)


class FakeOpenAI:
    """``url``: the API base (``.../v1``); ``root``: the server itself. ``requests`` records every POST's path,
    headers and JSON body; a non-200 status answers ``error`` formatted with the status."""

    def __init__(self, script: list[tuple[int, float]] | None = None, *, answer: Callable[[str], str] = answer_for,
                 model: str = "fake-model", error: str = "scripted {status}") -> None:
        self.script = list(script or [])
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._reply(200, {"object": "list", "data": [{"id": model}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.lock:
                    owner.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    status, delay = owner.script.pop(0) if owner.script else (200, 0.0)
                time.sleep(delay)
                if status == 0:  # drop the connection
                    self.close_connection = True
                    return
                if status != 200:
                    self._reply(status, {"error": {"message": error.format(status=status)}})
                    return
                text = answer(body["messages"][-1]["content"])
                self._reply(200, {"model": model, "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 20}})

            def _reply(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.root = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.url = f"{self.root}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
