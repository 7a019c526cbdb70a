"""Self-Instruct: new instruction/input/output tasks from seed tasks, with the paper's novelty filter.

Each round builds one prompt per missing row from ``examples_per_prompt`` tasks sampled from the seeds and the
tasks accepted so far, sends all prompts as one batch with a JSON schema, parses and validates each answer, and
accepts a task only if its instruction's ROUGE-L against every instruction in the pool (seeds, real rows, accepted
tasks) is below ``max_rouge_l``. Rounds repeat until ``n`` rows are accepted or ``max_rounds`` is reached. Every
candidate ends up either appended (with provenance in ``meta.synth``) or dropped with a reason.
"""

from __future__ import annotations

import random
from typing import Any, Literal

import polars as pl
from pydantic import Field

from gristmill.synth.methods.base import (
    Engine,
    Ledger,
    NewRowParams,
    Screen,
    messages_row,
    sampling_config,
    template_hash,
)
from gristmill.synth.parse import TASK_SCHEMA, Rejected, parse_task
from gristmill.synth.rouge import max_rouge_l, tokens
from gristmill.synth.seeds import SeedTask

VERSION = "2"  # 2: post-filter

SYSTEM = "You write diverse, self-contained tasks for training a helpful assistant. Answer only with JSON."
TEMPLATE = (
    "Here are some example tasks.\n\n{examples}\n\n"
    "Write one new task that is different from all of the examples in topic and wording. Give the instruction, "
    "an optional input (empty string if none), and a correct, helpful output. Answer as JSON with the keys "
    '"instruction", "input" and "output".'
)


class SelfInstructParams(NewRowParams):
    method: Literal["self_instruct"] = "self_instruct"
    """Generate new tasks from seed tasks (Self-Instruct)."""
    seeds: str = Field(json_schema_extra={"path": True})
    """Seed tasks: jsonl with instruction + instances (Self-Instruct shape) or instruction/input/output."""
    examples_per_prompt: int = Field(3, ge=1, le=8)
    """Example tasks shown in each prompt."""
    max_rouge_l: float = Field(0.7, gt=0, le=1)
    """Novelty filter: reject a task whose instruction has ROUGE-L >= this with any pool instruction."""


def _format(task: SeedTask | dict[str, str], i: int) -> str:
    get = (lambda k: getattr(task, k)) if isinstance(task, SeedTask) else task.get
    lines = [f"Task {i}", f"Instruction: {get('instruction')}"]
    if get("input"):
        lines.append(f"Input: {get('input')}")
    lines.append(f"Output: {get('output')}")
    return "\n".join(lines)


def prompt_for(examples: list[SeedTask | dict[str, str]]) -> list[dict[str, str]]:
    """The chat prompt that shows ``examples`` (numbered from 1) and asks for one new task."""
    shown = "\n\n".join(_format(task, k + 1) for k, task in enumerate(examples))
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TEMPLATE.format(examples=shown)}]


def self_instruct(
    frame: pl.DataFrame,
    params: SelfInstructParams,
    *,
    engine: Engine,
    seed_tasks: list[SeedTask],
    model_name: str,
    screen: Screen | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    rng = random.Random(params.seed)
    sampling = sampling_config(params, params.max_tokens, TASK_SCHEMA)
    ledger = Ledger("self_instruct", model_name, engine, sampling, params.seed, template_hash(SYSTEM, TEMPLATE),
                    screen=screen)
    pool_tokens = [tokens(t.instruction) for t in seed_tasks]
    if "messages" in frame.columns:
        for msgs in frame["messages"].to_list():
            if msgs:
                pool_tokens.append(tokens(msgs[0]["content"]))
    accepted: list[dict[str, str]] = []
    for round_no in range(params.max_rounds):
        missing = params.n - len(accepted)
        if missing <= 0:
            break
        batch = max(1, round(missing * params.oversample))
        examples_pool: list[SeedTask | dict[str, str]] = [*seed_tasks, *accepted]
        prompts, shown = [], []
        for _ in range(batch):
            picks = rng.sample(range(len(examples_pool)), min(params.examples_per_prompt, len(examples_pool)))
            prompts.append(prompt_for([examples_pool[p] for p in picks]))
            shown.append([e.id if isinstance(e, SeedTask) else e["id"] for e in (examples_pool[p] for p in picks)])
        for idx, (gen, seed_ids) in enumerate(zip(ledger.generate(prompts), shown, strict=True)):
            cand_id = ledger.candidate_id(round_no, idx, gen.text)
            prov = ledger.provenance(seed_ids=seed_ids, round=round_no)
            try:
                task = parse_task(gen.text, gen.finish_reason)
                ledger.counts["parsed"] += 1
                if len(accepted) >= params.n:
                    raise Rejected("over_quota", "n rows already accepted")
                score = max_rouge_l(task["instruction"], pool_tokens)
                if score >= params.max_rouge_l:
                    raise Rejected("not_novel", f"ROUGE-L {score:.2f}")
            except Rejected as rej:
                ledger.reject(cand_id, gen.text, rej.reason, prov)
                continue
            pool_tokens.append(tokens(task["instruction"]))
            accepted.append(task | {"id": cand_id})
            row = messages_row(task["instruction"], task["input"], task["output"])
            ledger.accept(cand_id, row, prov | {"rouge_l_max": score})
        removed = ledger.settle(frame)
        accepted = [task for task in accepted if task["id"] not in removed]
    return ledger.result(frame)


def run(
    frame: pl.DataFrame, params: SelfInstructParams, *, engine: Engine, model_name: str, screen: Screen | None = None
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    from gristmill.synth.seeds import load_seed_tasks

    return self_instruct(frame, params, engine=engine, seed_tasks=load_seed_tasks(params.seeds), model_name=model_name,
                         screen=screen)
