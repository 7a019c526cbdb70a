"""vLLM engines in worker processes: several on one GPU for models too small to keep it busy, one on CPU.

A 135M-parameter model needs ~2 ms of GPU time per decode step of 1,000 sequences, but vLLM's per-step CPU work
(scheduling, sampling bookkeeping, detokenization) takes tens of milliseconds, so a single engine leaves the GPU
mostly idle. ``ReplicatedEngine`` starts ``replicas`` worker processes, each with its own ``VLLMEngine`` holding
``1/replicas`` of the GPU memory budget, splits every batch into contiguous shards, and returns the results in the
original order. Replica ``i`` is seeded ``seed + i``, so outputs are reproducible for a fixed replica count.

On CPU a single worker runs vLLM in one process (``VLLMEngine.single_process``): the worker is a fresh spawned
interpreter that imports only the engine, and the run's process waits on a pipe without using a core. Closing
the engine ends the process, so all of its memory is back before training starts.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from gristmill.common.errors import UserError
from gristmill.synth.engine import Generation, SamplingConfig, VLLMEngine


class WorkerDied(UserError, RuntimeError):
    """A vLLM worker process ended while the run waited on it (killed, out of memory, crashed). Not bad input, but
    nothing in gristmill to debug either: what it answered before is in the request cache and a rerun resumes."""


def _died(proc: Any, doing: str) -> WorkerDied:
    proc.join(timeout=10)  # its exit code says how it ended
    code = proc.exitcode
    how = (f"killed by signal {-code}" + (" (SIGKILL: e.g. the out-of-memory killer)" if code == -9 else "")
           if code is not None and code < 0 else f"exit code {code}")
    return WorkerDied(f"synthesize: the vLLM worker process (pid {proc.pid}) died while {doing} ({how}); answers "
                      "received before are in the request cache: fix the cause (memory?) and rerun the same "
                      "command to resume")


def _exit_with_parent(parent: int) -> None:
    """End this worker when the run's process is gone (SIGKILLed: no ``close()``): otherwise it would finish its
    batch, or its model load, for nobody, holding a core and the model's memory. Orphans are re-parented, so a
    changed parent pid means the run died."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="gristmill-parent-watch").start()


def _worker(conn: Any, kwargs: dict[str, Any], parent: int) -> None:
    _exit_with_parent(parent)
    engine = VLLMEngine(**kwargs, single_process=True)
    try:
        try:
            engine._start()
        except Exception as err:  # noqa: BLE001 - reported to the parent, which raises
            conn.send(("error", repr(err)))
            return
        conn.send(("ready", None))
        while True:
            msg = conn.recv()
            if msg is None:
                break
            conversations, sampling = msg
            try:
                outs = engine.chat(conversations, SamplingConfig(**sampling))
                conn.send(("ok", [asdict(o) for o in outs]))
            except Exception as err:  # noqa: BLE001 - reported to the parent, which raises
                conn.send(("error", repr(err)))
    finally:
        engine.close()


@dataclass
class ReplicatedEngine:
    model_path: str
    replicas: int = 2
    seed: int = 0
    max_model_len: int = 2048
    gpu_memory_utilization: float | None = None
    """Total across replicas (default: 0.9 of a GPU; one CPU replica uses ``VLLMEngine``'s default)."""
    extra: dict[str, Any] = field(default_factory=dict)
    trust_remote_code: bool = False
    """Passed to each worker's ``VLLMEngine`` (the recipe's ``trust_remote_code``)."""
    _workers: list[tuple[Any, Any]] = field(default_factory=list)

    name = "vllm"

    def version(self) -> str:
        import vllm

        return f"{vllm.__version__} x{self.replicas}" if self.replicas > 1 else str(vllm.__version__)

    def _start(self) -> None:
        if self._workers:
            return
        ctx = mp.get_context("spawn")
        util = self.gpu_memory_utilization
        share = None if util is None and self.replicas == 1 else (util or 0.9) / self.replicas
        for i in range(self.replicas):
            parent, child = ctx.Pipe()
            kwargs = {"model_path": self.model_path, "seed": self.seed + i, "max_model_len": self.max_model_len,
                      "gpu_memory_utilization": share, "extra": self.extra,
                      "trust_remote_code": self.trust_remote_code}
            proc = ctx.Process(target=_worker, args=(child, kwargs, os.getpid()))  # not daemonic: vLLM spawns children
            proc.start()
            # Only the worker may hold the child end: then its death closes the pipe and recv raises EOFError
            # instead of waiting forever.
            child.close()
            # One at a time: vLLM sizes its KV cache by profiling GPU memory, which concurrent starts would skew.
            try:
                status, payload = parent.recv()
            except (EOFError, ConnectionError) as err:
                raise _died(proc, "loading the model") from err
            if status != "ready":
                raise RuntimeError(f"vLLM replica {i} failed to start: {payload}")
            self._workers.append((proc, parent))

    def chat(self, conversations: list[list[dict[str, str]]], sampling: SamplingConfig) -> list[Generation]:
        if not conversations:
            return []
        self._start()
        size = -(-len(conversations) // self.replicas)
        shards = [conversations[i : i + size] for i in range(0, len(conversations), size)]
        for (proc, conn), shard in zip(self._workers, shards, strict=False):
            try:
                conn.send((shard, asdict(sampling)))
            except (BrokenPipeError, ConnectionError) as err:
                raise self._lost(proc, "receiving a batch") from err
        out: list[Generation] = []
        for (proc, conn), _shard in zip(self._workers, shards, strict=False):
            try:
                status, payload = conn.recv()
            except (EOFError, ConnectionError) as err:
                raise self._lost(proc, f"generating a batch of {len(conversations)} prompts") from err
            if status != "ok":
                raise RuntimeError(f"vLLM replica failed: {payload}")
            out.extend(Generation(**g) for g in payload)
        return out

    def _lost(self, proc: Any, doing: str) -> WorkerDied:
        """The error for a dead worker; the other workers are stopped (their batch is lost with the run)."""
        err = _died(proc, doing)
        self.close()
        return err

    def close(self) -> None:
        for proc, conn in self._workers:
            with contextlib.suppress(BrokenPipeError, ConnectionError):  # already dead
                conn.send(None)
            proc.join(timeout=60)
            if proc.is_alive():  # stuck: a worker must never outlive the run
                proc.kill()
                proc.join(timeout=10)
        self._workers = []

    def __enter__(self) -> ReplicatedEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def vllm_engine(model_path: str, *, replicas: int = 1, seed: int = 0, gpu_memory_utilization: float | None = None,
                extra: dict[str, Any] | None = None, trust_remote_code: bool = False
                ) -> VLLMEngine | ReplicatedEngine:
    """The engine a synthesize step runs: worker processes on CPU (always) and for ``replicas > 1``; otherwise
    ``VLLMEngine`` in this process (on a GPU its engine core is a separate process anyway)."""
    import torch

    if replicas > 1 and not torch.cuda.is_available():
        raise ValueError(f"synthesize.replicas: {replicas} engines share a GPU and none is available; on CPU use "
                         "replicas: 1 (one engine already computes on every core)")
    if replicas > 1 or not torch.cuda.is_available():
        return ReplicatedEngine(model_path, replicas=replicas, seed=seed,
                                gpu_memory_utilization=gpu_memory_utilization, extra=dict(extra or {}),
                                trust_remote_code=trust_remote_code)
    return VLLMEngine(model_path, seed=seed, gpu_memory_utilization=gpu_memory_utilization, extra=dict(extra or {}),
                      trust_remote_code=trust_remote_code)
