"""Self-Instruct: new instruction/input/output tasks from seed tasks, with the paper's novelty filter.

Each round builds one prompt per missing row from ``examples_per_prompt`` tasks sampled from the seeds and the
tasks accepted so far, sends all prompts as one batch with a JSON schema, parses and validates each answer, and
accepts a task only if its instruction's ROUGE-L against every instruction in the pool (seeds, real rows, accepted
tasks) is below ``max_rouge_l``. Rounds repeat until ``n`` rows are accepted or ``max_rounds`` is reached. Every
candidate ends up either appended (with provenance in ``meta.synth``) or dropped with a reason.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from typing import Any, Literal, Protocol

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from synth.engine import Generation, SamplingConfig
from synth.parse import TASK_SCHEMA, Rejected, parse_task
from synth.rouge import max_rouge_l, tokens
from synth.seeds import SeedTask

VERSION = "1"

SYSTEM = "You write diverse, self-contained tasks for training a helpful assistant. Answer only with JSON."
TEMPLATE = (
    "Here are some example tasks.\n\n{examples}\n\n"
    "Write one new task that is different from all of the examples in topic and wording. Give the instruction, "
    "an optional input (empty string if none), and a correct, helpful output. Answer as JSON with the keys "
    '"instruction", "input" and "output".'
)


class Engine(Protocol):
    model_path: str
    name: str

    def version(self) -> str: ...

    def chat(self, conversations: list[list[dict[str, str]]], sampling: SamplingConfig) -> list[Generation]: ...


class SynthesizeParams(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    method: Literal["self_instruct"] = "self_instruct"
    """Generation method (this release: self_instruct)."""
    seeds: str = Field(json_schema_extra={"path": True})
    """Seed tasks: jsonl with instruction + instances (Self-Instruct shape) or instruction/input/output."""
    n: int = Field(20, ge=1)
    """Number of synthetic rows to add."""
    model: str = "smollm2-135m-instruct"
    """Generator model: a registered short name or a local HF model directory."""
    examples_per_prompt: int = Field(3, ge=1, le=8)
    """Example tasks shown in each prompt."""
    max_rouge_l: float = Field(0.7, gt=0, le=1)
    """Novelty filter: reject a task whose instruction has ROUGE-L >= this with any pool instruction."""
    max_rounds: int = Field(3, ge=1)
    """Generation rounds before giving up on reaching ``n``."""
    oversample: float = Field(1.5, ge=1)
    """Prompts per missing row in a round (filters reject some)."""
    temperature: float = Field(0.8, ge=0, le=2)
    """Sampling temperature."""
    top_p: float = Field(0.95, gt=0, le=1)
    """Nucleus sampling mass."""
    max_tokens: int = Field(256, ge=16)
    """Output tokens per request."""
    seed: int = 0
    """Seed for example sampling and the engine."""


def template_hash() -> str:
    return hashlib.sha256((SYSTEM + TEMPLATE).encode()).hexdigest()[:16]


def _format(task: SeedTask | dict[str, str], i: int) -> str:
    get = (lambda k: getattr(task, k)) if isinstance(task, SeedTask) else task.get
    lines = [f"Task {i}", f"Instruction: {get('instruction')}"]
    if get("input"):
        lines.append(f"Input: {get('input')}")
    lines.append(f"Output: {get('output')}")
    return "\n".join(lines)


def _row(task: dict[str, str]) -> dict[str, Any]:
    user = task["instruction"] + (f"\n\n{task['input']}" if task["input"] else "")
    return {
        "text": "\n\n".join(p for p in (task["instruction"], task["input"], task["output"]) if p),
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": task["output"]}],
    }


def self_instruct(
    frame: pl.DataFrame,
    params: SynthesizeParams,
    *,
    engine: Engine,
    seed_tasks: list[SeedTask],
    model_name: str,
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    rng = random.Random(params.seed)
    sampling = SamplingConfig(params.temperature, params.top_p, params.max_tokens, TASK_SCHEMA)
    pool_tokens = [tokens(t.instruction) for t in seed_tasks]
    if "messages" in frame.columns:
        for msgs in frame["messages"].to_list():
            if msgs:
                pool_tokens.append(tokens(msgs[0]["content"]))
    accepted: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    counts = {"requested": 0, "generated": 0, "parsed": 0, "prompt_tokens": 0, "output_tokens": 0}
    provenance_base = {
        "method": "self_instruct",
        "model": model_name,
        "template_hash": template_hash(),
        "sampling": json.dumps(sampling.as_dict() | {"seed": params.seed}, sort_keys=True),
        "engine": engine.name,
        "engine_version": engine.version(),
    }
    started = time.perf_counter()
    for round_no in range(params.max_rounds):
        missing = params.n - len(accepted)
        if missing <= 0:
            break
        batch = max(1, round(missing * params.oversample))
        examples_pool: list[SeedTask | dict[str, str]] = [*seed_tasks, *(a["task"] for a in accepted)]
        prompts, shown = [], []
        for _ in range(batch):
            picks = rng.sample(range(len(examples_pool)), min(params.examples_per_prompt, len(examples_pool)))
            examples = "\n\n".join(_format(examples_pool[p], k + 1) for k, p in enumerate(picks))
            prompts.append(
                [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TEMPLATE.format(examples=examples)}]
            )
            shown.append(
                [examples_pool[p].id if isinstance(examples_pool[p], SeedTask) else examples_pool[p]["id"] for p in picks]
            )
        outputs = engine.chat(prompts, sampling)
        counts["requested"] += batch
        for idx, (gen, seed_ids) in enumerate(zip(outputs, shown, strict=True)):
            counts["generated"] += 1
            counts["prompt_tokens"] += gen.prompt_tokens
            counts["output_tokens"] += gen.output_tokens
            cand_id = "synth-" + hashlib.sha256(
                f"{provenance_base['template_hash']}|{model_name}|{params.seed}|{round_no}|{idx}|{gen.text}".encode()
            ).hexdigest()[:16]
            synth_meta = provenance_base | {"seed_ids": seed_ids, "round": round_no}
            try:
                task = parse_task(gen.text, gen.finish_reason)
                counts["parsed"] += 1
                if len(accepted) >= params.n:
                    raise Rejected("over_quota", "n rows already accepted")
                score = max_rouge_l(task["instruction"], pool_tokens)
                if score >= params.max_rouge_l:
                    raise Rejected("not_novel", f"ROUGE-L {score:.2f}")
            except Rejected as rej:
                rejected.append({"id": cand_id, "text": gen.text, "reason": rej.reason, "synth": synth_meta})
                continue
            pool_tokens.append(tokens(task["instruction"]))
            accepted.append({"id": cand_id, "task": task | {"id": cand_id}, "synth": synth_meta | {"rouge_l_max": score}})
    seconds = time.perf_counter() - started

    source = "synth:self_instruct"
    new_rows = pl.DataFrame(
        [{"id": a["id"], **_row(a["task"]), "source": source, "meta": {"synth": a["synth"]}} for a in accepted]
    ) if accepted else None
    kept = pl.concat([frame, new_rows], how="diagonal_relaxed") if new_rows is not None else frame
    dropped = pl.DataFrame(
        [{"id": r["id"], "text": r["text"], "source": source, "meta": {"synth": r["synth"]}, "reason": r["reason"]}
         for r in rejected]
    ) if rejected else kept.clear().with_columns(pl.lit(None, dtype=pl.String).alias("reason"))
    by_reason: dict[str, int] = {}
    for r in rejected:
        by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
    stats = {
        "rows_in": frame.height,
        "rows_added": counts["generated"],
        "kept": kept.height,
        "dropped": len(rejected),
        "dropped_by_reason": by_reason,
        **counts,
        "accepted": len(accepted),
        "seconds": round(seconds, 3),
        "output_tokens_per_s": round(counts["output_tokens"] / seconds, 2) if seconds else None,
        "output_tokens_per_kept_row": round(counts["output_tokens"] / len(accepted), 1) if accepted else None,
        "seconds_per_kept_row": round(seconds / len(accepted), 3) if accepted else None,
    }
    return kept, dropped, stats
