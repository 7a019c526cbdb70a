"""Run the gristmill CLI with an optional planted SIGKILL: ``GRISTMILL_KILL=module:attr:n`` makes the n-th call of
``module.attr`` (``attr`` may be ``Class.method``) kill this process with SIGKILL before the call runs, so the
reliability tests can stop a run at an exact point (a step boundary, inside a step, inside a checkpoint write,
inside export) without timing. Nothing runs after the kill: no ``finally``, no atexit, like ``kill -9``."""

from __future__ import annotations

import importlib
import os
import signal
import sys
from typing import Any


def _plant(spec: str) -> None:
    module, attr, n = spec.split(":")
    owner: Any = importlib.import_module(module)
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    calls = [0]

    def killer(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == int(n):
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(owner, name, killer)


if __name__ == "__main__":
    if os.environ.get("GRISTMILL_KILL"):
        _plant(os.environ["GRISTMILL_KILL"])
    from gristmill.cli import main

    sys.exit(main(sys.argv[1:]))
